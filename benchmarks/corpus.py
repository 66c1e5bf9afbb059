"""The benchmark's corpus: a release in the official layout whose images look like ImageNet's to the code.

The layout is pipeline.sample's (its choice of classes and validation images, so that the real ground
truth applies; its names, tar headers and devkit); only the photos are made here. They follow
ImageNet's size mix and have ImageNet's bytes (about 110 KB per file): crops of the bundled photos with
film grain added, saved as baseline 4:2:0 JPEG at a quality of 85 to 95. The grain matters: it is what
makes decoding and encoding cost what they cost on real photos.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import multiprocessing
import os
import random
import shutil
import statistics
import tarfile
import time
from typing import Optional

import numpy as np
from PIL import Image

from pipeline.options import cpu_count
from pipeline.sample import (
    DEVKIT_TAR,
    TRAIN_TAR,
    VAL_TAR,
    Member,
    PhotoMaker,
    Planner,
    choose_classes_and_val,
    devkit_bytes,
    read_member,
    tar_bytes,
    tar_info,
    write_tar,
)
from transforms.keys import val_key
from transforms.storage import atomic_write

__all__ = ["GENERATOR_VERSION", "CorpusSpec", "draw_size", "make_photo", "ensure_corpus", "SourceImage", "load_images",
           "spread_sample"]

# Bump it when the images or the layout the generator writes change: the cache key includes it.
GENERATOR_VERSION = 1
# The film grain (a standard deviation, in 8-bit levels) drawn per image: with a quality of 85 to 95 it
# gives ImageNet's mean file size of about 110 KB over the size mix below.
GRAIN_SIGMA = (8.0, 14.0)
CHROMA_GRAIN = 0.35  # the colour noise, relative to the luma grain

# ImageNet's size mix, as (fraction, size or kind). "500" means a longer side of 500 at a random aspect.
_SIZE_MIX = (
    (0.34, (500, 375)),
    (0.14, (500, 333)),
    (0.12, (375, 500)),
    (0.05, (333, 500)),
    (0.05, (500, 400)),
    (0.02, (400, 500)),
    (0.04, (500, 500)),
    (0.08, "500"),
    (0.08, "small"),  # a longer side of 120 to 400
    (0.04, "medium"),  # a longer side of 600 to 1000
    (0.04, "large"),  # over 1,000 px: camera sizes
)
_LARGE = ((1024, 768), (1280, 960), (1600, 1200), (2048, 1536), (2592, 1944), (1200, 1600), (1536, 2048))


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """The size of a corpus: its train and val images, its classes and its seed."""

    train: int
    val: int
    classes: int
    seed: int = 0

    @classmethod
    def for_images(cls, train: int, seed: int = 0) -> CorpusSpec:
        """N train images in N/100 classes (2..1000), and N/10 val images."""
        classes = min(1000, max(2, train // 100))
        return cls(train, max(2, round(train / 10)), classes, seed)

    @property
    def key(self) -> str:
        return f"train{self.train}-val{self.val}-classes{self.classes}-seed{self.seed}-gen{GENERATOR_VERSION}"

    @property
    def images(self) -> int:
        return self.train + self.val


def draw_size(rng: random.Random) -> tuple[int, int]:
    """One (width, height) from ImageNet's size mix."""
    kind = rng.choices([k for _, k in _SIZE_MIX], [w for w, _ in _SIZE_MIX])[0]
    if isinstance(kind, tuple):
        return kind
    if kind == "large":
        return rng.choice(_LARGE)
    longer = {"500": 500, "small": rng.randint(120, 400), "medium": rng.randint(600, 1000)}[kind]
    shorter = max(1, round(longer / rng.uniform(1.0, 1.8)))
    return (longer, shorter) if rng.random() < 0.7 else (shorter, longer)


def make_photo(seed: str) -> bytes:
    """A JPEG like ImageNet's: a random crop of a bundled photo at an ImageNet size, with grain,
    baseline 4:2:0 at a quality of 85 to 95. It is a pure function of `seed`."""
    rng = random.Random(seed)
    im, _source = PhotoMaker(rng).image(draw_size(rng))
    noise = np.random.default_rng(rng.getrandbits(64))
    sigma = rng.uniform(*GRAIN_SIGMA)
    pixels = np.asarray(im, dtype=np.float32)
    h, w, _ = pixels.shape
    pixels += noise.standard_normal((h, w, 1), dtype=np.float32) * sigma
    pixels += noise.standard_normal((h, w, 3), dtype=np.float32) * (sigma * CHROMA_GRAIN)
    grainy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    grainy.save(buf, "JPEG", quality=rng.randint(85, 95), subsampling=2)
    return buf.getvalue()


def _photo_job(seed: str) -> tuple[bytes, tuple[int, int]]:
    data = make_photo(seed)
    with Image.open(io.BytesIO(data)) as im:
        return data, im.size


def _corpus_stats(sizes: list[tuple[int, int]], lengths: list[int]) -> dict:
    n = len(lengths)
    longer = [max(s) for s in sizes]
    return {
        "images": n,
        "bytes": sum(lengths),
        "mean_bytes": round(sum(lengths) / n),
        "median_bytes": round(statistics.median(lengths)),
        "mean_pixels": round(sum(w * h for w, h in sizes) / n),
        "share_longer_450_520": round(sum(450 <= s <= 520 for s in longer) / n, 4),
        "share_small_under_400": round(sum(s < 400 for s in longer) / n, 4),
        "share_over_1000": round(sum(s > 1000 for s in longer) / n, 4),
        "share_portrait": round(sum(h > w for w, h in sizes) / n, 4),
    }


def _write_corpus(spec: CorpusSpec, dest: str, processes: int) -> dict:
    """Write the three archives of `spec` under `dest`; return the corpus statistics."""
    wnids, val_slots = choose_classes_and_val(spec.classes, spec.val)
    classes = sorted(wnids)
    planner = Planner(spec.seed)
    per_class = [spec.train // spec.classes + (i < spec.train % spec.classes) for i in range(spec.classes)]
    seeds = [f"bench/{spec.seed}/train/{i}" for i in range(spec.train)]
    seeds += [f"bench/{spec.seed}/val/{i}" for i in range(spec.val)]
    sizes, lengths = [], []
    with multiprocessing.Pool(processes) as pool:
        photos = pool.imap(_photo_job, seeds, chunksize=4)

        def take(count: int) -> list[bytes]:
            out = []
            for data, size in itertools.islice(photos, count):
                out.append(data)
                sizes.append(size)
                lengths.append(len(data))
            return out

        with (atomic_write(os.path.join(dest, TRAIN_TAR)) as f,
              tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as outer):
            for wnid, count in zip(classes, per_class):
                names = [planner.train_name(wnid) for _ in range(count)]
                members = [Member(name, name[:-5], "photo", data) for name, data in zip(names, take(count))]
                inner = tar_bytes(members)
                outer.addfile(tar_info(f"{wnid}.tar", len(inner)), io.BytesIO(inner))
        val = [Member(f"{val_key(slot.index)}.JPEG", "", "photo", data)
               for slot, data in zip(val_slots, take(spec.val))]
    random.Random(f"bench/{spec.seed}/val-order").shuffle(val)  # The real val tar is not sorted.
    with atomic_write(os.path.join(dest, VAL_TAR)) as f:
        write_tar(f, val)
    devkit = devkit_bytes(classes)
    with atomic_write(os.path.join(dest, DEVKIT_TAR)) as f:
        f.write(devkit)
    return _corpus_stats(sizes, lengths)


def ensure_corpus(spec: CorpusSpec, cache_root: str, processes: Optional[int] = None, say=print) -> tuple[str, dict]:
    """The corpus folder for `spec` (written once, then reused) and its statistics."""
    root = os.path.join(cache_root, spec.key)
    marker = os.path.join(root, "corpus.json")
    if os.path.exists(marker):
        with open(marker) as f:
            return root, json.load(f)["stats"]
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    say(f"writing corpus {spec.key} ({spec.images} images) to {root} ...")
    started = time.perf_counter()
    stats = _write_corpus(spec, root, processes or cpu_count())
    with open(marker, "w") as f:
        json.dump({"spec": dataclasses.asdict(spec), "stats": stats}, f, indent=1)
    say(f"  done in {time.perf_counter() - started:.1f} s")
    return root, stats


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """An image of the corpus: its key, its bytes, and the tar they are in and where."""

    key: str
    data: bytes
    archive: str
    offset: int


def load_images(corpus_root: str) -> list[SourceImage]:
    """Every image of the corpus (train, then val), its bytes in memory, with its place in the archives."""
    images = []
    train = os.path.join(corpus_root, TRAIN_TAR)
    with tarfile.open(train) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for m in inner:
                    data = read_member(inner, m)
                    images.append(SourceImage(m.name[:-5], data, train, member.offset_data + m.offset_data))
    val = os.path.join(corpus_root, VAL_TAR)
    with tarfile.open(val) as tar:
        for m in tar:
            images.append(SourceImage(m.name[:-5], read_member(tar, m), val, m.offset_data))
    return images


def spread_sample(items: list, count: int) -> list:
    """`count` items spread evenly over `items` (all of them when count >= len(items))."""
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]
