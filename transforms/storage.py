"""File access through fsspec: ranged reads of archives and atomic writes of outputs.

Archives are never downloaded or extracted: a member is one seek and one read. Outputs appear
under their final name only when complete (written to a temporary name, then renamed; on object
stores one PUT is already atomic). This module imports no other module of the project.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import tempfile
import uuid
from typing import IO, Callable, Iterator

import fsspec

__all__ = ["open_input", "is_local", "locate", "atomic_write", "remove_temporaries", "local_copy", "RangeFile",
           "ArchiveReader", "file_size", "fingerprint", "changed_since"]

# Remote reads: no read-ahead cache. Each member is one ranged GET of exactly its bytes;
# a large block cache would fetch megabytes to read a 512-byte tar header.
_REMOTE_OPEN = {"cache_type": "none", "block_size": 1 << 16}


def _is_local_fs(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


def _plain_path(url: str) -> bool:
    """A path with no protocol, which fsspec opens as a local file. Telling it apart costs
    nothing, where fsspec's own parse costs ~25 us: a folder layout opens a file per image."""
    return "://" not in url and "::" not in url


def is_local(url: str) -> bool:
    return _plain_path(url) or _is_local_fs(fsspec.core.url_to_fs(url)[0])


def locate(url: str) -> tuple:
    """(filesystem, path, url_of) of a local path or fsspec URL: url_of(path) turns a path the
    filesystem lists back into something open_input and fsspec open (a plain path locally,
    `protocol://path` elsewhere)."""
    fs, path = fsspec.core.url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    url_of: Callable[[str], str]
    if _is_local_fs(fs):
        def url_of(p: str) -> str:
            return p
    else:
        def url_of(p: str) -> str:
            return f"{protocol}://{p}"
    return fs, path, url_of


def open_input(url: str) -> IO[bytes]:
    """Open a file for random-access reading (local or any fsspec URL)."""
    if _plain_path(url):
        return open(url, "rb")
    fs, path = fsspec.core.url_to_fs(url)
    if _is_local_fs(fs):
        return open(path, "rb")
    return fs.open(path, "rb", **_REMOTE_OPEN)


def file_size(url: str) -> int:
    fs, path = fsspec.core.url_to_fs(url)
    return int(fs.size(path))


def fingerprint(url: str) -> str:
    """What identifies a file's version: its size and its modification time (nanoseconds), or an
    object store's ETag."""
    if is_local(url):
        stat = os.stat(fsspec.core.url_to_fs(url)[1])
        return f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}"
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return f"size={info.get('size')} version={version}"


def changed_since(fingerprints: dict) -> list:
    """The files of {url: fingerprint} that are no longer the version fingerprinted (or are gone)."""
    changed = []
    for url, expected in sorted(fingerprints.items()):
        try:
            now = fingerprint(url)
        except FileNotFoundError:
            now = "gone"
        if now != expected:
            changed.append(f"{url} ({expected} -> {now})")
    return changed


@contextlib.contextmanager
def atomic_write(url: str) -> Iterator[IO[bytes]]:
    """Yield a binary file; on success it becomes `url` in one step, on error nothing appears.

    Locally: a hidden temporary name in the same folder, then os.replace (atomic on POSIX).
    Remote: a local temporary file, uploaded once on success.
    """
    fs, path = fsspec.core.url_to_fs(url)
    if is_local(url):
        folder, name = os.path.split(path)
        os.makedirs(folder or ".", exist_ok=True)
        tmp = os.path.join(folder, f".{name}{_TEMPORARY}{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with tempfile.NamedTemporaryFile(suffix=".part") as f:
        yield f
        f.flush()
        fs.put_file(f.name, path)


_TEMPORARY = ".tmp-"  # atomic_write's temporary names: ".<name>.tmp-<12 hex digits>"
_TEMPORARY_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def remove_temporaries(url: str) -> int:
    """Remove what atomic_write left under a folder when its process was killed (local folders:
    remotely, the temporary file is local to the writer). Returns how many were removed."""
    if not is_local(url):
        return 0
    removed = 0
    for folder, _, names in os.walk(fsspec.core.url_to_fs(url)[1]):
        for name in names:
            if _TEMPORARY_NAME.match(name):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


def local_copy(url: str) -> str:
    """A local path of a file: its own for a local one, else a copy in this process's temporary
    folder (made once per process and URL)."""
    if is_local(url):
        return fsspec.core.url_to_fs(url)[1]
    if url not in _LOCAL_COPIES:
        fd, path = tempfile.mkstemp(suffix="-" + os.path.basename(url))
        os.close(fd)
        fs, remote = fsspec.core.url_to_fs(url)
        fs.get_file(remote, path)
        _LOCAL_COPIES[url] = path
    return _LOCAL_COPIES[url]


_LOCAL_COPIES: dict = {}


class RangeFile:
    """A read-only, seekable view of bytes [start, start + length) of another file.

    Lets tarfile walk a tar that is itself a member of an outer tar, in place.
    """

    def __init__(self, fileobj: IO[bytes], start: int, length: int):
        self._f = fileobj
        self._start = start
        self._length = length
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        remaining = self._length - self._pos
        n = remaining if n is None or n < 0 else min(n, remaining)
        if n <= 0:
            return b""
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class ArchiveReader:
    """Reads byte ranges from archives, keeping the most recently used handles open.

    A shard reads from a few big archives (tars) or from thousands of loose files
    (folder layouts): a bounded cache serves both without running out of descriptors.
    """

    def __init__(self, max_open: int = 32):
        self._files: collections.OrderedDict[str, IO[bytes]] = collections.OrderedDict()
        self._max_open = max_open

    def _handle(self, archive: str) -> IO[bytes]:
        f = self._files.get(archive)
        if f is not None:
            self._files.move_to_end(archive)
            return f
        if len(self._files) >= self._max_open:
            self._files.popitem(last=False)[1].close()
        f = self._files[archive] = open_input(archive)
        return f

    def read(self, archive: str, offset: int, size: int) -> bytes:
        f = self._handle(archive)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"{archive}: wanted {size} bytes at offset {offset}, got {len(data)} (archive truncated?)")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
