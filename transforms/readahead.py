"""Reads of remote archives that do not wait on each other: members read ahead, tar headers in blocks.

On an object store or an http(s) server every request costs a round trip (~20 ms over a real
network), whatever its size. Read one after the other, a member per request and a tar header per
request, a worker would spend most of its time waiting. Two readers here keep the round trips
off the critical path; storage.ArchiveReader and storage.open_range use them for remote files
only (local files keep their direct reads).

Contract:
    plan_requests(ranges, max_gap, max_chunk, window) -> [Request]: the ranged requests that
        read `ranges` ((url, offset, size) in the order they are needed); members close together
        in one archive (a gap of at most max_gap bytes) share one request
    ReadAhead(...).read(ranges) -> the bytes of each range, in order, read by a pool of threads
        ahead of the consumer, with a bound on the bytes held (see ReadAhead)
    BlockFile(url, start, length, ...) -> a read-only, seekable view of [start, start + length)
        of a remote file that reads it in large blocks, the next ones fetched ahead while the
        current one is walked (see BlockFile)
    fetch_range(url, start, end) -> exactly the bytes [start, end) of a file, in one request

This module imports no other module of the project.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from typing import Callable, Iterator, Optional, Sequence

import fsspec

__all__ = ["Request", "plan_requests", "ReadAhead", "ByteView", "BlockFile", "fetch_range", "Fetch", "HEADER_BLOCK",
           "SPARSE_BLOCK"]

Fetch = Callable[[str, int, int], bytes]  # (url, start, end) -> the bytes [start, end)

MiB = 1 << 20
HEADER_BLOCK = 4 * MiB  # BlockFile's blocks: a tar of at most this size costs one request for its headers
SPARSE_BLOCK = 64 << 10  # a tar of tars: what is read where each of its headers lies

_FILESYSTEMS: dict = {}  # url -> (filesystem, path): fsspec's parse of a URL costs ~25 us
_FILESYSTEMS_LOCK = threading.Lock()


def _filesystem(url: str) -> tuple:
    found = _FILESYSTEMS.get(url)
    if found is None:
        with _FILESYSTEMS_LOCK:
            if len(_FILESYSTEMS) > 4096:  # a folder layout has a file per image: keep the cache small
                _FILESYSTEMS.clear()
            found = _FILESYSTEMS[url] = fsspec.core.url_to_fs(url)
    return found


def fetch_range(url: str, start: int, end: int) -> bytes:
    """The bytes [start, end) of a file, in one ranged request (fsspec's cat_file). A short answer
    (the file ends early) or a long one (a server that ignores byte ranges) raises OSError."""
    if end <= start:  # an empty member: nothing to ask (an empty Range is no range to a server)
        return b""
    fs, path = _filesystem(url)
    data = fs.cat_file(path, start=start, end=end)
    if len(data) != end - start:
        why = "the file ends early (truncated?)" if len(data) < end - start else "the server ignores byte ranges"
        raise OSError(f"{url}: wanted {end - start} bytes at offset {start}, got {len(data)} ({why})")
    return data


@dataclasses.dataclass(frozen=True)
class Request:
    """One ranged request: bytes [start, end) of `url`, holding the ranges `members` (their
    indices in the list planned, ascending)."""

    url: str
    start: int
    end: int
    members: tuple

    @property
    def size(self) -> int:
        return self.end - self.start


def plan_requests(ranges: Sequence[tuple[str, int, int]], max_gap: int, max_chunk: int,
                  window: int) -> list[Request]:
    """The requests that read `ranges`, ordered by the first range each one holds.

    The ranges are taken in chunks of consecutive ones (at most `window` ranges and `max_chunk`
    bytes of them, at least one range); inside a chunk, ranges of one file whose gap is at most
    `max_gap` bytes (overlapping ones included) share a request. So a request never holds
    ranges of two chunks, and it spans at most max_chunk + window * max_gap bytes (or one range).
    """
    requests: list[Request] = []
    i = 0
    while i < len(ranges):
        chunk_end, chunk_bytes = i, 0
        while chunk_end < len(ranges) and chunk_end - i < window and (
                chunk_end == i or chunk_bytes + ranges[chunk_end][2] <= max_chunk):
            chunk_bytes += ranges[chunk_end][2]
            chunk_end += 1
        by_url: dict[str, list] = {}
        for j in range(i, chunk_end):
            url, offset, size = ranges[j]
            by_url.setdefault(url, []).append((offset, offset + size, j))
        for url, spans in by_url.items():
            spans.sort()
            start, end, members = spans[0][0], spans[0][1], [spans[0][2]]
            for offset, stop, j in spans[1:]:
                if offset - end <= max_gap:
                    end = max(end, stop)
                    members.append(j)
                else:
                    requests.append(Request(url, start, end, tuple(sorted(members))))
                    start, end, members = offset, stop, [j]
            requests.append(Request(url, start, end, tuple(sorted(members))))
        i = chunk_end
    requests.sort(key=lambda r: r.members[0])
    return requests


class ReadAhead:
    """Reads ranges of remote files ahead of their consumer, many requests in flight.

    read(ranges) plans the requests (plan_requests: members close together in one archive share
    a request), hands them in order to a pool of `max_requests` threads, and yields each range's
    bytes in the order given, waiting only when the next range's request has not come back yet.

    Memory: the bytes held, requested and not yet all handed to the consumer, never exceed
    `max_bytes` (32 MiB by default), except while one range larger than max_bytes is read on
    its own. (A request is sent while the bytes held stay within the bound, or when nothing else
    is held; a chunk of plan_requests holds at most max_bytes / 2 of ranges, or one range, plus
    at most max_bytes / 4 of gaps; and when the consumer needs a request that is not sent yet,
    every request held belongs to that same chunk.) What the consumer keeps of the bytes it was given is its own.
    `peak_held` is the most bytes held so far (for the tests and the benchmark); `requests`
    counts the requests sent.
    """

    def __init__(self, fetch: Fetch = fetch_range, max_bytes: int = 32 * MiB, max_requests: int = 16,
                 max_gap: int = 4096, window: int = 128):
        if window * max_gap > max_bytes // 4:
            raise ValueError("window * max_gap must stay within a quarter of max_bytes")
        self._fetch = fetch
        self.max_bytes = max_bytes
        self.max_requests = max_requests
        self.max_gap = max_gap
        self.window = window
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self.peak_held = 0
        self.requests = 0

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.max_requests, thread_name_prefix="read-ahead")
        return self._pool

    def read(self, ranges: Sequence[tuple[str, int, int]]) -> Iterator[bytes]:
        """The bytes of each (url, offset, size) of `ranges`, in order. A failed request raises
        its error when the consumer reaches its first range; closing the iterator early cancels
        the requests not yet started."""
        plan = plan_requests(ranges, self.max_gap, self.max_bytes // 2, self.window)
        owner = [0] * len(ranges)
        for k, request in enumerate(plan):
            for j in request.members:
                owner[j] = k
        left = [len(r.members) for r in plan]
        futures: dict[int, concurrent.futures.Future] = {}
        pool = self._executor()
        held = sent = 0

        def send(k: int) -> None:
            nonlocal held
            request = plan[k]
            if request.size == 0:  # empty members only
                futures[k] = concurrent.futures.Future()
                futures[k].set_result(b"")
                return
            futures[k] = pool.submit(self._fetch, request.url, request.start, request.end)
            held += request.size
            self.peak_held = max(self.peak_held, held)
            self.requests += 1

        try:
            for i, (_, offset, size) in enumerate(ranges):
                while sent < len(plan) and (held == 0 or held + plan[sent].size <= self.max_bytes):
                    send(sent)
                    sent += 1
                k = owner[i]
                if k >= sent:  # needed now, beyond the bound: every request held is of its chunk
                    assert k == sent, (k, sent)
                    send(k)
                    sent += 1
                request = plan[k]
                data = futures[k].result()
                left[k] -= 1
                if left[k] == 0:
                    del futures[k]
                    held -= request.size
                if request.start == offset and request.size == size:
                    yield data
                else:
                    yield data[offset - request.start: offset - request.start + size]
        finally:
            for future in futures.values():
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class ByteView:
    """What a read-only, seekable view of bytes [0, length) needs besides its read(): the
    position, seek and tell of a binary file (BlockFile here, storage.RangeFile)."""

    _length: int
    _pos: int

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


class BlockFile(ByteView):
    """A read-only, seekable view of bytes [start, start + length) of a remote file, for walking
    the tar headers in it (tar_headers.iter_tar_entries) in a handful of requests.

    A tar's headers lie one per member, and where the next one is only the current one says:
    read one request each, they would cost a round trip per member. Here the view is read in
    blocks of `block_size` bytes (4 MiB: a class tar of ImageNet's train set, ~1,300 members of
    ~110 KB in ~140 MB, is ~35 requests; a tar of up to 4 MiB is one), and while a block is
    walked the next `ahead` blocks are already being fetched, so that a tar is streamed once at
    the store's bandwidth rather than at one round trip per header. That reads the tar's bytes
    once (the headers are spread over all of it); the header cache (header_cache.py) spares the
    next builds that cost.

    Where the reads jump ahead by more than a block, blocks would be wasted: such a read fetches
    only `small` bytes (64 KiB) from where it starts, and read-ahead begins again once the reads
    are dense. A tar of tars (a header per class tar of ~140 MB) is opened with blocks of
    SPARSE_BLOCK and nothing ahead (storage.open_range's `sparse`): a request of 64 KiB per
    header. Memory: at most `ahead` + 1 blocks and one small read (12 MiB and 64 KiB by default)
    per open view. `requests` counts the requests sent.
    """

    def __init__(self, url: str, start: int, length: int, fetch: Fetch = fetch_range,
                 block_size: int = HEADER_BLOCK, ahead: int = 2, small: int = SPARSE_BLOCK):
        self._url = url
        self._start = start
        self._length = length
        self._fetch = fetch
        self._block_size = block_size
        self._ahead = ahead
        self._small = small
        self._blocks: dict[int, concurrent.futures.Future] = {}
        self._last_block: Optional[int] = None
        self._loose: tuple[int, bytes] = (0, b"")  # the last small read: (its offset, its bytes)
        self._pos = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, ahead), thread_name_prefix="block-ahead")
        self._count = threading.Lock()
        self.requests = 0

    def _get(self, begin: int, end: int) -> bytes:
        with self._count:
            self.requests += 1
        return self._fetch(self._url, self._start + begin, self._start + end)

    def _block(self, index: int) -> concurrent.futures.Future:
        future = self._blocks.get(index)
        if future is None:
            begin = index * self._block_size
            end = min(begin + self._block_size, self._length)
            future = self._blocks[index] = self._pool.submit(self._get, begin, end)
        return future

    def _read_at(self, pos: int, n: int) -> bytes:
        """Up to n bytes at pos (fewer only at the end of the view, or at the end of a block)."""
        n = min(n, self._length - pos)
        if n <= 0:
            return b""
        loose_at, loose = self._loose
        if loose_at <= pos and pos + n <= loose_at + len(loose):
            return loose[pos - loose_at: pos - loose_at + n]
        index = pos // self._block_size
        last = self._last_block
        dense = last is None or index in (last, last + 1) or index in self._blocks
        if not dense:  # a jump: a small read where it lands, and no block fetched ahead
            for stale in list(self._blocks):
                self._blocks.pop(stale).cancel()
            self._last_block = index
            end = min(self._length, pos + max(n, self._small))
            self._loose = (pos, self._get(pos, end))
            return self._loose[1][:n]
        self._last_block = index
        for stale in [i for i in self._blocks if i < index]:
            self._blocks.pop(stale).cancel()
        data = self._block(index).result()
        for ahead in range(index + 1, index + 1 + self._ahead):
            if ahead * self._block_size < self._length:
                self._block(ahead)
        offset = pos - index * self._block_size
        return data[offset: offset + n]

    def read(self, n: int = -1) -> bytes:
        remaining = self._length - self._pos
        n = remaining if n is None or n < 0 else min(n, remaining)
        parts = []
        while n > 0:
            part = self._read_at(self._pos, n)
            if not part:
                break
            parts.append(part)
            self._pos += len(part)
            n -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        for future in self._blocks.values():
            future.cancel()
        self._blocks.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> BlockFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
