"""The near-duplicate search at scale, and the perceptual hash's cost beside the image kernel.

    python -m benchmarks.near_duplicates_bench [--samples 1000000] [--max-distance 8] [--planted 1000]
                                               [--kind phash|uniform] [--phash-images 200]
                                               [--phash-callgrind 0] [--json FILE]

1. The search (transforms.near_duplicates.search_indices, every bucket on its own as a Beam
   wiring would run it) over random hashes with planted close pairs: the wall time, the pairs
   found (the planted ones, and those that random hashes make by chance, against the number a
   model predicts), the pairs compared, the buckets, and the search's memory: the search runs
   alone in a fresh process (_SEARCH_CHILD), whose peak RSS less what it held before the
   search is the search's. "phash" hashes are what transforms.phash makes: 31 bits
   set among bits 62 to 0 (so distances are even); "uniform" ones are any 64-bit values.
   What a Beam wiring would need is measured on the same hashes: the shuffle, bands_for(d)
   records a sample, each a (key, split, phash) entry, pickled by records.to_shuffle in one
   batch per shard and bucket (shards of 1,000 samples, ImageNet-like keys); and one worker's
   time and memory (tracemalloc) for the largest bucket of band 1, through pairs_in_bucket.
   The wiring the build uses (transforms/near_duplicate_search.py) is measured too: one index
   file a shard (its key and phash columns, as the build writes them), all of them read by one
   worker, which runs search_batches (the keys sorted, the search, each sample's nearest other):
   the files' bytes a sample, and the worker's time and memory in a fresh process
   (_GATHERED_CHILD), from the files' places to the pairs and the links.
2. The hash's cost: transforms.image.process_image on ImageNet-like photos (benchmarks.corpus
   make_photo) against phash_of on the pixels that the kernel has at hand: the 1/8 luma decode
   that validates a JPEG kept byte for byte, or the stored pixels of a re-encoded image. Each
   figure is an image's best of several passes, interleaved so that load hits both alike. Inside
   the kernel, right after a decode, the hash costs more than in this loop (its code and data are
   no longer in the caches): the "in_kernel" figures are process_image with and without the hash.
3. With --phash-callgrind N: the same, counted rather than timed (wall time on a shared machine
   varies by more than the hash costs), under valgrind's callgrind with its cache simulation, on
   the first N photos: the instructions of process_image and of the phash_of calls inside it, per
   image and by path, and the simulated L1 misses (instruction and data) of each. The kernel is
   called through map and the hash through functools.reduce, so that --toggle-collect on their
   C functions (map_next, functools_reduce: CPython's own symbols) counts each alone, after a
   first pass over the photos that is not counted (imports, caches). The L1 misses show what the
   timings cannot: right after a decode, the hash's code is no longer in the instruction cache.
   "est_cycles" is callgrind's usual estimate, Ir + 10 x (L1 misses) + 100 x (last-level misses).

Long on purpose: one benchmark of one feature, the near-duplicates, with the small scripts that
its measurements run in fresh processes (the search's memory, the build's wiring, the counted
kernel): apart, each would be a module of a few dozen lines that only this one calls.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import transforms.image as image_kernel
from benchmarks.corpus import make_photo
from transforms.image import ImageOptions, process_image
from transforms.near_duplicates import (
    DEFAULT_MAX_DISTANCE,
    band_keys,
    band_values,
    bands_for,
    pairs_in_bucket,
)
from transforms.phash import phash_of
from transforms.records import to_shuffle

__all__ = ["random_hashes", "plant_pairs", "chance_pairs", "shuffle_bytes_per_sample", "time_search", "largest_bucket",
           "time_gathered_search", "time_phash", "time_phash_in_kernel", "count_phash_in_kernel", "main"]

_PHASH_WEIGHT = 31  # bits set in a hash of transforms.phash (the coefficients above the median of 63)
_PHASH_BITS = 63  # bits 62..0; bit 63 is always 0
_CHUNK = 100_000  # hashes drawn at a time, to keep the generator's memory small
_SHARD_SAMPLES = 1000


def random_hashes(count: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`count` random hashes (uint64): "phash" ones (31 of bits 62..0 set) or "uniform" ones."""
    if kind == "uniform":
        return rng.integers(0, 2**64 - 1, size=count, dtype=np.uint64, endpoint=True)
    weights = np.uint64(1) << np.arange(_PHASH_BITS, dtype=np.uint64)
    parts = []
    for start in range(0, count, _CHUNK):
        rows = min(_CHUNK, count - start)
        chosen = np.argpartition(rng.random((rows, _PHASH_BITS), dtype=np.float32), _PHASH_WEIGHT, axis=1)
        parts.append(np.bitwise_or.reduce(weights[chosen[:, :_PHASH_WEIGHT]], axis=1))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)


def plant_pairs(hashes: np.ndarray, count: int, max_distance: int, kind: str,
                rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Overwrite hashes[j] with a copy of hashes[i] at a distance of 0..max_distance (phash
    hashes keep their 31 bits: a bit set is swapped with one clear, so the distance is even),
    for `count` disjoint (i, j). Returns the planted (i, j, distance), i < j."""
    picked = rng.choice(len(hashes), size=2 * count, replace=False)
    planted = []
    for i, j in zip(picked[:count].tolist(), picked[count:].tolist()):
        value = int(hashes[i])
        if kind == "uniform":
            flips = rng.choice(64, size=int(rng.integers(0, max_distance + 1)), replace=False).tolist()
        else:
            ones = [b for b in range(_PHASH_BITS) if value >> b & 1]
            zeros = [b for b in range(_PHASH_BITS) if not value >> b & 1]
            swaps = int(rng.integers(0, max_distance // 2 + 1))
            flips = (rng.choice(ones, size=swaps, replace=False).tolist()
                     + rng.choice(zeros, size=swaps, replace=False).tolist())
        for bit in flips:
            value ^= 1 << int(bit)
        hashes[j] = np.uint64(value)
        planted.append((min(i, j), max(i, j), len(flips)))
    return planted


def chance_pairs(count: int, max_distance: int, kind: str) -> float:
    """The expected number of pairs within max_distance among `count` independent random hashes."""
    if kind == "uniform":
        p = sum(math.comb(64, k) for k in range(max_distance + 1)) / 2**64
    else:  # distance 2x, x ~ hypergeometric: of one hash's 31 bits, x fall among the other's 32 clear
        p = sum(math.comb(_PHASH_BITS - _PHASH_WEIGHT, x) * math.comb(_PHASH_WEIGHT, _PHASH_WEIGHT - x)
                for x in range(max_distance // 2 + 1)) / math.comb(_PHASH_BITS, _PHASH_WEIGHT)
    return p * count * (count - 1) / 2


def shuffle_bytes_per_sample(hashes: np.ndarray, max_distance: int, samples: int = 20 * _SHARD_SAMPLES) -> float:
    """The bytes a Beam wiring would shuffle per sample: one (key, split, phash) entry per band,
    batched per shard and bucket (band_index, band_value) and pickled by records.to_shuffle."""
    bands = bands_for(max_distance)
    total = 0
    count = min(samples, len(hashes))
    for shard_start in range(0, count, _SHARD_SAMPLES):
        batches = collections.defaultdict(list)
        for n in range(shard_start, min(shard_start + _SHARD_SAMPLES, count)):
            phash = int(hashes[n])
            key = f"n{n % 1000 + 1440764:08d}_{n}"  # as ImageNet's train keys: n01440764_10026
            for bucket in band_keys(phash, bands):
                batches[bucket].append((key, "train", phash))
        total += sum(len(to_shuffle(tuple(entries))) + len(to_shuffle(bucket)) for bucket, entries in batches.items())
    return total / count if count else 0.0


def time_search(samples: int, max_distance: int, planted_count: int, kind: str, seed: int) -> dict:
    """Part 1 of the module docstring: the figures of one search."""
    rng = np.random.default_rng(seed)
    hashes = random_hashes(samples, kind, rng)
    planted = plant_pairs(hashes, planted_count, max_distance, kind, rng)
    shuffle = shuffle_bytes_per_sample(hashes, max_distance)
    bucket = largest_bucket(hashes, max_distance)
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "hashes.npy"), hashes)
        del hashes  # the search runs in a fresh process, whose memory is then the search's alone
        child = subprocess.run([sys.executable, "-c", _SEARCH_CHILD, folder, str(max_distance)], check=True,
                               capture_output=True, text=True)
        run = json.loads(child.stdout.strip().splitlines()[-1])
        found = np.load(os.path.join(folder, "found.npz"))
        pairs = set(zip(found["first"].tolist(), found["second"].tolist()))
    planted_found = sum((i, j) in pairs for i, j, _ in planted)
    return {
        "samples": samples, "kind": kind, "max_distance": max_distance, "bands": bands_for(max_distance),
        "seconds": run["seconds"], "cpu_seconds": run["cpu_seconds"], "pairs_found": len(pairs),
        "planted": len(planted),
        "planted_found": planted_found, "chance_pairs_found": len(pairs) - planted_found,
        "chance_pairs_expected": round(chance_pairs(samples, max_distance, kind), 1),
        "pairs_compared": run["compared"], "all_pairs": samples * (samples - 1) // 2,
        "buckets_searched": run["buckets"], "largest_bucket": run["largest_bucket"],
        "rss_before_search_mb": run["rss_before_mb"], "peak_rss_mb": run["peak_rss_mb"],
        "search_peak_mb": round(run["peak_rss_mb"] - run["rss_before_mb"], 1),
        "search_bytes_per_sample": round((run["peak_rss_mb"] - run["rss_before_mb"]) * 2**20 / samples, 1),
        "shuffle_bytes_per_sample": round(shuffle, 1), **bucket,
    }


# The search alone in a fresh process that imports nothing but numpy and the search (argv: the
# folder, the threshold): the hashes from the folder, the pairs written back to it, the figures
# printed as a JSON line. The memory is the process's high-water mark (VmHWM; ru_maxrss would
# carry the parent's over the exec) before the search (imports, the hashes) and after it.
_SEARCH_CHILD = """
import json, os, sys, time
import numpy as np
from transforms.near_duplicates import search_indices

def high_water():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

folder, max_distance = sys.argv[1], int(sys.argv[2])
hashes = np.load(os.path.join(folder, "hashes.npy"))
buckets = []
before = high_water()
started, cpu = time.perf_counter(), time.process_time()
found = search_indices(hashes, max_distance, on_bucket=buckets.append)
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
peak = high_water()
np.savez(os.path.join(folder, "found.npz"), first=found.first, second=found.second)
print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "compared": found.compared,
                  "buckets": len(buckets), "largest_bucket": max(buckets, default=0),
                  "rss_before_mb": round(before / 2**20, 1), "peak_rss_mb": round(peak / 2**20, 1)}))
"""


def _key(n: int) -> str:
    return f"n{n % 1000 + 1440764:08d}_{n}"  # as ImageNet's train keys: n01440764_10026


def time_gathered_search(samples: int, max_distance: int, kind: str, seed: int) -> dict:
    """The build's wiring: one index file a shard of _SHARD_SAMPLES (train keys; only the key and
    phash columns, which the search reads), their bytes a sample, and search_batches over them in
    a fresh process."""
    rng = np.random.default_rng(seed)
    hashes = random_hashes(samples, kind, rng)
    plant_pairs(hashes, min(1000, samples // 2), max_distance, kind, rng)
    with tempfile.TemporaryDirectory() as folder:
        files = 0
        for shard_id, start in enumerate(range(0, samples, _SHARD_SAMPLES)):
            part = hashes[start:start + _SHARD_SAMPLES]
            table = pa.table({"key": [_key(n) for n in range(start, start + len(part))],
                              "phash": part.astype(np.uint64).view(np.int64)})
            path = os.path.join(folder, f"train-{shard_id:06d}.parquet")
            pq.write_table(table, path, compression="zstd")
            files += os.path.getsize(path)
        del hashes
        child = subprocess.run([sys.executable, "-c", _GATHERED_CHILD, folder, str(max_distance)], check=True,
                               capture_output=True, text=True)
    run = json.loads(child.stdout.strip().splitlines()[-1])
    return {"samples": samples, "kind": kind, "max_distance": max_distance,
            "index_bytes_per_sample": round(files / samples, 1), "seconds": run["seconds"],
            "cpu_seconds": run["cpu_seconds"], "pairs": run["pairs"], "flagged": run["flagged"],
            "rss_before_search_mb": run["rss_before_mb"], "peak_rss_mb": run["peak_rss_mb"],
            "search_peak_mb": round(run["peak_rss_mb"] - run["rss_before_mb"], 1),
            "search_bytes_per_sample": round((run["peak_rss_mb"] - run["rss_before_mb"]) * 2**20 / samples, 1),
            "index_mb": round(files / 2**20, 1)}


# The build's search alone in a fresh process (argv: the folder, the threshold): the index files
# read one after the other by search_batches, as the build's worker reads them; the figures as a
# JSON line.
_GATHERED_CHILD = """
import json, os, sys, time
from transforms.near_duplicate_search import read_shard_hashes, search_batches

def high_water():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

folder, max_distance = sys.argv[1], int(sys.argv[2])
names = sorted(os.listdir(folder))
before = high_water()
started, cpu = time.perf_counter(), time.process_time()
found = search_batches((read_shard_hashes(os.path.join(folder, name), "train", shard_id)
                        for shard_id, name in enumerate(names)), max_distance)
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
peak = high_water()
print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "pairs": len(found.columns["key_a"]),
                  "flagged": sum(len(links) for links in found.links.values()),
                  "rss_before_mb": round(before / 2**20, 1), "peak_rss_mb": round(peak / 2**20, 1)}))
"""


def largest_bucket(hashes: np.ndarray, max_distance: int) -> dict:
    """What a Beam worker holds and spends on the largest bucket of band 1: pairs_in_bucket on its
    (key, split, phash) entries, timed, and its peak memory (tracemalloc) per entry."""
    bands = bands_for(max_distance)
    values = band_values(hashes, 1, bands)
    common = np.bincount(values.astype(np.int64)).argmax()
    positions = np.flatnonzero(values == common)
    entries = [(f"n{n % 1000 + 1440764:08d}_{n}", "train", int(hashes[n])) for n in positions.tolist()]
    started = time.perf_counter()
    pairs_in_bucket(entries, max_distance, band_index=1)
    seconds = time.perf_counter() - started
    tracemalloc.start()  # apart from the timing: it slows numpy's allocations several times over
    pairs_in_bucket(entries, max_distance, band_index=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"bucket_entries": len(entries), "bucket_seconds": round(seconds, 3),
            "bucket_peak_bytes_per_entry": round(peak / len(entries), 1)}


def _best(fn, arg, passes: int) -> float:
    best = math.inf
    for _ in range(passes):
        started = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - started)
    return best


def time_phash(images: int, passes: int = 5) -> dict:
    """Part 2 of the module docstring: the kernel's and the hash's time per image, by path."""
    options = ImageOptions()
    by_path: dict = {"kept": [], "reencoded": []}
    for n in range(images):
        data = make_photo(f"near-duplicates-{n}")
        result = process_image(data, options)
        kernel = _best(lambda d: process_image(d, options), data, passes)
        im = Image.open(io.BytesIO(data))
        if result.reencoded:
            im.load()
            pixels = im.convert("RGB")
            if pixels.size != (result.width, result.height):
                pixels = pixels.resize((result.width, result.height), Image.Resampling.LANCZOS)
            cost = _best(phash_of, pixels, passes)
        else:  # the kernel's validation decode: luma at 1/8 scale
            width, height = im.size
            im.draft("L", (max(1, width // 8), max(1, height // 8)))
            im.load()
            cost = _best(lambda p: phash_of(p, reduced_by=8), im, passes)
        by_path["reencoded" if result.reencoded else "kept"].append((kernel, cost))
    out = {}
    for path, rows in [*by_path.items(), ("all", by_path["kept"] + by_path["reencoded"])]:
        if rows:
            kernel_us = 1e6 * sum(k for k, _ in rows) / len(rows)
            phash_us = 1e6 * sum(c for _, c in rows) / len(rows)
            out[path] = {"images": len(rows), "kernel_us": round(kernel_us, 1), "phash_us": round(phash_us, 1),
                         "phash_share_percent": round(100 * phash_us / kernel_us, 2)}
    return out


def _no_hash(pixels, reduced_by: int = 1) -> int:
    return 0


def time_phash_in_kernel(images: int, passes: int = 7) -> dict:
    """The hash's cost inside the kernel: process_image as the build runs it, and with phash_of
    replaced by a function that returns 0, each image through both in turn (which goes first
    alternates from pass to pass: the first runs slower); each figure an image's best of `passes`."""
    options = ImageOptions()
    datas = [make_photo(f"near-duplicates-{n}") for n in range(images)]
    kept = [not process_image(d, options).reencoded for d in datas]
    best = {(name, n): math.inf for name in ("with", "without") for n in range(images)}
    real = image_kernel.phash_of
    try:
        for done in range(passes):
            turns = (("with", real), ("without", _no_hash))
            for n, data in enumerate(datas):
                for name, fn in turns[::-1] if done % 2 else turns:
                    image_kernel.phash_of = fn
                    started = time.perf_counter()
                    process_image(data, options)
                    best[name, n] = min(best[name, n], time.perf_counter() - started)
    finally:
        image_kernel.phash_of = real
    out = {}
    for path, chosen in (("kept", [n for n in range(images) if kept[n]]),
                         ("reencoded", [n for n in range(images) if not kept[n]]), ("all", list(range(images)))):
        if chosen:
            with_us = 1e6 * sum(best["with", n] for n in chosen) / len(chosen)
            without_us = 1e6 * sum(best["without", n] for n in chosen) / len(chosen)
            out[path] = {"images": len(chosen), "kernel_us": round(with_us, 1),
                         "phash_us": round(with_us - without_us, 1),
                         "phash_share_percent": round(100 * (with_us - without_us) / with_us, 2)}
    return out



# The counted run (argv: a pickle of the photos' bytes). Nothing is counted before the calls that
# valgrind's --toggle-collect names: map_next (each process_image) or functools_reduce (each hash).
_CALLGRIND_CHILD = """
import functools, pickle, sys
import transforms.image as image_kernel
from transforms.image import ImageOptions, process_image

with open(sys.argv[1], "rb") as f:
    datas = pickle.load(f)
options = ImageOptions()
for data in datas:  # every import made and every size's projections cached before the count
    process_image(data, options)
real = image_kernel.phash_of

def hashed(pixels, reduced_by=1):
    return functools.reduce(lambda _, p: real(p, reduced_by), (pixels,), None)

image_kernel.phash_of = hashed
list(map(lambda data: process_image(data, options), datas))
"""
_CALLGRIND_TOGGLES = {"kernel": "map_next", "phash": "functools_reduce"}


def _callgrind_counts(photos: str, toggle: str, folder: str) -> dict:
    """The event totals of one run of _CALLGRIND_CHILD under callgrind, counting only inside `toggle`."""
    out = os.path.join(folder, f"callgrind.{toggle}")
    subprocess.run(["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--toggle-collect={toggle}",
                    f"--callgrind-out-file={out}", sys.executable, "-c", _CALLGRIND_CHILD, photos], check=True,
                   capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    fields: dict = {}
    with open(out) as f:
        for line in f:
            if line.startswith(("events:", "summary:")):
                fields[line.split(":")[0]] = line.split(":", 1)[1].split()
    return dict(zip(fields["events"], map(int, fields["summary"])))


def count_phash_in_kernel(images: int) -> dict:
    """Part 3 of the module docstring: per image, the kernel's and the hash's instructions (Ir), L1
    misses (instruction, data) and estimated cycles under callgrind, by path, and the hash's shares."""
    options = ImageOptions()
    datas = [make_photo(f"near-duplicates-{n}") for n in range(images)]
    by_path = {"kept": [d for d in datas if not process_image(d, options).reencoded]}
    by_path["reencoded"] = [d for d in datas if process_image(d, options).reencoded]
    counts: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for path, chosen in by_path.items():
            if chosen:
                photos = os.path.join(folder, f"{path}.pkl")
                with open(photos, "wb") as f:
                    pickle.dump(chosen, f)
                counts[path] = {what: _callgrind_counts(photos, toggle, folder)
                                for what, toggle in _CALLGRIND_TOGGLES.items()}

    def figures(what: str, paths: list) -> dict:
        n = sum(len(by_path[p]) for p in paths)
        total: collections.Counter = collections.Counter()
        for p in paths:
            total.update(counts[p][what])
        l1 = total["I1mr"] + total["D1mr"] + total["D1mw"]
        ll = total["ILmr"] + total["DLmr"] + total["DLmw"]
        return {"Ir": round(total["Ir"] / n), "I1_misses": round(total["I1mr"] / n),
                "D1_misses": round((total["D1mr"] + total["D1mw"]) / n),
                "est_cycles": round((total["Ir"] + 10 * l1 + 100 * ll) / n)}

    out = {}
    for path, paths in (("kept", ["kept"]), ("reencoded", ["reencoded"]), ("all", list(counts))):
        paths = [p for p in paths if p in counts]
        if paths:
            kernel, phash = figures("kernel", paths), figures("phash", paths)
            out[path] = {"images": sum(len(by_path[p]) for p in paths), "kernel": kernel, "phash": phash,
                         "phash_share_percent": {k: round(100 * phash[k] / kernel[k], 2) if kernel[k] else 0.0
                                                 for k in ("Ir", "I1_misses", "est_cycles")}}
    return out

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.near_duplicates_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1_000_000, help="hashes searched (default 1,000,000)")
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE,
                   help=f"the threshold (default {DEFAULT_MAX_DISTANCE})")
    p.add_argument("--planted", type=int, default=1000, help="close pairs planted (default 1,000)")
    p.add_argument("--kind", choices=("phash", "uniform"), default="phash", help="the random hashes (default phash)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phash-images", type=int, default=200, help="images for the hash's cost (default 200; 0: skip)")
    p.add_argument("--phash-callgrind", type=int, default=0, metavar="N",
                   help="also count the hash's cost in the kernel under valgrind's callgrind, on N photos "
                        "(default 0: skip; 40 take a few minutes)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    a = _parser().parse_args(argv)
    figures: dict = {}
    if a.phash_images:
        figures["phash_cost"] = time_phash(a.phash_images)
        for path, f in figures["phash_cost"].items():
            print(f"phash cost, {path}: {f['images']} images, kernel {f['kernel_us']} us, phash {f['phash_us']} us "
                  f"({f['phash_share_percent']}% of the kernel)")
        figures["phash_cost_in_kernel"] = time_phash_in_kernel(a.phash_images)
        for path, f in figures["phash_cost_in_kernel"].items():
            print(f"phash cost inside the kernel, {path}: {f['images']} images, kernel {f['kernel_us']} us, of which "
                  f"the hash {f['phash_us']} us ({f['phash_share_percent']}%)")
    if a.phash_callgrind:
        figures["phash_callgrind"] = count_phash_in_kernel(a.phash_callgrind)
        for path, f in figures["phash_callgrind"].items():
            k, h, share = f["kernel"], f["phash"], f["phash_share_percent"]
            print(f"phash counted inside the kernel (callgrind), {path}: {f['images']} images, kernel {k['Ir']:,} "
                  f"instructions ({k['I1_misses']:,} L1i misses, {k['est_cycles']:,} est. cycles), of which the hash "
                  f"{h['Ir']:,} ({h['I1_misses']:,} L1i misses, {h['D1_misses']:,} L1d misses, {h['est_cycles']:,} "
                  f"est. cycles): {share['Ir']}% of the instructions, {share['I1_misses']}% of the L1i misses, "
                  f"{share['est_cycles']}% of the est. cycles")
    if a.samples:
        figures["search"] = s = time_search(a.samples, a.max_distance, a.planted, a.kind, a.seed)
        print(f"search: {s['samples']:,} {s['kind']} hashes, distance <= {s['max_distance']} ({s['bands']} bands): "
              f"{s['seconds']} s ({s['cpu_seconds']} s of CPU), {s['pairs_found']:,} pairs "
              f"({s['planted_found']}/{s['planted']} planted, "
              f"{s['chance_pairs_found']} by chance, {s['chance_pairs_expected']} expected), "
              f"{s['pairs_compared']:,} pairs compared of {s['all_pairs']:,}, {s['buckets_searched']:,} buckets "
              f"(largest {s['largest_bucket']:,}); the search's memory {s['search_peak_mb']} MB over the "
              f"{s['rss_before_search_mb']} MB its process held before ({s['search_bytes_per_sample']} bytes a "
              f"sample); a Beam wiring: shuffle {s['shuffle_bytes_per_sample']} "
              f"bytes a sample, a bucket of {s['bucket_entries']:,} entries searched in {s['bucket_seconds']} s "
              f"with a peak of {s['bucket_peak_bytes_per_entry']} bytes an entry (the entries not counted)")
        figures["gathered"] = g = time_gathered_search(a.samples, a.max_distance, a.kind, a.seed)
        print(f"the build's wiring (one index file a shard, read by one worker): {g['index_bytes_per_sample']} bytes "
              f"a sample of key and phash columns ({g['index_mb']} MB); search_batches {g['seconds']} s "
              f"({g['cpu_seconds']} s of CPU), "
              f"{g['pairs']:,} pairs, {g['flagged']:,} samples flagged; its memory {g['search_peak_mb']} MB over the "
              f"{g['rss_before_search_mb']} MB its process held before ({g['search_bytes_per_sample']} bytes "
              f"a sample)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
