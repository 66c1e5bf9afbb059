"""Remote reads that do not wait on each other (transforms/readahead.py), against fake stores in memory.

A fake store is a dict of files and a fetch function that records every request (and can wait a
moment before answering, as a network would), so the tests see what a store would be asked.
"""
import io
import random
import tarfile
import threading
import time

import pytest

from transforms.readahead import BlockFile, ReadAhead, Request, plan_requests
from transforms.storage import ArchiveReader
from transforms.tar_headers import iter_tar_entries


class FakeStore:
    """Files in memory; fetch(url, start, end) answers like fetch_range and keeps a log."""

    def __init__(self, files: dict, delay: float = 0.0):
        self.files = files
        self.delay = delay
        self.log: list = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()

    def fetch(self, url: str, start: int, end: int) -> bytes:
        with self._lock:
            self.log.append((url, start, end))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            data = self.files[url][start:end]
            if len(data) != end - start:
                raise OSError(f"{url}: wanted {end - start} bytes at offset {start}, got {len(data)}")
            return data
        finally:
            with self._lock:
                self.in_flight -= 1


def tar_of(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members_of(data: bytes) -> list:
    """(name, offset, size) of a tar's members, from tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar]


# --- plan_requests --------------------------------------------------------------------------------

def test_members_next_to_each_other_in_an_archive_share_a_request():
    archive = tar_of({f"m{i}.JPEG": bytes([i]) * (1000 + 37 * i) for i in range(6)})
    places = members_of(archive)
    ranges = [("a", offset, size) for _, offset, size in places]
    # in archive order: one request from the first payload to the end of the last
    (one,) = plan_requests(ranges, max_gap=1024, max_chunk=1 << 20, window=64)
    assert one == Request("a", places[0][1], places[-1][1] + places[-1][2], tuple(range(6)))
    # in another order (a shard's), the same single request, holding the members in the order asked
    shuffled = [ranges[i] for i in (3, 0, 5, 1, 4, 2)]
    (one,) = plan_requests(shuffled, max_gap=1024, max_chunk=1 << 20, window=64)
    assert one.members == tuple(range(6)) and (one.start, one.end) == (places[0][1], places[-1][1] + places[-1][2])
    # a gap wider than max_gap (the headers and padding between the payloads) keeps them apart
    assert len(plan_requests(ranges, max_gap=100, max_chunk=1 << 20, window=64)) == 6


def test_requests_stay_inside_their_chunk_and_come_in_the_order_of_their_first_member():
    ranges = [("a", 0, 10), ("b", 0, 10), ("a", 10, 10), ("b", 10, 10), ("a", 20, 10), ("c", 5, 1)]
    plan = plan_requests(ranges, max_gap=0, max_chunk=1 << 20, window=64)
    assert [(r.url, r.start, r.end, r.members) for r in plan] == [
        ("a", 0, 30, (0, 2, 4)), ("b", 0, 20, (1, 3)), ("c", 5, 6, (5,))]
    # a window of 2 ranges: ("a", 0) and ("a", 10) are in different chunks
    plan = plan_requests(ranges, max_gap=0, max_chunk=1 << 20, window=2)
    assert [r.members for r in plan] == [(0,), (1,), (2,), (3,), (4,), (5,)]
    # max_chunk: no chunk holds more bytes of ranges than that (but one range always fits)
    plan = plan_requests([("a", 0, 10), ("a", 10, 10), ("a", 20, 50)], max_gap=0, max_chunk=20, window=64)
    assert [r.members for r in plan] == [(0, 1), (2,)]
    # overlapping and repeated ranges share a request
    plan = plan_requests([("a", 0, 10), ("a", 5, 10), ("a", 0, 10)], max_gap=0, max_chunk=100, window=64)
    assert [(r.start, r.end, r.members) for r in plan] == [(0, 15, (0, 1, 2))]


# --- ReadAhead ------------------------------------------------------------------------------------

def random_ranges(rng: random.Random, files: dict, n: int, max_size: int) -> list:
    out = []
    for _ in range(n):
        url = rng.choice(sorted(files))
        size = rng.randint(1, max_size)
        offset = rng.randint(0, len(files[url]) - size)
        out.append((url, offset, size))
    return out


def test_read_ahead_gives_every_range_in_order():
    rng = random.Random(3)
    files = {f"s3://b/{i}.tar": rng.randbytes(300_000) for i in range(3)}
    store = FakeStore(files)
    ranges = random_ranges(rng, files, 500, 5000)
    ranges += [(ranges[0][0], ranges[0][1] + ranges[0][2], 700)]  # one right after another
    reader = ReadAhead(store.fetch, max_bytes=1 << 20, max_requests=4, max_gap=512, window=32)
    assert list(reader.read(ranges)) == [files[u][o:o + s] for u, o, s in ranges]
    assert reader.requests == len(store.log) < len(ranges)  # some shared a request
    reader.close()


def test_read_ahead_keeps_the_bytes_held_under_its_bound_with_many_requests_in_flight():
    rng = random.Random(4)
    files = {f"s3://b/{i}.tar": rng.randbytes(2_000_000) for i in range(4)}
    store = FakeStore(files, delay=0.005)
    ranges = random_ranges(rng, files, 400, 20_000)
    bound = 256 << 10
    reader = ReadAhead(store.fetch, max_bytes=bound, max_requests=8, max_gap=256, window=16)
    started = time.perf_counter()
    seen = 0
    for (url, offset, size), data in zip(ranges, reader.read(ranges)):
        assert data == files[url][offset:offset + size]
        seen += 1
        time.sleep(0.0005)  # a decoder that takes its time: the read-ahead fills up to its bound
    elapsed = time.perf_counter() - started
    assert seen == len(ranges)
    assert 0 < reader.peak_held <= bound
    assert reader.peak_held > bound // 2  # it did read ahead, up to near its bound
    assert store.peak_in_flight > 1  # requests overlapped ...
    assert elapsed < 0.6 * len(store.log) * store.delay  # ... so the waits did not add up
    reader.close()


def test_a_range_larger_than_the_bound_is_read_alone():
    files = {"s3://b/x": bytes(range(256)) * 4000}
    store = FakeStore(files)
    reader = ReadAhead(store.fetch, max_bytes=64 << 10, max_requests=4, max_gap=16, window=4)
    ranges = [("s3://b/x", 0, 1000), ("s3://b/x", 5000, 200_000), ("s3://b/x", 300_000, 1000)]
    assert list(reader.read(ranges)) == [files["s3://b/x"][o:o + s] for _, o, s in ranges]
    assert reader.peak_held == 200_000
    reader.close()


def test_a_failed_read_raises_at_its_member_and_an_early_stop_cancels_the_rest():
    files = {"s3://b/x": bytes(10_000)}
    store = FakeStore(files)
    reader = ReadAhead(store.fetch, max_bytes=1 << 20, max_requests=2, max_gap=0, window=4)
    ranges = [("s3://b/x", 0, 10), ("s3://b/x", 9_995, 10), ("s3://b/x", 20, 10)]  # the second runs past the end
    got = reader.read(ranges)
    assert next(got) == bytes(10)
    with pytest.raises(OSError, match="wanted 10 bytes at offset 9995"):
        next(got)

    slow = FakeStore({"s3://b/y": bytes(1_000_000)}, delay=0.05)
    reader = ReadAhead(slow.fetch, max_bytes=1 << 20, max_requests=1, max_gap=0, window=64)
    got = reader.read([("s3://b/y", i * 1000, 10) for i in range(50)])
    next(got)
    got.close()
    reader.close()
    time.sleep(0.15)
    assert len(slow.log) < 10  # the requests not started were cancelled


def test_read_ahead_bound_is_checked():
    with pytest.raises(ValueError):
        ReadAhead(max_bytes=1 << 20, max_gap=1 << 20, window=64)


def test_an_archive_reader_reads_local_files_directly_and_remote_ones_ahead(tmp_path, monkeypatch):
    path = tmp_path / "a.tar"
    path.write_bytes(bytes(range(256)) * 100)
    reader = ArchiveReader()
    ranges = [(str(path), 10, 20), (str(path), 1000, 5)]
    assert list(reader.read_ranges(ranges)) == [path.read_bytes()[10:30], path.read_bytes()[1000:1005]]
    assert reader._read_ahead is None  # no pool, no thread: the local build reads as it did
    store = FakeStore({"s3://b/a.tar": path.read_bytes()})
    reader = ArchiveReader(read_ahead=ReadAhead(store.fetch))
    assert list(reader.read_ranges([("s3://b/a.tar", 10, 20)])) == [path.read_bytes()[10:30]]
    assert store.log == [("s3://b/a.tar", 10, 30)]
    reader.close()


# --- BlockFile ------------------------------------------------------------------------------------

def test_a_tar_s_headers_cost_a_request_per_block_not_per_member():
    rng = random.Random(5)
    members = {f"n01440764_{i}.JPEG": rng.randbytes(rng.randint(20_000, 60_000)) for i in range(120)}
    data = b"\0" * 1024 + tar_of(members)  # the tar lies at offset 1024 of its file, as a class tar does
    store = FakeStore({"s3://b/t": data}, delay=0.002)
    expected = [(name, 1024 + offset, size) for name, offset, size in members_of(data[1024:])]
    length = len(data) - 1024
    with BlockFile("s3://b/t", 1024, length, fetch=store.fetch, block_size=1 << 20, ahead=2) as view:
        entries = [(e.name, e.offset, e.size) for e in iter_tar_entries(view, 1024, length)]
    assert entries == expected
    blocks = -(-length // (1 << 20))
    assert len(store.log) == blocks < len(members) / 10  # each block once: the tar streamed once
    assert all(start >= 1024 and end <= len(data) for _, start, end in store.log)
    # a tar no bigger than a block: one request
    store.log.clear()
    with BlockFile("s3://b/t", 1024, length, fetch=store.fetch, block_size=length) as view:
        assert [(e.name, e.offset, e.size) for e in iter_tar_entries(view, 1024, length)] == expected
    assert store.log == [("s3://b/t", 1024, len(data))]


def test_headers_far_apart_are_read_by_small_requests_where_they_lie():
    rng = random.Random(6)
    inner = {f"n0{i}.tar": tar_of({f"x{j}.JPEG": rng.randbytes(30_000) for j in range(10)}) for i in range(5)}
    data = tar_of(inner)
    store = FakeStore({"s3://b/train.tar": data})
    with BlockFile("s3://b/train.tar", 0, len(data), fetch=store.fetch, block_size=64 << 10, ahead=0) as view:
        entries = [(e.name, e.offset, e.size) for e in iter_tar_entries(view, 0, len(data))]
    assert entries == members_of(data)
    assert len(store.log) <= len(inner) + 2  # about one request per class tar ...
    assert sum(end - start for _, start, end in store.log) < len(data) / 2  # ... and not the whole tar


def test_a_block_file_is_a_seekable_view():
    data = bytes(range(256)) * 50
    store = FakeStore({"s3://b/v": data})
    with BlockFile("s3://b/v", 100, 5000, fetch=store.fetch, block_size=1000, ahead=1) as view:
        assert view.read(10) == data[100:110] and view.tell() == 10
        view.seek(995)
        assert view.read(10) == data[1095:1105]  # across a block's end
        view.seek(-5, 2)
        assert view.read() == data[5095:5100] and view.read(3) == b""
        view.seek(0)
        assert view.read() == data[100:5100]
