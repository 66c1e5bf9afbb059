"""The scale benchmark's generator (benchmarks/scale.py): tiny JPEGs that are valid, unique, kept byte
for byte by the kernel and far apart in perceptual hash, in an official-layout release."""
import hashlib
import os
import tarfile

import numpy as np

from benchmarks.procmem import MemoryPeak
from benchmarks.scale import (
    IMAGENET_MEAN_JPEG_BYTES,
    ScaleCorpus,
    ScaleRun,
    _sets_shard_size,
    ensure_scale_corpus,
    imagenet_granularity,
    slopes,
    tiny_jpeg,
)
from pipeline.sample import DEVKIT_TAR, TRAIN_TAR, VAL_TAR
from transforms.image import ImageOptions, process_image
from transforms.near_duplicates import popcount64
from transforms.phash import from_int64, to_int64


def test_tiny_jpegs_are_valid_unique_kept_and_hash_apart():
    options = ImageOptions()
    images = [tiny_jpeg(i) for i in range(2000)]
    assert len({hashlib.sha256(data).digest() for data in images}) == len(images)
    processed = [process_image(data, options) for data in images]
    assert all(not p.reencoded and p.jpeg == data and (p.width, p.height) == (64, 64)
               for p, data in zip(processed, images))
    hashes = np.array([from_int64(to_int64(p.phash)) for p in processed], dtype=np.uint64)
    assert len(set(hashes.tolist())) == len(images)
    distances = popcount64(hashes[:-1] ^ hashes[1:])
    assert distances.min() > 8 and 28 <= distances.mean() <= 36  # as photos' hashes are apart


def test_corpus_has_the_official_layout_and_is_kept(tmp_path):
    spec = ScaleCorpus(3000, classes=10)
    folder = ensure_scale_corpus(spec, str(tmp_path), processes=1, say=lambda *_: None)
    assert sorted(os.listdir(folder)) == sorted([DEVKIT_TAR, TRAIN_TAR, VAL_TAR, "corpus.json"])
    with tarfile.open(os.path.join(folder, TRAIN_TAR)) as outer:
        classes = outer.getmembers()
        assert len(classes) == 10 and all(m.name.endswith(".tar") for m in classes)
        counts = [len(tarfile.open(fileobj=outer.extractfile(m)).getmembers()) for m in classes]
    with tarfile.open(os.path.join(folder, VAL_TAR)) as val:
        assert len(val.getmembers()) == spec.val == 60
    assert sum(counts) == spec.train == 2940
    before = os.path.getmtime(os.path.join(folder, TRAIN_TAR))
    assert ensure_scale_corpus(spec, str(tmp_path), say=lambda *_: None) == folder  # reused, not written again
    assert os.path.getmtime(os.path.join(folder, TRAIN_TAR)) == before


def test_slopes_project_to_imagenet_21k():
    small = ScaleRun(200_000, 0, 20.0, 40.0, MemoryPeak(tree_rss=1000 << 20, process_rss=400 << 20), "")
    big = ScaleRun(1_000_000, 0, 100.0, 200.0, MemoryPeak(tree_rss=1400 << 20, process_rss=600 << 20), "")
    step = slopes(small, big)
    assert step["tree_kb"] == round((400 << 20) / 800_000 / 1000, 3)
    assert step["marginal_samples_per_s"] == 10_000
    assert step["projected_21k_hours"] == round((100 + (14_197_122 - 1_000_000) / 10_000) / 3600, 2)


def test_shard_size_gives_imagenets_samples_a_shard():
    g = imagenet_granularity()
    assert g.default_shard_size == 512_000_000
    assert g.imagenet_sample_bytes > IMAGENET_MEAN_JPEG_BYTES
    assert g.samples_per_shard == g.default_shard_size // g.imagenet_sample_bytes
    assert 4_000 <= g.samples_per_shard <= 5_000  # ImageNet: ~110 KB images in 512 MB shards
    mean = np.mean([len(tiny_jpeg(i)) for i in range(0, 10**6, 501)])
    assert abs(g.tiny_sample_bytes - g.imagenet_sample_bytes + IMAGENET_MEAN_JPEG_BYTES - mean) < 5
    assert g.shard_size == g.samples_per_shard * g.tiny_sample_bytes
    assert _sets_shard_size(["--shard-size", "20MB"]) and _sets_shard_size(["--shard-size=20MB"])
    assert not _sets_shard_size(["--seed", "1"])
