"""One build at a time per output folder.

A build holds an exclusive lock (flock) on OUT/.imagenet-shards.lock while it runs and removes
the file when it ends. A second build into the same OUT exits 2 at once, naming the running one.
The kernel releases the lock of a process that dies, so a file left behind by a killed build is
taken over by the next build. Local folders only for now: on an object store the lock would be a
conditional write with a lease (not built yet).
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket
from typing import Optional

import fsspec

from pipeline.options import UsageError
from transforms.storage import is_local

__all__ = ["LOCK_NAME", "OutputLock"]

LOCK_NAME = ".imagenet-shards.lock"


class OutputLock:
    """A context manager: the lock on OUT, or UsageError when another build holds it."""

    def __init__(self, out: str):
        self.out = out
        self._fd: Optional[int] = None
        self._path: Optional[str] = None

    def __enter__(self) -> OutputLock:
        if not is_local(self.out):
            return self
        root = fsspec.core.url_to_fs(self.out)[1]
        if os.path.exists(root) and not os.path.isdir(root):
            return self  # not a folder: preparing the output says so
        os.makedirs(root, exist_ok=True)
        self._path = os.path.join(root, LOCK_NAME)
        while True:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 1000).decode("utf-8", "replace").strip() or "a build"
                os.close(fd)
                raise UsageError(f"another build is writing to --out {self.out!r} ({holder}): wait for it to end, "
                                 "or choose another folder") from None
            if self._is_current(fd):
                break
            os.close(fd)  # a build that just ended removed this file: lock the new one
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        self._fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        """Whether the locked file is still the one at the lock's path."""
        assert self._path is not None
        try:
            return os.fstat(fd).st_ino == os.stat(self._path).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        if self._fd is None or self._path is None:
            return
        try:
            os.unlink(self._path)  # first: nobody can lock the file being released
        except FileNotFoundError:
            pass
        os.close(self._fd)  # releases the lock
        self._fd = None
