"""The benchmark behind `make bench`: how fast and how lean a build is, against fixed yardsticks.

    python -m benchmarks.bench [--images N] [--out DIR] [--quick] [--img2dataset]
    python -m benchmarks.bench --memory [--sizes 2400,12000]

What is measured, and why:

1. A corpus that looks like ImageNet to the code: the official layout (a train tar of per-class
   tars, a flat val tar in shuffled order, the devkit; written with pipeline.sample's tar and
   devkit writers), N train images (12,000 by default) and N/10 val images, ImageNet's size mix (mostly 500x375,
   500x333, 375x500; some small; a few percent over 1,000 px) and ImageNet's bytes (~110 KB a
   file: crops of the bundled photos with film grain added, baseline 4:2:0 JPEG at quality 85-95;
   grain matters, it is what makes decoding and encoding cost what they cost on real photos).
   pipeline.sample's own photo maker has no grain and no large sizes, so the images are made here.
   The corpus is cached under OUT/corpus/<its parameters>/.

2. Kernels, one image at a time on ONE core (sched_setaffinity), over the same bytes held in
   memory, in a tight loop: R passes, each image through the three kernels in turn (so that load
   from other users hits them alike); an image's time is its best pass, a rate is images / the sum
   of those (this machine is shared: best-of is what survives other people's test runs):
     reference  a fixed yardstick written here, independent of the project's code: PIL open,
                draft (libjpeg's DCT-domain scaling), convert RGB, Lanczos resize, JPEG q90;
     project    transforms.image.process_image, what the build runs for each image;
     naive      a full decode, convert, Lanczos resize, JPEG q90: what a hand-written script does.
   And a profile of the project's per-image work (read, decode, resize, encode, the kernel's own
   checks, sha256, index row JSON, tar writing, Parquet writing), so the next optimisation is obvious.

3. End to end: `imagenet-shards build` (all cores, Beam's local runner) against a naive
   single-process script (tarfile in, PIL full decode + resize + encode, tarfile shards out) on
   the same corpus. Start-up (interpreter, Beam, workers, the graph) is measured apart, as the
   wall time of a build of a 20-image corpus; steady-state rate = images / (wall - start-up).
   The builds' CPU time (all processes, getrusage) is recorded too: cores x images / (CPU - start-up
   CPU) is the rate on otherwise idle cores, which other users' load disturbs much less than wall time.
   After each build the reference kernel runs on all cores at once (a process per core) over all the
   build's images in memory: "cores x reference", measured under the build's conditions; the
   steady state is held to it (the one-core ratios are printed beside it).

4. Memory: peak RSS of the whole process tree (driver + Beam workers, summed, sampled with psutil
   every 0.1 s; see benchmarks/procmem.py) and of its largest single process, for every build.
   A second build of a 4x smaller corpus (3,000 train images, the default resize) gives the
   per-sample slope of each figure, projected to ImageNet-1k (1.33M samples) and ImageNet-21k
   (14M), and how the steady-state time per image changes with size. `--memory` does only
   that, at the sizes given (5x apart by default).

Each is done for `--resize shorter:256` and for the default `longer:512`. The timed runs go in
rounds, every build once a round (start-up build, build, reference on all cores, naive script,
per mode; then the smaller build), and each figure is the best of its rounds: the machine's slow
minutes then fall on all of them alike. Each run starts with its corpus read once into the page
cache (see warm_page_cache). The figures are printed
with their targets (PASS/FAIL, informative: the command does not fail on them) and written to
OUT/bench.json (OUT/bench-memory.json for --memory).

The modules, by job: settings (the sizes and yardsticks), corpus, kernels, phases (the profile),
runs (the timed builds), naive (the naive script), img2dataset, procmem (the memory sampler),
report (the figures, ratios and targets), rounds (the runs of a whole bench) and this one, the
command line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from benchmarks.naive import naive_convert
from benchmarks.rounds import run_bench, run_memory
from benchmarks.settings import DEFAULT_IMAGES, DEFAULT_OUT, DEFAULT_SCALING_IMAGES, RESIZES, Settings
from transforms.sizes import parse_byte_size

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None,
                   help=f"train images (default {DEFAULT_IMAGES}; 300 with --quick)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="300 images, 100 kernel images, one pass: a try-out")
    p.add_argument("--resize", action="append", default=None, metavar="SPEC",
                   help=f"resize to measure (repeatable; default {' and '.join(RESIZES)})")
    p.add_argument("--kernel-images", type=int, default=None, help="images timed per kernel (default 600)")
    p.add_argument("--repeats", type=int, default=None, help="passes per kernel, best taken (default 3)")
    p.add_argument("--shard-size", default="16MB", help="the builds' --shard-size (default 16MB)")
    p.add_argument("--build-repeats", type=int, default=None,
                   help="rounds of timed runs, every build once a round; the fastest run counts "
                        "(default 3; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img2dataset", action="store_true",
                   help="also run img2dataset (installed into OUT/img2dataset-venv on first use)")
    p.add_argument("--scaling-images", type=int, default=None,
                   help=f"train images of the smaller build that measures scaling (default {DEFAULT_SCALING_IMAGES}; "
                        "0 with --quick; 0: none)")
    p.add_argument("--memory", action="store_true", help="peak RSS against corpus size, projected to ImageNet")
    p.add_argument("--sizes", default="2400,12000", help="train images of the --memory builds (default 2400,12000)")
    p.add_argument("--naive-script", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # Beam warns about the optional clients it does not find.
    resizes = tuple(a.resize or RESIZES)
    if a.naive_script:
        source, out = a.naive_script
        n = naive_convert(source, out, resizes[0], parse_byte_size(a.shard_size))
        print(f"{n} images")
        return 0
    s = Settings(images=a.images or (300 if a.quick else DEFAULT_IMAGES), out=a.out, resizes=resizes,
                 kernel_images=a.kernel_images or (100 if a.quick else 600), repeats=a.repeats or (1 if a.quick else 3),
                 shard_size=a.shard_size, seed=a.seed, img2dataset=a.img2dataset,
                 scaling_images=a.scaling_images if a.scaling_images is not None else
                 (0 if a.quick else DEFAULT_SCALING_IMAGES),
                 build_repeats=a.build_repeats or (1 if a.quick else 3))
    if a.memory:
        run_memory(s, [int(x) for x in a.sizes.split(",")])
    else:
        run_bench(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
