"""Run a command while every core is held busy: the suite as CI's loaded machine feels it.

    python tests/busy.py                       # python -m pytest -q, beside one spinner per core
    python tests/busy.py -- python -m pytest -q tests/unit -x
    python tests/busy.py --spinners 1 -- ...   # half a 2-core machine

The spinners are plain Python loops at the tests' own priority, started here and stopped here
by their PIDs (never by name: other processes on the machine are not ours); one whose parent
dies (this script killed) stops by itself. The exit code is the command's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

# Spins until its parent is gone: a killed busy.py leaves nothing burning.
SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"

STOP_WAIT_S = 60.0


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM (a time-out, a kill by PID) stops the command and the spinners as Ctrl-C does."""
    raise KeyboardInterrupt


def _command_setup() -> None:
    """In the command's process, before exec: a process group of its own (stopped as one), and
    Ctrl-C's default back: a script started in the background (`... &`) ignores SIGINT, and
    every process it starts would inherit that and never tear its Ray down."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(child: subprocess.Popen) -> int:
    """Ctrl-C to the command's whole group (`bash .ci/run` passes no signal on), a minute for
    it to end (pytest stops its Ray), then SIGKILL to whatever of it is left."""
    os.killpg(child.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        child.poll()  # reaped, the command is no longer counted in its group
        if not _group_alive(child.pid):
            break
        time.sleep(0.5)
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return child.wait()


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

    signal.signal(signal.SIGTERM, _interrupted)
    spinners = start_spinners(max(args.spinners, 0))
    print(f"busy.py: {len(spinners)} spinners (PIDs {[s.pid for s in spinners]}) beside: {' '.join(command)}",
          flush=True)
    started = time.monotonic()
    child = subprocess.Popen(command, preexec_fn=_command_setup)
    try:
        code = child.wait()
    except KeyboardInterrupt:  # pytest tears its Ray down on Ctrl-C; a minute, then all are killed
        code = stop_group(child)
    finally:
        stop_spinners(spinners)
    print(f"busy.py: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
