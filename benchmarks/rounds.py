"""The runs of `make bench`: the one-core figures, then rounds of timed builds (every build once a
round), each figure the best of its rounds; and `--memory`, the peak RSS against corpus size."""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from benchmarks.corpus import CorpusSpec, SourceImage, ensure_corpus, load_images, spread_sample
from benchmarks.img2dataset import img2dataset_bench
from benchmarks.kernels import kernels_for, one_cpu, reference_on_all_cores, time_kernels
from benchmarks.phases import profile_phases
from benchmarks.report import (
    machine_info,
    make_mode_report,
    make_report,
    memory_scaling,
    print_memory_scaling,
    print_report,
)
from benchmarks.runs import naive_script_build, pipeline_build
from benchmarks.settings import DEFAULT_RESIZE, Settings
from pipeline.options import cpu_count

__all__ = ["STARTUP_SPEC", "one_core_figures", "build_round", "mode_result", "best_run", "run_bench", "write_report",
           "run_memory"]


STARTUP_SPEC = CorpusSpec(train=18, val=2, classes=2)  # the 20-image corpus that measures start-up


def one_core_figures(resize: str, s: Settings, images: list[SourceImage]) -> tuple[dict, dict]:
    """The kernels and the profile of the project's per-image work, on one pinned core."""
    print(f"\n[{resize}] kernels on one core ...", flush=True)
    sample = spread_sample(images, s.kernel_images)
    with one_cpu():
        kernels = time_kernels(kernels_for(resize), [i.data for i in sample], s.repeats)
        profile = profile_phases(sample, resize, s.repeats, os.path.join(s.out, "profile", resize.replace(":", "")))
    return kernels, profile


def build_round(resizes: list[str], s: Settings, corpus: str, datas: list[bytes], startup_corpus: str,
                small_corpus: Optional[str]) -> dict:
    """Every timed run once: per mode the start-up build, the build, the reference on all cores
    over the same images right after it, the naive script; then the smaller scaling build. The
    bench runs rounds of these rather than each build several times in a row: this machine has
    slow minutes (10-20% slower), and interleaved they fall on every figure alike instead of on
    whichever build was running (a ratio of two figures taken minutes apart moved by 20%)."""
    runs = {}
    for resize in resizes:
        tag = resize.replace(":", "")
        runs[resize] = {
            "startup": pipeline_build(startup_corpus, s.build_dir(f"startup-{tag}"), resize, s.shard_size,
                                      s.logdir, f"startup-{tag}").as_dict(),
            "pipeline": pipeline_build(corpus, s.build_dir(f"pipeline-{tag}"), resize, s.shard_size, s.logdir,
                                       f"pipeline-{tag}").as_dict(),
            "reference": reference_on_all_cores(datas, resize, cpu_count()),
            "naive": naive_script_build(corpus, s.build_dir(f"naive-{tag}"), resize, s.shard_size, s.logdir,
                                        f"naive-script-{tag}", len(datas)).as_dict(),
        }
    if small_corpus:
        runs["scaling-small"] = pipeline_build(small_corpus, s.build_dir("scaling-small"), DEFAULT_RESIZE,
                                               s.shard_size, s.logdir, "scaling-small").as_dict()
    return runs


def mode_result(resize: str, one_core: tuple[dict, dict], rounds: list[dict], i2d: Optional[dict]) -> dict:
    """A mode's report from its one-core figures and the best of its runs in every round."""
    kernels, profile = one_core
    runs = [r[resize] for r in rounds]
    startup, pipeline, naive = (best_run([r[name] for r in runs]) for name in ("startup", "pipeline", "naive"))
    references = [r["reference"] for r in runs]
    kernels = {**kernels, "reference_all_cores": {**max(references, key=lambda r: r["images_per_s"]),
                                                  "runs_images_per_s": [r["images_per_s"] for r in references]}}
    for run in (startup, pipeline, naive):
        if run["exit_code"] != 0:
            print(f"warning: {run['name']} exited {run['exit_code']}: see {run['log']}")
    return make_mode_report(resize, kernels, profile, pipeline, startup, naive, cpu_count(), i2d)


def best_run(runs: list[dict]) -> dict:
    """The fastest of a build's runs (as timeit takes the best of its repeats: other users of
    this machine only ever slow a run down), with every run's wall time and the highest peak
    memory of them all."""
    best = min(runs, key=lambda r: (r["exit_code"] != 0, r["wall_s"]))
    peak = max(runs, key=lambda r: r["memory"]["tree_rss"])["memory"]
    return {**best, "walls_s": [r["wall_s"] for r in runs], "memory": peak}


def run_bench(s: Settings) -> dict:
    """The whole benchmark: the corpora, the one-core figures, the rounds of builds and the report."""
    started = time.perf_counter()
    os.makedirs(s.logdir, exist_ok=True)
    spec = CorpusSpec.for_images(s.images, s.seed)
    corpus, stats = ensure_corpus(spec, s.corpus_cache)
    startup_corpus, _ = ensure_corpus(STARTUP_SPEC, s.corpus_cache)
    scaling = DEFAULT_RESIZE in s.resizes and s.scaling_images and s.scaling_images < s.images
    small_corpus = None
    if scaling:
        small_corpus = ensure_corpus(CorpusSpec.for_images(s.scaling_images, s.seed), s.corpus_cache)[0]
    images = load_images(corpus)
    print(f"corpus: {corpus}\n  {stats['images']} images "
          f"({spec.train} train in {spec.classes} classes, {spec.val} val), "
          f"mean {stats['mean_bytes'] / 1000:.0f} KB, median {stats['median_bytes'] / 1000:.0f} KB; longer side "
          f"450-520 px {100 * stats['share_longer_450_520']:.0f}%, "
          f"under 400 {100 * stats['share_small_under_400']:.0f}%, "
          f"over 1000 {100 * stats['share_over_1000']:.1f}%")
    one_core = {resize: one_core_figures(resize, s, images) for resize in s.resizes}
    datas, rounds, count = [i.data for i in images], [], max(1, s.build_repeats)
    for number in range(1, count + 1):
        print(f"\n[round {number}/{count}] every build once"
              f"{f', then {s.scaling_images} images' if scaling else ''} ...", flush=True)
        rounds.append(build_round(list(s.resizes), s, corpus, datas, startup_corpus, small_corpus))
    modes = {}
    for resize in s.resizes:
        i2d = img2dataset_bench(corpus, images, startup_corpus, resize, s.out, print) if s.img2dataset else None
        modes[resize] = mode_result(resize, one_core[resize], rounds, i2d)
    scaling_report = None
    if scaling:
        small = best_run([r["scaling-small"] for r in rounds])
        scaling_report = memory_scaling([small, modes[DEFAULT_RESIZE]["pipeline"]], modes[DEFAULT_RESIZE]["startup"])
    report = make_report(s, {"path": corpus, **stats}, modes, time.perf_counter() - started, scaling_report)
    print_report(report)
    path = write_report(s.out, "bench.json", report)
    print(f"\nwritten {path} ({report['bench_wall_s']} s)")
    return report


def write_report(folder: str, name: str, report: dict) -> str:
    """Write `report` as JSON to folder/name; return its path."""
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return path


def run_memory(s: Settings, sizes: list[int]) -> dict:
    """Peak RSS against corpus size (longer:512): the per-sample slope, projected to ImageNet."""
    os.makedirs(s.logdir, exist_ok=True)
    startup_corpus, _ = ensure_corpus(STARTUP_SPEC, s.corpus_cache)
    startup = pipeline_build(startup_corpus, s.build_dir("startup-memory"), DEFAULT_RESIZE, s.shard_size,
                             s.logdir, "startup-memory").as_dict()
    runs = []
    for n in sizes:
        spec = CorpusSpec.for_images(n, s.seed)
        corpus, _ = ensure_corpus(spec, s.corpus_cache)
        print(f"building {spec.images} images ({DEFAULT_RESIZE}) ...", flush=True)
        run = pipeline_build(corpus, s.build_dir(f"memory-{n}"), DEFAULT_RESIZE, s.shard_size, s.logdir,
                             f"memory-{n}")
        if run.exit_code != 0:
            print(f"warning: the build of {n} exited {run.exit_code}: see {run.log}")
        runs.append({**run.as_dict(), "train_images": n})
    report = {"machine": machine_info(), "shard_size": s.shard_size, "resize": DEFAULT_RESIZE,
              "startup": startup, **memory_scaling(runs, startup)}
    print_memory_scaling(report)
    print(f"written {write_report(s.out, 'bench-memory.json', report)}")
    return report

