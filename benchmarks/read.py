"""The loader benchmark: how fast a build reads back into training, and how fast it answers lookups.

    python -m benchmarks.read [--images N] [--workers 1,2] [--out DIR]      (make bench-read)

It needs PyTorch (a DataLoader), so `make bench-read` runs it in the readers' venv. On the
benchmark's corpus (its train images, built by the tool with its default options):
  - the decode ceiling: the per-image work of a training loader (decode the stored JPEG, a random
    crop of 8% to 100% of its area resized to 224 x 224, as numpy uint8) in a tight loop on one
    core, over images already in memory;
  - images/s of one epoch to batches of that work, with N DataLoader workers, read three ways:
    `open_dataset(...).stream()`, plain `webdataset` over the same shards, and the same stored
    JPEGs as loose files in class folders (an ImageFolder, read through a map-style dataset with a
    shuffling sampler, as torchvision's ImageFolder is);
  - the latency of `get(key)` (p50, p99 over random keys) and of a `query` that returns 1% of the
    samples, read (p50 of several).
The targets of issue 13: the stream >= 0.9 x workers x the ceiling and ahead of the ImageFolder;
get(key) p50 under 2 ms on local disk. The results are printed and written to OUT/read.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.corpus import CorpusSpec, ensure_corpus
from benchmarks.runs import warm_page_cache
from benchmarks.settings import DEFAULT_IMAGES, DEFAULT_OUT
from pipeline.reading import open_dataset
from pipeline.versions import current_version

__all__ = ["main", "decode_crop"]

CROP = 224
BATCH = 64
SHUFFLE_BUFFER = 1000
SCALE = (0.08, 1.0)  # the share of the image's area a crop covers (torchvision's RandomResizedCrop)
RATIO = (3 / 4, 4 / 3)  # its aspect ratio


def decode_crop(jpeg: bytes, rng: Optional[random.Random] = None) -> np.ndarray:
    """The per-image work of a training loader: decode, a random crop resized to 224 x 224 (one
    PIL resize with a box does both), RGB uint8, H x W x 3."""
    uniform = rng.uniform if rng is not None else random.uniform
    image: Image.Image = Image.open(io.BytesIO(jpeg))
    image = image.convert("RGB") if image.mode != "RGB" else image
    width, height = image.size
    box = (0.0, 0.0, float(width), float(height))
    for _ in range(10):  # torchvision's RandomResizedCrop: ten tries, then the whole image
        area = width * height * uniform(*SCALE)
        ratio = np.exp(uniform(np.log(RATIO[0]), np.log(RATIO[1])))
        w, h = (area * ratio) ** 0.5, (area / ratio) ** 0.5
        if w <= width and h <= height:
            x, y = uniform(0, width - w), uniform(0, height - h)
            box = (x, y, x + w, y + h)
            break
    return np.asarray(image.resize((CROP, CROP), Image.Resampling.BILINEAR, box=box))


def _collate(items: list) -> tuple:
    return np.stack([image for image, _ in items]), np.asarray([label for _, label in items], dtype=np.int64)


class _LooseFiles(Dataset):
    """The stored JPEGs as files, one per sample: what a folder of ImageNet is to a loader."""

    def __init__(self, items: list[tuple[str, int]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        path, label = self.items[i]
        with open(path, "rb") as f:
            return decode_crop(f.read()), label


def _epoch(batches: Iterable, expected: int) -> float:
    """Images per second of one pass over a loader's batches (which must hold `expected` images)."""
    started = time.perf_counter()
    images = 0
    for batch in batches:
        images += len(batch[0])
    elapsed = time.perf_counter() - started
    if images != expected:
        raise AssertionError(f"a loader gave {images} images, expected {expected}")
    return images / elapsed


def _ceiling(jpegs: list[bytes], repeats: int = 3) -> float:
    """decode_crop's images per second on one core (best of `repeats` passes)."""
    rng = random.Random(0)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for jpeg in jpegs:
            decode_crop(jpeg, rng)
        best = max(best, len(jpegs) / (time.perf_counter() - started))
    return best


def _loose_files(ds, folder: str) -> list[tuple[str, int]]:
    """The split's stored JPEGs written once as <folder>/<wnid>/<key>.jpg; (path, label) per sample."""
    items = []
    table = ds.index().select(["key", "wnid", "label"]).to_pylist()
    fresh = not os.path.exists(os.path.join(folder, ".complete"))
    samples = ds.read_rows(ds.index()) if fresh else iter(())
    for row in table:
        path = os.path.join(folder, row["wnid"], row["key"] + ".jpg")
        if fresh:
            sample = next(samples)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(sample.jpeg)
        items.append((path, row["label"]))
    open(os.path.join(folder, ".complete"), "w").close()
    return items


def _latencies(call: Callable[[], object], times: int) -> tuple[float, float]:
    """p50 and p99 of a call, in milliseconds."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        spent.append((time.perf_counter() - started) * 1000)
    spent.sort()
    return statistics.median(spent), spent[min(len(spent) - 1, int(0.99 * len(spent)))]


def _build(corpus: str, out: str, say) -> None:
    """The corpus built with the tool's defaults (a no-op when the build is up to date)."""
    say(f"building {corpus} -> {out}")
    subprocess.run([sys.executable, "-m", "pipeline", "build", corpus, "--out", out, "--shard-size", "40MB"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(images: int, workers: list[int], work: str, say=print) -> dict:
    corpus, _ = ensure_corpus(CorpusSpec.for_images(images), os.path.join(work, "corpus"), say=say)
    out = os.path.join(work, "read-shards")
    _build(corpus, out, say)
    ds = open_dataset(out, "train")
    samples = len(ds)
    version = current_version(out)
    # One folder of loose files for each version read (a corpus of another size is another version).
    loose_folder = os.path.join(work, "read-loose", os.path.basename(version.rstrip("/")))
    loose = _loose_files(ds, loose_folder)
    warm_page_cache(version)
    warm_page_cache(loose_folder)
    say(f"{samples:,} train samples in {len(ds.shards)} shards ({ds.bytes / samples / 1000:.0f} KB per stored JPEG)")

    jpegs = [s.jpeg for s in ds.read_rows(ds.index().slice(0, min(samples, 600)))]
    ceiling = _ceiling(jpegs)
    say(f"decode ceiling (decode + random crop to {CROP}x{CROP}, one core): {ceiling:,.0f} images/s")

    result: dict = {"samples": samples, "ceiling_per_core": round(ceiling, 1), "loaders": {}}
    urls = [shard.url for shard in ds.shards]
    for n in workers:
        stream = ds.stream(decode=None, transform=decode_crop, batch_size=BATCH, shuffle_buffer=SHUFFLE_BUFFER)
        plain = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False)
                 .shuffle(SHUFFLE_BUFFER).map(lambda s: (decode_crop(s["jpg"]), int(s["cls"])))
                 .batched(BATCH, collation_fn=_collate, partial=True))
        loaders = {
            "stream": stream.loader(num_workers=n),
            "webdataset": DataLoader(plain, batch_size=None, num_workers=n),
            "imagefolder": DataLoader(_LooseFiles(loose), batch_size=BATCH, shuffle=True, num_workers=n,
                                      collate_fn=_collate),
        }
        rates = {}
        for name, loader in loaders.items():
            rates[name] = max(_epoch(loader, samples) for _ in range(2))  # the first pass starts the workers
        ratio = rates["stream"] / (n * ceiling)
        result["loaders"][str(n)] = {**{k: round(v, 1) for k, v in rates.items()},
                                    "stream_over_workers_x_ceiling": round(ratio, 3)}
        say(f"{n} worker(s): stream {rates['stream']:,.0f} images/s ({ratio:.2f} x workers x ceiling; target >= 0.9), "
            f"webdataset {rates['webdataset']:,.0f}, ImageFolder {rates['imagefolder']:,.0f}")

    keys = ds.index().column("key").to_pylist()
    rng = random.Random(1)
    started = time.perf_counter()
    ds.get(keys[0])
    first = (time.perf_counter() - started) * 1000
    p50, p99 = _latencies(lambda: ds.get(rng.choice(keys)), 1000)
    result["get_ms"] = {"first": round(first, 2), "p50": round(p50, 3), "p99": round(p99, 3)}
    say(f"get(key): p50 {p50:.3f} ms, p99 {p99:.3f} ms (target p50 < 2 ms); the first call {first:.1f} ms "
        "(it builds the key table)")

    sql = "SELECT key FROM index WHERE hash(key) % 100 = 0"  # about 1% of the samples

    def one_percent() -> int:
        return sum(1 for _ in ds.query(sql=sql))

    matched = one_percent()
    q50, _ = _latencies(one_percent, 5)
    result["query_1pct"] = {"samples": matched, "p50_ms": round(q50, 1)}
    say(f"query returning {matched} samples ({matched / samples:.1%}), read: p50 {q50:.1f} ms")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"train images of the corpus (default {DEFAULT_IMAGES}, the benchmark's corpus)")
    parser.add_argument("--workers", default="1,2", help="DataLoader worker counts, comma-separated (default 1,2)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"work folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the main process only moves batches; the workers decode
    os.makedirs(args.out, exist_ok=True)
    result = run(args.images, [int(n) for n in args.workers.split(",")], os.path.abspath(args.out))
    with open(os.path.join(args.out, "read.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
