"""The training stream through PyTorch for real: a DataLoader with worker processes over `.stream()`,
tensors, the GPU decoder's fallback to the CPU, and timm's own webdataset reader on a build.
`make test-readers` runs this file in .venv-readers, which has torch, torchvision and timm; without
torch it is skipped (and the timm test without timm).
"""
import collections
import io
import json
import math
import sys
import tarfile
import types
from importlib.util import find_spec

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from pipeline.reading import gpu  # noqa: E402  (after the skip: these tests need torch)
from pipeline.reading.stream import StreamShard, stream  # noqa: E402

SPLIT = "train"


def _entries(built) -> list:
    return [StreamShard(str(built.path(s["path"])), s["samples"]) for s in built.manifest["splits"][SPLIT]["shards"]]


def _truth(built) -> dict:
    """{key: (jpeg bytes, label, meta)} of the split, read with tarfile alone."""
    members = collections.defaultdict(dict)
    for entry in _entries(built):
        with tarfile.open(entry.url) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                members[key][ext] = tar.extractfile(member).read()
    return {key: (m["jpg"], int(m["cls"]), json.loads(m["json"])) for key, m in members.items()}


def _keys(batches) -> list:
    return [sample["key"] for batch in batches for sample in batch]


def _played(make, monkeypatch, workers: int) -> list:
    """The keys of make()'s batches as the stream's documentation says a DataLoader yields them: each
    worker played in this process (webdataset reads WORKER and NUM_WORKERS), then one batch from
    each worker in turn, worker 0 first, passing over the workers that are done."""
    per_worker = []
    for worker in range(workers):
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", str(workers))
        per_worker.append([[s["key"] for s in batch] for batch in make()])
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    return [batch[turn] for turn in range(max(map(len, per_worker))) for batch in per_worker if turn < len(batch)]


@pytest.mark.e2e
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_dataloader_with_two_workers_gives_equal_ranks_and_every_sample(built, monkeypatch, world_size):
    truth = _truth(built)
    seen = collections.Counter()
    for rank in range(world_size):
        def make(rank=rank):
            return stream(_entries(built), decode=None, output="sample", batch_size=3, seed=4, rank=rank,
                          world_size=world_size)

        batches = list(make().loader(num_workers=2))
        keys = _keys(batches)
        assert len(keys) == len(make()) == math.ceil(len(truth) / world_size)
        assert len(batches) == make().steps_per_epoch and [len(b) for b in batches[:-1]] == [3] * (len(batches) - 1)
        # The order the stream documents, which resuming relies on, is the DataLoader's.
        assert [[s["key"] for s in batch] for batch in batches] == _played(make, monkeypatch, 2)
        seen.update(keys)
    assert set(seen) == set(truth)
    assert sum(seen.values()) - len(seen) == -len(truth) % world_size  # the documented padding, nothing else


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on a 2-core machine
@pytest.mark.parametrize("workers,batch_size", [(2, 3), (3, None)])
def test_resuming_a_dataloader_at_a_step_yields_the_rest_of_the_epoch(built, workers, batch_size):
    def order(step):
        s = stream(_entries(built), decode=None, output="sample", batch_size=batch_size, seed=8, epoch=2,
                   shuffle_buffer=10, rank=1, world_size=2, start_step=step)
        items = list(s.loader(num_workers=workers))
        return [[x["key"] for x in item] if batch_size else item["key"] for item in items]

    full = order(0)
    assert len(full) == len(set(map(str, full)))
    for step in sorted({1, 2, workers, workers + 1, len(full) // 2, len(full) - 1, len(full)}):
        assert order(step) == full[step:], step


@pytest.mark.e2e
def test_decode_torch_gives_uint8_tensors_of_the_stored_pixels(built):
    truth = _truth(built)
    by_label_and_size = collections.defaultdict(list)
    for jpeg, label, _ in truth.values():
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).transpose(2, 0, 1)
        by_label_and_size[(label, pixels.shape)].append(pixels)
    pairs = list(stream(_entries(built), decode="torch", seed=1).loader(num_workers=2))
    assert len(pairs) == len(truth)
    for image, label in pairs:
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.shape[0] == 3
        candidates = by_label_and_size[(int(label), tuple(image.shape))]
        assert any(np.array_equal(image.numpy(), pixels) for pixels in candidates)


@pytest.mark.e2e
def test_batches_of_tensors_are_stacked_and_samples_keep_their_boxes(built):
    s = stream(_entries(built), decode="torch", batch_size=4, transform=lambda image: image[:, :32, :32])
    images, labels = next(iter(s.loader(num_workers=2)))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
    truth = _truth(built)
    for sample in stream(_entries(built), decode="torch", output="sample").loader(num_workers=2):
        boxes = truth[sample["key"]][2]["boxes"]
        assert isinstance(sample["boxes"], torch.Tensor) and tuple(sample["boxes"].shape) == (len(boxes), 4)


# --- the GPU decoder ---------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_without_cuda_the_gpu_decoder_decodes_on_the_cpu(built):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fallback is for machines without it")
    assert gpu.default_device() == "cpu" and gpu.decoder_for() in (gpu.TORCHVISION_CPU, gpu.PIL_CPU)
    if find_spec("torchvision") is None:
        assert gpu.decoder_for() == gpu.PIL_CPU
    with pytest.raises(RuntimeError, match="no CUDA device"):
        gpu.decode_jpegs([b""], device="cuda")
    truth = _truth(built)
    s = stream(_entries(built), decode=None, batch_size=5, seed=3)
    decoded = 0
    for images, labels in gpu.decode_batches(s.loader(num_workers=2)):
        assert isinstance(labels, torch.Tensor) and len(images) == len(labels) <= 5
        for image in images:
            assert image.device.type == "cpu" and image.dtype == torch.uint8 and image.shape[0] == 3
        decoded += len(images)
    assert decoded == len(truth)
    jpegs = [jpeg for jpeg, _, _ in truth.values()][:4]
    for jpeg, image in zip(jpegs, gpu.decode_jpegs(jpegs)):
        assert np.array_equal(image.numpy(), np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).transpose(2, 0, 1))


def test_with_cuda_a_batch_is_one_call_of_torchvision_decode_jpeg_on_the_device(monkeypatch):
    """The CUDA path, played with a stand-in for torchvision.io (this machine has no GPU)."""
    calls = []

    class Decoded:
        def __init__(self, data):
            self.data = data

        def to(self, device):
            return ("on", str(device), bytes(self.data.numpy()))

    def decode_jpeg(data, mode, device):
        calls.append((len(data), mode, str(device)))
        return [Decoded(d) for d in data]

    vision_io = types.SimpleNamespace(decode_jpeg=decode_jpeg, ImageReadMode=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(io=vision_io))
    monkeypatch.setitem(sys.modules, "torchvision.io", vision_io)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu.default_device() == "cuda" and gpu.decoder_for() == gpu.NVJPEG
    assert gpu.decode_jpegs([b"\xff\xd8one", b"\xff\xd8two"]) == [("on", "cuda", b"\xff\xd8one"),
                                                                    ("on", "cuda", b"\xff\xd8two")]
    assert calls == [(2, "RGB", "cuda")]


# --- timm ----------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_timm_trains_and_evaluates_from_the_dataset_root_with_no_other_step(built):
    """`train.py --dataset wds/imagenet --data-dir OUT`: timm's webdataset reader finds the splits in
    _info.json at OUT, and its loader gives every sample of the tars once, with the .cls label."""
    timm_data = pytest.importorskip("timm.data")
    truth = _truth(built)
    dataset = timm_data.create_dataset("wds/imagenet", root=str(built.root), split="train", is_training=False,
                                       batch_size=4)
    assert len(dataset) == len(truth) == built.manifest["splits"]["train"]["samples"]
    loader = timm_data.create_loader(dataset, input_size=(3, 64, 64), batch_size=4, is_training=False,
                                     num_workers=0, device=torch.device("cpu"), use_prefetcher=False)
    labels = collections.Counter(int(label) for _, batch in loader for label in batch)
    assert labels == collections.Counter(label for _, label, _ in truth.values())
    val = timm_data.create_dataset("wds/imagenet", root=str(built.root), split="validation", is_training=False)
    assert len(val) == built.manifest["splits"]["val"]["samples"]
