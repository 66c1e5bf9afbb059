"""One build at a time per output folder.

Locally, a build holds an exclusive lock (flock) on OUT/.imagenet-shards.lock while it runs and
removes the file when it ends. The kernel releases the lock of a process that dies, so a file
left behind by a killed build is taken over by the next build.

On an object store there is no such call: the lock is an object created only if it does not
exist yet (a conditional write, `If-None-Match: *` on S3), holding a lease that the build renews
while it runs. A killed build stops renewing, so its lease runs out and the next build takes the
lock over. Lock objects are numbered, OUT/.imagenet-shards.lock-<n>, and the highest number is the
lock: taking over an expired lease n means creating n + 1, which only one build can do, however
many try at once. Clocks of the machines that build into one OUT must agree to well within a
lease (LEASE_SECONDS).

Either way, a second build into the same OUT exits 2 at once, naming the running one.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from typing import Optional

import fsspec

from pipeline.options import UsageError
from transforms.storage import is_local

__all__ = ["LOCK_NAME", "LEASE_SECONDS", "OutputLock", "LockLost"]

LOCK_NAME = ".imagenet-shards.lock"
# An object store's lock lasts this long unless renewed; the holder renews it every third of it.
LEASE_SECONDS = 300.0


class LockLost(RuntimeError):
    """The lease on an object store's lock ran out while the build held it (the build stalled
    longer than a lease), so another build may have taken it: nothing is published."""


def _holder() -> str:
    started = datetime.datetime.now().isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()}, since {started}"


class OutputLock:
    """A context manager: the lock on OUT, or UsageError when another build holds it.
    `lease_seconds`: the lease of an object store's lock (the tests shorten it)."""

    def __init__(self, out: str, lease_seconds: float = LEASE_SECONDS):
        self.out = out
        self._fd: Optional[int] = None
        self._path: Optional[str] = None
        self._lease: Optional[_Lease] = None
        self._lease_seconds = lease_seconds

    def check(self) -> None:
        """Raise LockLost when the lock is no longer this build's (an object store's lease ran
        out); called before publishing."""
        if self._lease is not None:
            self._lease.check()

    def __enter__(self) -> OutputLock:
        if not is_local(self.out):
            self._lease = _Lease(self.out, self._lease_seconds)
            self._lease.acquire()
            return self
        root = fsspec.core.url_to_fs(self.out)[1]
        if os.path.exists(root) and not os.path.isdir(root):
            return self  # not a folder: preparing the output says so
        self._path = os.path.join(root, LOCK_NAME)
        while True:
            try:
                os.makedirs(root, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # read-only, no permission, no space for a file
                raise UsageError(f"--out {self.out!r} cannot be written: {e.strerror}") from None
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
        os.write(fd, f"{_holder()}\n".encode())
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
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._fd is None or self._path is None:
            return
        try:
            os.unlink(self._path)  # first: nobody can lock the file being released
        except FileNotFoundError:
            pass
        os.close(self._fd)  # releases the lock
        self._fd = None


_GENERATION = re.compile(re.escape(LOCK_NAME) + r"-(\d+)$")


class _Lease:
    """The lock of an object store's OUT (see the module docstring)."""

    def __init__(self, out: str, lease_seconds: float):
        self.out = out
        self.fs, root = fsspec.core.url_to_fs(out)
        self.root = root.rstrip("/")
        self.lease_seconds = lease_seconds
        self.token = uuid.uuid4().hex  # tells this build's lock from another's
        self.generation = 0
        self.expires = 0.0
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    def _path(self, generation: int) -> str:
        return posixpath.join(self.root, f"{LOCK_NAME}-{generation:09d}")

    def _generations(self) -> list[int]:
        self.fs.invalidate_cache()
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = (_GENERATION.match(posixpath.basename(n.rstrip("/"))) for n in names)
        return sorted(int(m.group(1)) for m in found if m)

    def _read(self, generation: int) -> Optional[dict]:
        try:
            return json.loads(self.fs.cat_file(self._path(generation)))
        except (FileNotFoundError, ValueError):
            return None

    def _record(self) -> bytes:
        self.expires = time.time() + self.lease_seconds
        return json.dumps({"holder": self.holder, "token": self.token, "expires": self.expires}).encode()

    def acquire(self) -> None:
        self.holder = _holder()
        generations = self._generations()
        latest = generations[-1] if generations else 0
        if latest:
            current = self._read(latest)
            if current is not None and current.get("expires", 0) > time.time():
                holder = current.get("holder", "a build")
                raise UsageError(f"another build is writing to --out {self.out!r} ({holder}): wait for it to end, "
                                 "or choose another folder")
        try:  # only one build can create the next generation
            with self.fs.open(self._path(latest + 1), "xb") as f:
                f.write(self._record())
        except FileExistsError:
            raise UsageError(f"another build took the lock on --out {self.out!r} just now: wait for it to end, "
                             "or choose another folder") from None
        self.generation = latest + 1
        for old in generations:  # the expired leases of killed builds
            self.fs.rm(self._path(old))
        self._renewer = threading.Thread(target=self._renew, name="renew-lock", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.check()
                self.fs.pipe_file(self._path(self.generation), self._record())
            except (LockLost, OSError):
                return  # check() before publishing says so

    def check(self) -> None:
        current = self._read(self.generation)
        if (current is None or current.get("token") != self.token or time.time() > self.expires
                or self._generations()[-1:] != [self.generation]):
            raise LockLost(f"the lock on --out {self.out!r} is no longer this build's (its lease of "
                           f"{self.lease_seconds:.0f} s ran out): nothing was published")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        current = self._read(self.generation) if self.generation else None
        if current is not None and current.get("token") == self.token:  # never another build's lock
            try:
                self.fs.rm(self._path(self.generation))
            except FileNotFoundError:
                pass
