"""The training stream (pipeline/reading/stream.py), without torch: every sample once per epoch,
equal ranks, the documented padding, the seeded order, resuming at a step, decoding and the GPU
decoder's answer where torch is missing.

What the stream yields is compared with the tars read independently with tarfile. DataLoader
workers are played in this process: webdataset reads the WORKER and NUM_WORKERS environment
variables as a worker's place, and `loader_order` interleaves the workers' items as PyTorch's
DataLoader does (one from each worker in turn, passing over the workers that are done; checked
against a real DataLoader in tests/test_readers_torch.py).
"""
import collections
import io
import json
import logging
import math
import sys
import tarfile
import types
from importlib.util import find_spec

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.reading import gpu
from pipeline.reading.stream import Piece, ShardCountMismatch, Stream, StreamShard, read_pieces, shard_samples, stream

# The reading side of a finished build: no Beam in the code under test, so `make test-beam-lowest` leaves it out.
pytestmark = pytest.mark.readers

COUNTS = (0, 5, 3, 7, 1, 0, 4)  # unequal shards, two of them empty: 20 samples
HAS_TORCH = find_spec("torch") is not None


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Small WebDataset shards as the build writes them (.jpg, .cls, .json a sample), COUNTS samples each."""
    folder, entries, serial = tmp_path_factory.mktemp("shards"), [], 0
    for shard, count in enumerate(COUNTS):
        path = folder / f"train-{shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(count):
                key = f"k{serial:04d}"
                meta = {"key": key, "label": serial % 7, "boxes": [[0.1, 0.2, 0.5, 0.6]] * (serial % 3)}
                _add(tar, f"{key}.jpg", _jpeg(serial))
                _add(tar, f"{key}.cls", str(serial % 7).encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                serial += 1
        entries.append(StreamShard(str(path), count))
    return entries


def tar_samples(path) -> list:
    """(key, jpeg bytes, label, meta) of each sample of a tar in tar order, read with tarfile alone."""
    members = collections.defaultdict(dict)
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            members[key][ext] = tar.extractfile(member).read()
    return [(key, m["jpg"], int(m["cls"]), json.loads(m["json"])) for key, m in members.items()]


def shard_keys(entries) -> list:
    """Each shard's keys in tar order, in the order of `entries`."""
    return [[key for key, *_ in tar_samples(entry.url)] for entry in entries]


def loader_order(make, monkeypatch, workers: int) -> list:
    """The items of make() as a DataLoader(batch_size=None) with `workers` workers yields them."""
    if workers == 0:
        return list(make())
    per_worker = []
    for worker in range(workers):
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", str(workers))
        per_worker.append(list(make()))
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    out = []
    for round_ in range(max(map(len, per_worker))):
        out.extend(items[round_] for items in per_worker if round_ < len(items))
    return out


def shape_of(items) -> list:
    """Items as their keys and padding marks, batches as lists of them: what two orders compare by."""
    return [shape_of(item) if isinstance(item, list) else (item["key"], item["padding"]) for item in items]


def keys_of(items, batched: bool) -> list:
    """The keys of output="sample" items, batches flattened."""
    samples = [s for batch in items for s in batch] if batched else items
    return [s["key"] for s in samples]


def sample_stream(entries, **options) -> Stream:
    return stream(entries, decode=None, output="sample", **options)


# --- every sample, equal ranks, the padding ---------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_one_rank_yields_every_sample_once(shards, monkeypatch, workers, batch_size):
    s = sample_stream(shards, seed=5, shuffle_buffer=6, batch_size=batch_size, world_size=1, rank=0)
    items = loader_order(lambda: s, monkeypatch, workers)
    keys = keys_of(items, batch_size is not None)
    assert sorted(keys) == sorted(k for keys in shard_keys(shards) for k in keys)
    assert len(s) == len(keys) == sum(COUNTS) == 20 and s.padding == s.dropped == 0
    assert len(items) == s.steps_per_epoch == math.ceil(20 / (batch_size or 1))


@pytest.mark.parametrize("world_size", [2, 3, 6, 7, 25])
@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_yield_equal_epochs_that_cover_every_sample_padded_from_the_start(shards, monkeypatch, world_size,
                                                                                workers):
    per_rank = -(-20 // world_size)

    def rank_items(rank, workers):
        return loader_order(lambda: sample_stream(shards, seed=3, shuffle_buffer=0, rank=rank, world_size=world_size),
                            monkeypatch, workers)

    ranks = [rank_items(rank, 0) for rank in range(world_size)]
    for rank, items in enumerate(ranks):
        assert len(items) == per_rank == len(sample_stream(shards, rank=rank, world_size=world_size))
        # Workers share a rank's samples, in another order.
        in_workers = rank_items(rank, workers)
        assert sorted(i["key"] for i in in_workers) == sorted(i["key"] for i in items) and len(in_workers) == per_rank
    everything = [item for items in ranks for item in items]
    order = [item["key"] for item in everything]
    padding = world_size * per_rank - 20
    # Without a shuffle buffer the ranks in turn are the epoch's order: whole shards, each in tar order
    # (an independent reading), then the padding: the order's first samples again, and marked.
    by_first_key = {keys[0]: keys for keys in shard_keys(shards) if keys}
    position = 0
    while position < 20:
        shard = by_first_key[order[position]]
        assert order[position:position + len(shard)] == shard
        position += len(shard)
    assert order[20:] == [order[i % 20] for i in range(padding)]
    assert [item["padding"] for item in everything] == [False] * 20 + [True] * padding
    assert sample_stream(shards, rank=0, world_size=world_size).padding == padding
    counts = collections.Counter(order)
    assert set(counts) == {k for keys in shard_keys(shards) for k in keys}
    assert sum(counts.values()) - len(counts) == padding


def test_ranks_with_a_shuffle_buffer_still_cover_every_sample(shards, monkeypatch):
    ranks = [keys_of(loader_order(lambda r=r: sample_stream(shards, seed=9, shuffle_buffer=4, batch_size=2, rank=r,
                                                        world_size=3), monkeypatch, 2), True) for r in range(3)]
    assert [len(keys) for keys in ranks] == [7, 7, 7]
    counts = collections.Counter(k for keys in ranks for k in keys)
    assert len(counts) == 20 and sorted(counts.values()) == [1] * 19 + [2]


def test_drop_last_leaves_out_the_end_of_the_order_and_says_how_many(shards, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.reading.stream"):
        ranks = [sample_stream(shards, shuffle_buffer=0, shuffle_shards=False, rank=r, world_size=3, drop_last=True)
                 for r in range(3)]
    assert "2 of the 20 samples" in caplog.text
    assert [len(s) for s in ranks] == [6, 6, 6] and ranks[0].dropped == 2 and ranks[0].padding == 0
    order = [item["key"] for s in ranks for item in s]
    assert order == [k for keys in shard_keys(shards) for k in keys][:18]


# --- the order ----------------------------------------------------------------------------------------

def test_the_same_seed_and_epoch_give_the_same_order_and_others_another(shards):
    def order(**options):
        return [item["key"] for item in sample_stream(shards, **{"shuffle_buffer": 5, **options})]

    assert order(seed=1, epoch=2) == order(seed=1, epoch=2)
    assert order(seed=1, epoch=2) != order(seed=1, epoch=3)
    assert order(seed=1, epoch=2) != order(seed=2, epoch=2)
    s = sample_stream(shards, shuffle_buffer=5, seed=1)
    s.set_epoch(3)
    assert [item["key"] for item in s] == order(seed=1, epoch=3)
    manifest_order = [k for keys in shard_keys(shards) for k in keys]
    assert order(shuffle_shards=False, shuffle_buffer=0) == manifest_order
    assert sorted(order(seed=1)) == sorted(manifest_order) != order(seed=1)


def test_the_shard_order_changes_with_the_epoch(shards):
    def first_keys(epoch):
        return [item["key"] for item in sample_stream(shards, shuffle_buffer=0, seed=4, epoch=epoch)][:5]

    assert len({tuple(first_keys(epoch)) for epoch in range(6)}) > 1


@pytest.mark.parametrize("world_size,workers,batch_size", [(1, 0, None), (1, 3, None), (2, 2, 3), (3, 3, 2),
                                                           (1, 4, 4), (2, 5, None)])
def test_resuming_at_a_step_yields_exactly_the_rest_of_the_order(shards, monkeypatch, world_size, workers, batch_size):
    for rank in range(world_size):
        def make(step=0, rank=rank):
            return sample_stream(shards, seed=7, epoch=1, shuffle_buffer=4, batch_size=batch_size, rank=rank,
                                 world_size=world_size, start_step=step)

        full = shape_of(loader_order(make, monkeypatch, workers))
        assert len(full) == make().steps_per_epoch
        for step in range(len(full) + 1):
            assert shape_of(loader_order(lambda step=step: make(step), monkeypatch, workers)) == full[step:], step


@pytest.mark.parametrize("workers", [0, 2, 3, 4, 6])
def test_a_batched_epoch_has_one_partial_batch_at_its_end(shards, monkeypatch, workers):
    s = sample_stream(shards, batch_size=3, rank=1, world_size=2)  # 10 samples
    sizes = [len(batch) for batch in loader_order(lambda: s, monkeypatch, workers)]
    assert sizes == [3, 3, 3, 1] and s.steps_per_epoch == 4 and len(s) == 10


def test_set_epoch_refuses_a_step_past_the_epoch(shards):
    s = sample_stream(shards, batch_size=4)
    s.set_epoch(0, 5)
    with pytest.raises(ValueError, match="5 steps"):
        s.set_epoch(0, 6)


# --- ranks, counts, options ----------------------------------------------------------------------------

def test_the_rank_comes_from_torch_distributed_then_the_environment(shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (sample_stream(shards).rank, sample_stream(shards).world_size) == (1, 4)
    fake = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_rank=lambda: 2,
                                 get_world_size=lambda: 3)
    monkeypatch.setitem(sys.modules, "torch.distributed", fake)
    assert (sample_stream(shards).rank, sample_stream(shards).world_size) == (2, 3)
    assert (sample_stream(shards, rank=0, world_size=2).rank, len(sample_stream(shards, rank=0, world_size=2))) == \
        (0, 10)
    monkeypatch.delitem(sys.modules, "torch.distributed")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (sample_stream(shards).rank, sample_stream(shards).world_size) == (0, 1)


@pytest.mark.parametrize("options", [{"rank": 1}, {"rank": 2, "world_size": 2}, {"world_size": 0, "rank": 0},
                                     {"decode": "jpeg"}, {"output": "tuple"}, {"batch_size": 0}])
def test_wrong_options_are_refused(shards, options):
    with pytest.raises(ValueError):
        stream(shards, **options)


def test_shards_may_be_pairs_or_any_object_with_url_and_samples(shards):
    objects = [types.SimpleNamespace(url=e.url, samples=e.samples, path="x") for e in shards]
    pairs = [(e.url, e.samples) for e in shards]
    assert sample_stream(objects).shards == sample_stream(pairs).shards == list(shards)


@pytest.mark.parametrize("wrong", [-1, +1])
def test_a_shard_that_does_not_hold_its_count_is_an_error(shards, wrong):
    entries = list(shards)
    entries[3] = StreamShard(entries[3].url, entries[3].samples + wrong)
    with pytest.raises(ShardCountMismatch, match=entries[3].url):
        list(sample_stream(entries, shuffle_buffer=0))


def webdataset_samples(url: str) -> list:
    """A shard's samples as webdataset's own tar reader (tarfile) gives them."""
    with open(url, "rb") as stream_:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream_}])
        return list(wds.tariterators.group_by_keys(files))


def test_a_shard_reads_as_webdatasets_own_reader_reads_it(shards, tmp_path):
    for entry in shards:
        assert list(shard_samples(entry.url)) == webdataset_samples(entry.url)
    # odd names too: a folder in the key, an upper-case extension, two dots, a folder, a name without a dot
    path = str(tmp_path / "odd.tar")
    with tarfile.open(path, "w") as tar:
        for name, data in [("a/b.JPG", b"1"), ("a/b.x.json", b"{}"), ("c.cls", b"3"), ("nodot", b"?")]:
            _add(tar, name, data)
        folder = tarfile.TarInfo("e")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    assert list(shard_samples(path)) == webdataset_samples(path)
    assert [sorted(s) for s in shard_samples(path)] == [["__key__", "__url__", "jpg", "x.json"],
                                                        ["__key__", "__url__", "cls"]]


def test_members_not_wanted_are_passed_over_and_a_cut_off_member_is_an_error(shards, tmp_path):
    entry = next(e for e in shards if e.samples)
    wanted = list(shard_samples(entry.url, ("jpg", "cls")))
    assert wanted == [{k: v for k, v in s.items() if k != "json"} for s in webdataset_samples(entry.url)]
    with tarfile.open(entry.url) as tar:
        first = tar.next()
    cut = tmp_path / "cut.tar"
    with open(entry.url, "rb") as f:  # the first member's header and half of its JPEG
        cut.write_bytes(f.read(first.offset_data + first.size // 2))
    with pytest.raises(ShardCountMismatch, match="ends inside its member k"):
        list(shard_samples(str(cut)))


def test_an_empty_split_streams_nothing(shards):
    s = sample_stream([shards[0], shards[5]], world_size=2, rank=1)
    assert len(s) == s.steps_per_epoch == 0 and list(s) == []


# --- decoding and output ------------------------------------------------------------------------------

def test_pairs_decode_to_pil_numpy_or_bytes_as_the_tars_hold_them(shards):
    truth = {jpeg: (label, key) for entry in shards for key, jpeg, label, _ in tar_samples(entry.url)}
    raw = list(stream(shards, decode=None, shuffle_buffer=0, shuffle_shards=False))
    assert [label for _, label in raw] == [truth[jpeg][0] for jpeg, _ in raw] and len(raw) == 20
    # decode=None pairs skip webdataset's decoder: the same values and types as it gives.
    decoder = wds.Decoder([], only=["jpg", "cls"])
    by_decoder = [(d["jpg"], d["cls"]) for d in map(decoder, read_pieces(shards, [Piece(i, 0, e.samples, False)
                                                                               for i, e in enumerate(shards)]))]
    assert raw == by_decoder and all(type(label) is int and type(jpeg) is bytes for jpeg, label in raw)
    lengths = list(stream(shards, decode=None, shuffle_buffer=0, shuffle_shards=False, transform=len))
    assert lengths == [(len(jpeg), label) for jpeg, label in raw]
    pil = list(stream(shards, decode="pil", shuffle_buffer=0, shuffle_shards=False))
    arrays = list(stream(shards, decode="numpy", shuffle_buffer=0, shuffle_shards=False))
    for (jpeg, label), (image, pil_label), (array, array_label) in zip(raw, pil, arrays):
        expected = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        assert isinstance(image, Image.Image) and image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
        assert array.dtype == np.uint8 and array.shape == (12, 16, 3) and np.array_equal(array, expected)
        assert label == pil_label == array_label


def test_samples_carry_their_metadata_and_boxes(shards):
    truth = {key: (label, meta) for entry in shards for key, _, label, meta in tar_samples(entry.url)}
    items = list(sample_stream(shards, seed=2))
    assert {item["key"] for item in items} == set(truth)
    for item in items:
        label, meta = truth[item["key"]]
        assert item["label"] == label and item["meta"] == meta and item["url"] in {e.url for e in shards}
        assert item["boxes"].dtype == np.float32 and item["boxes"].shape == (len(meta["boxes"]), 4)
        assert np.allclose(item["boxes"], np.asarray(meta["boxes"]).reshape(-1, 4))


def test_a_transform_runs_before_batching_and_equal_shapes_are_stacked(shards):
    s = stream(shards, decode="numpy", batch_size=8, transform=lambda image: image[:10, :10])
    images, labels = next(iter(s))
    assert images.shape == (8, 10, 10, 3) and labels.dtype == np.int64 and labels.shape == (8,)
    images, labels = next(iter(stream(shards, decode="pil", batch_size=8)))
    assert isinstance(images, list) and len(images) == 8


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed: tests/test_readers_torch.py decodes to tensors")
def test_without_torch_tensor_decoding_says_what_is_missing(shards):
    with pytest.raises(ImportError, match="decode='torch' needs PyTorch"):
        stream(shards, decode="torch")
    with pytest.raises(ImportError, match="needs PyTorch"):
        gpu.decode_jpegs([tar_samples(shards[1].url)[0][1]])
    assert gpu.cuda_available() is False and gpu.default_device() == "cpu"


# --- a real build ---------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("world_size", [1, 3])
def test_a_real_build_streams_every_sample_with_its_row(built, monkeypatch, world_size):
    manifest_shards = built.manifest["splits"]["train"]["shards"]
    entries = [StreamShard(str(built.path(s["path"])), s["samples"]) for s in manifest_shards]
    truth = {key: (jpeg, label, meta) for entry in entries for key, jpeg, label, meta in tar_samples(entry.url)}
    total = built.manifest["splits"]["train"]["samples"]
    assert len(truth) == total and 0 in [s["samples"] for s in manifest_shards]
    seen = collections.Counter()
    for rank in range(world_size):
        items = loader_order(lambda rank=rank: stream(entries, decode="numpy", output="sample", batch_size=4, seed=11,
                                            rank=rank, world_size=world_size), monkeypatch, 2)
        samples = [s for batch in items for s in batch]
        assert len(samples) == math.ceil(total / world_size)
        for sample in samples:
            jpeg, label, meta = truth[sample["key"]]
            assert sample["label"] == label and sample["meta"] == meta
            assert np.array_equal(sample["image"], np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
            seen[sample["key"]] += 1
    assert set(seen) == set(truth) and sum(seen.values()) - len(seen) == -total % world_size
