"""`python -m pipeline.sample DEST`: write a sample release and print its archives and counts."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import pipeline.sample
from pipeline.sample.release import make_sample_release

__all__ = ["main"]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.sample", description=pipeline.sample.__doc__.split("\n\n")[0])
    p.add_argument("dest")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=6)
    p.add_argument("--val-images", type=int, default=24)
    p.add_argument("--test-images", type=int, default=4)
    p.add_argument("--no-faults", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", default=None, help="least bytes of train image data, e.g. 200MB")
    p.add_argument("--near-duplicates", action="store_true",
                   help="plant a photograph, five near-duplicates of it and other photographs of one subject")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rel = make_sample_release(a.dest, classes=a.classes, train_per_class=a.train_per_class,
                              val_images=a.val_images, test_images=a.test_images, plant_faults=not a.no_faults,
                              seed=a.seed, min_size=a.min_size, near_duplicates=a.near_duplicates)
    took = time.perf_counter() - t0
    for role, path in rel.archives.items():
        print(f"{role:7s} {os.path.getsize(path):>12,d}  {path}")
    counts = {s: len(v) for s, v in rel.expected.items()}
    print(f"{counts} members, {len(rel.classes)} classes, {took:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
