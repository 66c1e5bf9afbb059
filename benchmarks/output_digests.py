"""The sha256 of every file that a fixed set of builds writes: proof that a refactoring changed no byte.

    python -m benchmarks.output_digests build WORK > before.json     (on the old code)
    python -m benchmarks.output_digests build WORK > after.json      (on the new code)
    python -m benchmarks.output_digests compare before.json after.json

The builds cover the demo, a bigger official-layout release with one and two local workers, a
`shorter:256` build with --exif-transpose and another seed, a --classes/--relabel/--splits subset,
and the Kaggle, ImageFolder and ImageNet-21k layouts (with --boxes and --val-per-class). The
generated sources are hashed too. A build's files are those of the version its OUT's LATEST names
(paths relative to that folder; the tool's marker is left out). In every manifest, the fields that
name the build (`created`, `version`, `previous`, `diff`) are left out and WORK is written as "WORK", so
that two runs in different folders compare equal.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from typing import Optional

from pipeline.sample import BBOX_TRAIN, BBOX_VAL, export_layout, make_sample_release
from pipeline.versions import MARKER_NAME, current_version

__all__ = ["digests", "build_all", "compare"]

CLI = [sys.executable, "-m", "pipeline"]
MANIFESTS = ("manifest.json", "build-failed.json")


def digests(root: str, work: Optional[str] = None) -> dict:
    """{path relative to root: sha256} of every file below root, but the tool's version marker.
    In a manifest, the fields that name the build (its id, time, previous version and the diff
    against it) are left out, and `work` (a folder the builds ran in) is written "WORK"."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name == MARKER_NAME:
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            if name in MANIFESTS:
                manifest = json.loads(data)
                for field in ("created", "version", "previous", "diff"):
                    manifest.pop(field, None)
                text = json.dumps(manifest, sort_keys=True)
                data = (text.replace(work, "WORK") if work else text).encode()
            out[os.path.relpath(path, root)] = hashlib.sha256(data).hexdigest()
    return out


def _build(work: str, source: str, name: str, *args: str) -> dict:
    out = os.path.join(work, name)
    proc = subprocess.run([*CLI, "build", source, "--out", out, "--no-progress", "--max-reject-rate", "0.5", *args],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"build {name} failed:\n{proc.stderr}")
    return digests(current_version(out), work)


def build_all(work: str) -> dict:
    """Every build's digests, by build name."""
    os.makedirs(work, exist_ok=True)
    result = {}
    demo = subprocess.run([*CLI, "demo", "--out", os.path.join(work, "demo"), "--no-progress"], capture_output=True,
                          text=True)
    if demo.returncode:
        raise RuntimeError(f"the demo failed:\n{demo.stderr}")
    demo_version = current_version(os.path.join(work, "demo", "shards"))
    result["demo"] = {**digests(os.path.join(work, "demo", "ILSVRC2012"), work), **digests(demo_version, work)}
    big = make_sample_release(os.path.join(work, "big-src"), classes=24, train_per_class=30, val_images=120,
                              test_images=8, seed=3)
    result["big-src"] = digests(big.root, work)
    result["big-2w"] = _build(work, big.root, "big-2w", "--shard-size", "1MB", "--direct_num_workers", "2")
    result["big-1w"] = _build(work, big.root, "big-1w", "--shard-size", "1MB", "--direct_num_workers", "1")
    result["big-256"] = _build(work, big.root, "big-256", "--shard-size", "700KB", "--resize", "shorter:256",
                               "--exif-transpose", "--seed", "7")
    classes = os.path.join(work, "classes.txt")
    with open(classes, "w") as f:
        f.write("\n".join(sorted({e.wnid for e in big.expected["train"].values() if e.wnid})[:5]) + "\n")
    result["big-subset"] = _build(work, big.root, "big-subset", "--classes", classes, "--relabel",
                                  "--splits", "train,val")
    for layout in ("kaggle", "imagefolder", "in21k"):
        exported = export_layout(big, os.path.join(work, f"src-{layout}"), layout)
        extra: list = []
        if layout == "in21k":
            extra = ["--val-per-class", "2"]
        elif layout == "imagefolder":
            extra = ["--boxes", os.path.join(big.root, BBOX_TRAIN), "--boxes", os.path.join(big.root, BBOX_VAL)]
        result[layout] = _build(work, exported.root, f"out-{layout}", "--shard-size", "1MB", *extra)
    return result


def compare(before: dict, after: dict) -> list:
    """Lines that say which files differ (empty when every byte is the same)."""
    problems = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, {}), after.get(name, {})
        differ = sorted(path for path in set(a) | set(b) if a.get(path) != b.get(path))
        if differ:
            problems.append(f"{name}: {len(differ)} files differ: {', '.join(differ[:10])}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.output_digests", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="run the builds in WORK, print the digests as JSON").add_argument("work")
    cmp = sub.add_parser("compare", help="compare two digest files")
    cmp.add_argument("before")
    cmp.add_argument("after")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(json.dumps(build_all(os.path.abspath(args.work)), indent=1, sort_keys=True))
        return 0
    with open(args.before) as f, open(args.after) as g:
        before, after = json.load(f), json.load(g)
    problems = compare(before, after)
    for line in problems:
        print(line)
    if not problems:
        files = sum(len(v) for v in before.values())
        print(f"identical: {len(before)} builds, {files} files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
