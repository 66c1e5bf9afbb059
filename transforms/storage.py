"""File access through fsspec: ranged reads of archives and atomic writes of outputs.

Archives are never downloaded or extracted: a member is one seek and one read locally, one
ranged request elsewhere (read ahead of the decoder, and tar headers read in blocks:
transforms/readahead.py). Outputs appear under their final name only when complete: locally
written to a temporary name, then renamed; on object stores streamed as an upload, which the
store shows only once it is complete (see atomic_write). This module imports no other module of
the project but readahead.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import re
import tempfile
import uuid
from typing import IO, Callable, Iterator, Optional, Sequence

import fsspec

from transforms.readahead import HEADER_BLOCK, SPARSE_BLOCK, BlockFile, ByteView, ReadAhead, fetch_range

__all__ = ["open_input", "is_local", "locate", "is_folder", "listed", "atomic_write", "remove_temporaries",
           "local_copy", "RangeFile", "ArchiveReader", "open_range", "file_size", "fingerprint", "changed_since",
           "STREAMED_UPLOADS", "UPLOAD_PART"]

# open_input's remote files are read front to back (a devkit, an annotation archive, an MD5 sum):
# each request fetches what was asked and 4 MiB more, so that a stream that reads 10 KB at a time
# is not a request per read. Members and tar headers are read by ArchiveReader and open_range.
_REMOTE_OPEN = {"cache_type": "readahead", "block_size": 4 << 20}

# Stores whose uploads appear only once complete (an S3 multipart upload before its completion,
# a GCS resumable upload before its last chunk, an Azure blob before its block list is committed):
# atomic_write streams to them directly. Others get a local temporary file, uploaded once complete.
STREAMED_UPLOADS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
UPLOAD_PART = 16 << 20  # bytes buffered per streamed upload: one part of a multipart upload


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
    url_of: Callable[[str], str]
    if _is_local_fs(fs):
        def url_of(p: str) -> str:
            return p
    else:  # an http(s) filesystem lists whole URLs already: they are kept as they are
        url_of = fs.unstrip_protocol
    return fs, path, url_of


def is_folder(fs, path: str) -> bool:
    """fs.isdir(path), without reading a file to find out: on http(s), isdir reads the URL as an
    index page of links, so a URL is taken for a folder only when a HEAD says it serves HTML."""
    if _protocols(fs) & {"http", "https"}:
        try:
            if fs.info(path).get("mimetype") not in ("text/html", None):
                return False
        except FileNotFoundError:
            return False
    return bool(fs.isdir(path))


def listed(fs, infos: list) -> list:
    """A listing's entries (fs.ls or fs.find's values, with detail), each with its size and version
    asked for where the listing leaves them out: an http(s) index page gives only the names of its
    links, so each file takes a HEAD, 32 at a time."""
    missing = [i for i, info in enumerate(infos) if info.get("type") == "file" and info.get("size") is None]
    if not missing:
        return list(infos)
    out = list(infos)
    with concurrent.futures.ThreadPoolExecutor(min(32, len(missing))) as pool:
        for i, info in zip(missing, pool.map(lambda i: fs.info(infos[i]["name"]), missing)):
            out[i] = {**infos[i], **info, "type": "file"}
    return out


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
    object store's ETag (an http(s) server's ETag or Last-Modified)."""
    if is_local(url):
        stat = os.stat(fsspec.core.url_to_fs(url)[1])
        return f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}"
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    version = (info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("Last-Modified")
               or info.get("mtime") or "")
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
    On the stores of STREAMED_UPLOADS: the file is fsspec's upload, streamed while it is
    written (s3fs sends a part of a multipart upload each UPLOAD_PART bytes, so at most that is
    buffered, and nothing is written to local disk). S3 shows an object only when its multipart
    upload completes (or its one PUT, for a file smaller than a part), which happens on success;
    on error the upload is aborted and nothing appears. GCS (a resumable upload, finalised by
    its last chunk) and Azure (blocks, committed by the block list on close) behave alike.
    Other stores: a local temporary file, uploaded once on success (their readers could see a
    partial object while it is written, so it is not written in place).
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
    if _protocols(fs) & STREAMED_UPLOADS:
        upload = fs.open(path, "wb", block_size=UPLOAD_PART)
        try:
            yield upload
        except BaseException:
            # s3fs: the multipart upload is aborted, and the store shows nothing (one that could not
            # be aborted never completes either: the error that stopped the write is the one raised)
            with contextlib.suppress(Exception):
                upload.discard()
            upload.closed = True  # so that neither close() nor the garbage collector completes it
            raise
        upload.close()
        return
    with tempfile.NamedTemporaryFile(suffix=".part") as f:
        yield f
        f.flush()
        fs.put_file(f.name, path)


def _protocols(fs) -> set:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


_TEMPORARY = ".tmp-"  # atomic_write's temporary names: ".<name>.tmp-<12 hex digits>"
_TEMPORARY_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def remove_temporaries(url: str) -> int:
    """Remove what atomic_write left under a folder when its process was killed (local folders:
    remotely, an upload not completed never shows, and a temporary file is local to the writer).
    Returns how many were removed."""
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


class RangeFile(ByteView):
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


class ArchiveReader:
    """Reads byte ranges from archives: local ones through the most recently used handles, kept
    open; remote ones one ranged request each (read) or read ahead (read_ranges).

    A shard reads from a few big archives (tars) or from thousands of loose files
    (folder layouts): a bounded cache serves both without running out of descriptors.
    Remote archives are read by a ReadAhead (transforms/readahead.py): up to 16 requests in
    flight and at most 32 MiB held per reader.
    """

    def __init__(self, max_open: int = 32, read_ahead: Optional[ReadAhead] = None):
        self._files: collections.OrderedDict[str, IO[bytes]] = collections.OrderedDict()
        self._max_open = max_open
        self._local: dict[str, bool] = {}
        self._read_ahead = read_ahead

    def _is_local(self, archive: str) -> bool:
        if _plain_path(archive):
            return True
        local = self._local.get(archive)
        if local is None:
            if len(self._local) > 4096:
                self._local.clear()
            local = self._local[archive] = is_local(archive)
        return local

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
        if not self._is_local(archive):
            return fetch_range(archive, offset, offset + size)
        f = self._handle(archive)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"{archive}: wanted {size} bytes at offset {offset}, got {len(data)} (archive truncated?)")
        return data

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> Iterator[bytes]:
        """The bytes of each (archive, offset, size), in order: local archives read one by one as
        they are needed (nothing to wait for), remote ones read ahead (ReadAhead, its bound on
        memory stated there)."""
        if all(self._is_local(archive) for archive, _, _ in ranges):
            return (self.read(*r) for r in ranges)
        if self._read_ahead is None:
            self._read_ahead = ReadAhead()
        return self._read_ahead.read(ranges)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        if self._read_ahead is not None:
            self._read_ahead.close()


@contextlib.contextmanager
def open_range(url: str, start: int, length: int, sparse: bool = False) -> Iterator:
    """A read-only, seekable view of bytes [start, start + length) of a file, for walking the tar
    headers in it: locally a RangeFile over the file, elsewhere a BlockFile (read in blocks of
    HEADER_BLOCK bytes, the next ones fetched ahead: transforms/readahead.py). `sparse`: the
    headers lie far apart (a tar of tars, a class tar per member), so each is read by a request of
    SPARSE_BLOCK bytes where it lies, and nothing is fetched ahead."""
    if is_local(url):
        with open_input(url) as f:
            yield RangeFile(f, start, length)
        return
    block, ahead = (SPARSE_BLOCK, 0) if sparse else (HEADER_BLOCK, 2)
    with BlockFile(url, start, length, block_size=block, ahead=ahead) as view:
        yield view
