"""A simulated node started by a process that dies goes with it (no orphans after a crash)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import wait_until

CHILD = ("from sollol_serve.sim.process import SimProcess\n"
         "s = SimProcess('orphan-check', []).start()\n"
         "print(s.proc.pid, flush=True)\n"
         "import os; os._exit(0)  # die without stopping the child\n")


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sim_node_dies_with_its_parent():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.strip())
    try:
        wait_until(lambda: not _alive(pid), 10, "the orphaned sim node gone", every_s=0.1)
    finally:
        if _alive(pid):
            os.kill(pid, 9)
