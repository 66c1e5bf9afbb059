"""The terminal shows the tool's own words; everything else goes to a log file.

Beam, its worker processes and the libraries they load write warnings, INFO lines and
tracebacks to the standard error stream (file descriptor 2), which the local runner's workers
inherit. While a Console is open, descriptor 2 is the log file, so all of that lands there;
the tool writes its own messages, the progress bar and the summary to a copy of the original
stream (`Console.terminal`). With `verbose`, nothing is redirected.

A failure is one line on the terminal: the innermost error's message (Beam wraps a worker's
exception in pages of traceback; root_cause finds the line that says what went wrong) and the
path of the log, which holds the whole traceback.
"""
from __future__ import annotations

import datetime
import os
import re
import sys
import tempfile
from typing import IO, Optional

__all__ = ["Console", "default_log_path", "root_cause"]

# "package.module.SomeError: message" lines of a traceback (Beam puts a worker's in its error text).
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Damaged)): (.+)$")
_WHILE_RUNNING = re.compile(r" \[while running '[^']*'\]")


def default_log_path() -> str:
    """A new log file's path in the temporary folder (TMPDIR): one per run."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(tempfile.gettempdir(), "imagenet-shards-logs", f"build-{stamp}-{os.getpid()}.log")


def root_cause(error: BaseException) -> str:
    """What went wrong, in one line: the last exception line of the error's text (a worker's,
    when Beam wrapped it), less Beam's "[while running ...]" note; else the error itself."""
    text = str(error)
    found = [m for m in map(_EXCEPTION_LINE.match, text.splitlines()) if m]
    if found:
        name, message = found[-1].groups()
        return f"{name}: {_WHILE_RUNNING.sub('', message)}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class Console:
    """A context manager: while open, descriptor 2 writes to `log_path`, and `terminal` to the
    terminal (or wherever standard error went before)."""

    def __init__(self, log_path: str, verbose: bool = False):
        self.log_path = log_path
        self.verbose = verbose
        self.terminal: IO[str] = sys.stderr
        self._saved_fd: Optional[int] = None

    def __enter__(self) -> Console:
        if self.verbose:
            return self
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self.terminal = os.fdopen(os.dup(self._saved_fd), "w", buffering=1)
        with open(self.log_path, "ab") as log:
            os.dup2(log.fileno(), 2)
        return self

    def say(self, message: str = "") -> None:
        print(message, file=self.terminal, flush=True)

    def __exit__(self, *exc) -> None:
        if self._saved_fd is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._saved_fd = None
        self.terminal.close()
        self.terminal = sys.stderr
