"""Run a command while every core is held busy: the suite as CI's loaded machine feels it.

    python tests/busy.py                       # python -m pytest -q, beside one spinner per core
    python tests/busy.py -- python -m pytest -q tests/unit -x
    python tests/busy.py --spinners 1 -- ...   # half a 2-core machine

The spinners are plain Python loops at the tests' own priority, started here and stopped here
by their PIDs (never by name: other processes on the machine are not ours). The exit code is
the command's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

SPIN = "while True: pass"


def start_spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL) for _ in range(count)]


def stop_spinners(spinners: list[subprocess.Popen]) -> None:
    for spinner in spinners:
        if spinner.poll() is None:
            os.kill(spinner.pid, signal.SIGKILL)
        spinner.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spinners", type=int, default=os.cpu_count() or 2,
                        help="busy processes to run beside the command (default: one per core)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after --: the command (default: python -m pytest -q)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    command = command or [sys.executable, "-m", "pytest", "-q"]

    spinners = start_spinners(max(args.spinners, 0))
    print(f"busy.py: {len(spinners)} spinners (PIDs {[s.pid for s in spinners]}) beside: {' '.join(command)}",
          flush=True)
    started = time.monotonic()
    try:
        # The command's own Ctrl-C reaches it through the terminal; ours only stops the spinners.
        code = subprocess.call(command)
    except KeyboardInterrupt:
        code = 130
    finally:
        stop_spinners(spinners)
    print(f"busy.py: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
