"""The benchmark of scheduled rebuilds: no-op, incremental and resumed builds against a full one.

    python -m benchmarks.rebuild [--images N] [--out DIR]      (make bench-rebuild)

On the benchmark's corpus (its train images, in the ImageFolder layout: a change of a few files
is then a change of a few files, as in a folder of ImageNet that grows):
  1. a full build of the corpus (the version in use);
  2. the inputs change: 1% of the images removed, 1% new ones added (made like the corpus's);
  3. the rebuild (incremental: unchanged images are taken from the previous version), timed;
  4. a clean build of the changed inputs into another OUT, timed: the yardstick, and the bytes
     the rebuild must equal;
  5. a rebuild of unchanged inputs ("up to date"), timed;
  6. a clean build of the changed inputs killed (SIGKILL) when about half of its shards are done,
     and its rerun (resumed) timed.
Every build's wall time includes the tool's start-up (about 5 s here), which does not grow with
the dataset: the figures per image and their projection to ImageNet-1k leave it out. The results
are printed and written to OUT/rebuild.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from typing import Optional

from benchmarks.corpus import CorpusSpec, ensure_corpus, make_photo
from benchmarks.output_digests import digests
from benchmarks.settings import DEFAULT_IMAGES, DEFAULT_OUT, IMAGENET_1K
from pipeline.sample import TRAIN_TAR
from pipeline.versions import current_version, read_manifest

__all__ = ["main"]

CLI = [sys.executable, "-m", "pipeline"]
SHARD_SIZE = "40MB"  # about 30 shards for 12,000 images: enough to kill a build half-way
CHANGE = 0.01  # the share of the images removed, and the share added


def _folder_corpus(corpus: str, dest: str) -> list[str]:
    """The corpus's train images as <dest>/train/<wnid>/<key>.JPEG; their paths."""
    paths = []
    with tarfile.open(os.path.join(corpus, TRAIN_TAR)) as outer:
        for member in outer:
            wnid = member.name[:-len(".tar")]
            os.makedirs(os.path.join(dest, "train", wnid), exist_ok=True)
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for m in inner:
                    extracted = inner.extractfile(m)
                    assert extracted is not None
                    path = os.path.join(dest, "train", wnid, m.name)
                    with open(path, "wb") as f:
                        f.write(extracted.read())
                    paths.append(path)
    return sorted(paths)


def _change(paths: list[str], seed: int) -> tuple[int, int]:
    """Remove CHANGE of the images, add as many new ones; (removed, added)."""
    rng = random.Random(seed)
    count = max(1, round(len(paths) * CHANGE))
    for path in rng.sample(paths, count):
        os.unlink(path)
    folders = sorted({os.path.dirname(p) for p in paths})
    for n in range(count):
        folder = rng.choice(folders)
        with open(os.path.join(folder, f"{os.path.basename(folder)}_new{n}.JPEG"), "wb") as f:
            f.write(make_photo(f"rebuild-{seed}-{n}"))
    return count, count


def _build(source: str, out: str, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run([*CLI, "build", source, "--out", out, "--no-progress", "--shard-size", SHARD_SIZE, *extra],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"the build into {out} failed:\n{proc.stderr}")
    return wall, proc


def _killed_half_way(source: str, out: str, shards: int) -> int:
    """Start a build, SIGKILL it once half of `shards` are done; the shards it completed."""
    proc = subprocess.Popen([*CLI, "build", source, "--out", out, "--no-progress", "--shard-size", SHARD_SIZE],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done = 0
    while proc.poll() is None and done < shards // 2:
        time.sleep(0.05)
        versions = os.path.join(out, "versions")
        done = sum(len(os.listdir(os.path.join(versions, v, "_done"))) for v in os.listdir(versions)
                   if os.path.isdir(os.path.join(versions, v, "_done"))) if os.path.isdir(versions) else 0
    if proc.poll() is not None:
        raise RuntimeError("the build ended before it could be killed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return done


def _digests(out: str) -> dict:
    """{path: sha256} of the files of the version LATEST names (see output_digests.digests)."""
    return digests(current_version(out))


def _startup(work: str) -> float:
    """The wall time of a build of 20 images: the tool's start-up, which every build pays."""
    small, _ = ensure_corpus(CorpusSpec.for_images(20), os.path.join(work, "corpus"))
    source = os.path.join(work, "startup-src")
    if not os.path.isdir(source):
        _folder_corpus(small, source)
    best = float("inf")
    for n in range(2):
        out = os.path.join(work, f"startup-out-{n}")
        shutil.rmtree(out, ignore_errors=True)
        best = min(best, _build(source, out)[0])
    return best


def run(images: int, work: str, say=print) -> dict:
    corpus, _ = ensure_corpus(CorpusSpec.for_images(images), os.path.join(work, "corpus"), say=say)
    source = os.path.join(work, "src")
    shutil.rmtree(source, ignore_errors=True)
    for name in ("out", "clean", "resumed"):
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    paths = _folder_corpus(corpus, source)
    out, clean, resumed = (os.path.join(work, name) for name in ("out", "clean", "resumed"))
    startup = _startup(work)
    say(f"{len(paths):,} images in the ImageFolder layout; start-up {startup:.1f} s")

    full_first, _ = _build(source, out)
    removed, added = _change(paths, seed=1)
    say(f"full build {full_first:.1f} s; then {removed} images removed and {added} added")
    incremental, proc = _build(source, out)
    manifest = read_manifest(out)
    reused = next((line for line in proc.stderr.splitlines() if "not decoded again" in line), "")
    full, _ = _build(source, clean)
    identical = _digests(out) == _digests(clean)
    noop, proc = _build(source, out)
    up_to_date = "up to date" in proc.stderr
    shards = len(read_manifest(clean)["splits"]["train"]["shards"])
    completed = _killed_half_way(source, resumed, shards)
    resume, _ = _build(source, resumed)
    resumed_identical = _digests(resumed) == _digests(clean)

    samples = manifest["splits"]["train"]["samples"]
    steady = {name: max(wall - startup, 1e-9) for name, wall in (("full", full), ("incremental", incremental),
                                                                  ("resume", resume))}
    result = {
        "images": samples, "removed": removed, "added": added, "startup_s": round(startup, 2),
        "full_s": round(full, 2), "incremental_s": round(incremental, 2), "noop_s": round(noop, 2),
        "resume_s": round(resume, 2), "shards": shards, "shards_completed_before_kill": completed,
        "incremental_over_full": round(incremental / full, 3),
        "incremental_over_full_without_startup": round(steady["incremental"] / steady["full"], 3),
        "resume_over_full": round(resume / full, 3),
        "incremental_ms_per_image": round(1000 * steady["incremental"] / samples, 3),
        "full_ms_per_image": round(1000 * steady["full"] / samples, 3),
        "imagenet_1k_projection_s": {"full": round(steady["full"] / samples * IMAGENET_1K),
                                     "incremental": round(steady["incremental"] / samples * IMAGENET_1K)},
        "reused": reused.strip(), "diff": manifest["diff"]["splits"], "identical_to_clean": identical,
        "up_to_date": up_to_date, "resumed_identical_to_clean": resumed_identical,
    }
    say(f"incremental rebuild {incremental:.1f} s = {result['incremental_over_full']:.0%} of a full build's "
        f"{full:.1f} s ({result['incremental_over_full_without_startup']:.0%} without the start-up; target <= 20%)")
    say(f"  {reused.strip()}")
    say(f"  byte-identical to a clean build of the changed inputs: {identical}")
    say(f"up-to-date rebuild {noop:.1f} s ({'up to date' if up_to_date else 'NOT up to date'})")
    say(f"resumed after a kill at {completed} of {shards} shards: {resume:.1f} s = "
        f"{result['resume_over_full']:.0%} of a full build; byte-identical: {resumed_identical}")
    say(f"ImageNet-1k projection (start-up left out): full {result['imagenet_1k_projection_s']['full']:,} s, "
        f"incremental {result['imagenet_1k_projection_s']['incremental']:,} s")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rebuild", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help=f"train images (default {DEFAULT_IMAGES})")
    parser.add_argument("--out", default=os.path.join(DEFAULT_OUT, "rebuild"), help="work folder")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    result = run(args.images, os.path.abspath(args.out))
    with open(os.path.join(args.out, "rebuild.json"), "w") as f:
        json.dump(result, f, indent=1)
    ok = result["identical_to_clean"] and result["resumed_identical_to_clean"] and result["up_to_date"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
