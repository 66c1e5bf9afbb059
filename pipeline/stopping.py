"""Stopping a build cleanly on SIGINT (Ctrl-C) and SIGTERM (a scheduler stopping the job).

The signal unwinds the build from the main thread as a KeyboardInterrupt, so that every
`finally` runs: the runner closes its workers and the build removes its scratch files. The
command line turns it into one line and exit status 130 (SIGINT) or 143 (SIGTERM).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable

import psutil

__all__ = ["Terminated", "UNWIND_SECONDS", "stop_cleanly_on_signals"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job): unwinds the build as Ctrl-C does."""


# How long a stopped build may take to unwind (Beam's runner joins its worker threads, the
# scratch files are removed) before the tool leaves without waiting for it.
UNWIND_SECONDS = 30.0


def stop_cleanly_on_signals(say: Callable[[str], None]) -> None:
    """Install the handlers of SIGINT and SIGTERM in this (the main) thread. `say` prints the
    tool's own words, for the rare build that does not unwind in time."""

    def stop(signum, frame) -> None:
        code = 143 if signum == signal.SIGTERM else 130
        _adopt_orphaned_descendants()
        atexit.register(_kill_children)  # runs after Python has joined the runner's worker threads
        threading.Thread(target=_stop_workers_until_exit, args=(code, say), name="stop-workers",
                         daemon=True).start()
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def _stop_workers_until_exit(code: int, say: Callable[[str], None]) -> None:
    """Stop the local runner's worker processes, and go on stopping any it starts later.

    The runner starts each worker process from a thread of its own and joins that thread as it
    unwinds, so a worker started just after the signal would keep the build waiting for ever. If
    the unwinding still takes longer than UNWIND_SECONDS, end the process without waiting."""
    deadline = time.monotonic() + UNWIND_SECONDS
    while time.monotonic() < deadline:
        _kill_children()
        time.sleep(0.1)
    say(f"imagenet-shards: stopped; the runner did not unwind within {UNWIND_SECONDS:.0f} s, "
        "so scratch files may remain in --out")
    os._exit(code)


def _adopt_orphaned_descendants() -> None:
    """Make this process the parent of any descendant whose own parent dies (Linux only).

    The runner starts each worker as `sh -c "python ..."`. A shell killed just after it forked
    its python leaves that python to init, out of reach of `_kill_children`, and it holds the
    build's standard output open for ever. Once this process is their "subreaper", such
    orphans become its children, and the next round of `_kill_children` stops them."""
    if sys.platform.startswith("linux"):
        PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _kill_children() -> None:
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
