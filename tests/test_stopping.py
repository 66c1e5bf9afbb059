"""pipeline/stopping.py: a stopped build leaves no process behind, even one whose parent was killed first.

Beam's local runner starts each worker as `sh -c "python ..."`. The build's stop kills its
children; a shell killed just after it forked leaves its python to init, out of the build's reach
(seen 1 stop in 8 on Beam 2.67). The build then adopts such orphans (a child subreaper, Linux) and
kills them too. The check runs in a subprocess of its own, so that pytest itself adopts nothing.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a child subreaper is Linux's")

# A "build" that adopts orphans, starts a shell that forks a long sleep (the worker), kills the
# shell (the orphan is left), then stops its children as a stopped build does.
_CHILD = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    import psutil
    from pipeline import stopping

    if sys.argv[1] == "adopt":
        stopping._adopt_orphaned_descendants()
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    worker = psutil.Process(int(shell.stdout.readline()))
    shell.kill()
    shell.wait()
    for _ in range(100):  # the kernel re-parents the orphan once its shell is gone
        if worker.ppid() != shell.pid:
            break
        time.sleep(0.01)
    print("parent", "build" if worker.ppid() == os.getpid() else "other")
    stopping._kill_children()
    try:
        worker.wait(timeout=5)
        print("worker", "stopped")
    except psutil.TimeoutExpired:
        print("worker", "left")
        worker.kill()
""")


@pytest.mark.parametrize("adopt, expected", [("adopt", ["parent build", "worker stopped"]),
                                             ("no", ["parent other", "worker left"])])
def test_a_worker_orphaned_by_its_killed_shell_is_stopped_with_the_build(adopt, expected):
    """With the adoption the orphan is the build's child and is stopped; without it (the control), it
    would outlive the build: which shows that the check can fail."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, adopt], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == expected, proc.stdout + proc.stderr
