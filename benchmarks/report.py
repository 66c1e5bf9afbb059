"""The benchmark's report: the figures of every mode, the ratios derived from them, the targets
(PASS or FAIL, informative) and the memory projected to ImageNet, as bench.json holds them and as
they are printed."""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
from typing import Any, Optional

import PIL
from PIL import features

from benchmarks.phases import PHASES
from benchmarks.settings import DEFAULT_RESIZE, IMAGENET_1K, IMAGENET_21K, GiB, Settings
from pipeline.options import cpu_count

__all__ = ["make_mode_report", "check_targets", "machine_info", "print_mode", "print_targets", "make_report",
           "print_report", "memory_scaling", "print_memory_scaling"]


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a and b else None


def make_mode_report(resize: str, kernels: dict, profile: dict, pipeline: dict, startup: dict, naive: dict,
                     cores: int, img2dataset: Optional[dict] = None) -> dict:
    """Everything measured for one --resize, with the derived rates and ratios."""
    ref = kernels["reference"]["images_per_s"]
    all_cores = kernels.get("reference_all_cores", {}).get("images_per_s")
    images = pipeline["images"]
    steady_s = pipeline["wall_s"] - startup["wall_s"]
    steady = round(images / steady_s, 2) if steady_s > 0 and images else None
    # The same from CPU time: what `cores` idle cores would give, perfectly balanced. Other users'
    # load slows the wall-clock figure, much less this one.
    cpu_s = pipeline["cpu_s"] - startup["cpu_s"]
    cpu_bound = round(cores * images / cpu_s, 2) if cpu_s > 0 and images else None
    end_to_end = pipeline["images_per_s"] if images else None
    return {
        "resize": resize,
        "kernels": kernels,
        "profile": profile,
        "pipeline": {**pipeline, "steady_state_images_per_s": steady, "startup_s": startup["wall_s"],
                     "steady_state_cpu_ms_per_image": _ms_per_image(cpu_s, images),
                     "cpu_bound_images_per_s": cpu_bound},
        "startup": startup,
        "naive_script": naive,
        "img2dataset": img2dataset,
        "ratios": {
            # the target's ratio: against the reference run on all cores over the same images
            "steady_state_vs_cores_x_reference": _ratio(steady, all_cores),
            # the same against `cores` x the one-core figures (the sample's best per image, best pass)
            "steady_state_vs_cores_x_one_core_reference": _ratio(steady, cores * ref),
            "steady_state_vs_cores_x_one_core_reference_best_pass": _ratio(
                steady, cores * kernels["reference"].get("best_pass_images_per_s", ref)),
            "cpu_bound_vs_cores_x_one_core_reference": _ratio(cpu_bound, cores * ref),
            "project_vs_reference": _ratio(kernels["project"]["images_per_s"], ref),
            "project_vs_naive": _ratio(kernels["project"]["images_per_s"], kernels["naive"]["images_per_s"]),
            "reference_vs_naive": _ratio(ref, kernels["naive"]["images_per_s"]),
            "pipeline_vs_naive_script": _ratio(end_to_end, naive["images_per_s"] if naive["images"] else None),
            "pipeline_vs_img2dataset": _ratio(end_to_end, (img2dataset or {}).get("images_per_s")),
        },
    }


def _target(name: str, value: Optional[float], op: str, threshold: float, note: str = "") -> dict:
    ok = value is not None and (value >= threshold if op == ">=" else value <= threshold if op == "<=" else
                                value < threshold)
    return {"name": name, "value": value, "op": op, "threshold": threshold, "pass": ok, "note": note}


def check_targets(report: dict) -> list[dict]:
    """The targets, PASS/FAIL each (informative)."""
    modes, images = report["modes"], report["corpus"]["images"]
    short = modes.get("shorter:256")
    targets = []
    if short:
        targets.append(_target("steady-state pipeline / (cores x reference), shorter:256",
                               short["ratios"]["steady_state_vs_cores_x_reference"], ">=", 0.8))
    for resize, m in modes.items():
        targets.append(_target(f"project kernel / reference, {resize}", m["ratios"]["project_vs_reference"], ">=", 1.0))
        targets.append(_target(f"project kernel / naive kernel, {resize}", m["ratios"]["project_vs_naive"], ">=", 1.2))
    if report["default_vs_shorter256"]:
        targets.append(_target("default path / shorter:256 path (pipeline steady-state images/s)",
                               report["default_vs_shorter256"]["pipeline_steady_state"], ">=", 1.5))
    for resize, m in modes.items():
        targets.append(_target(f"pipeline / naive script end to end, {resize}",
                               m["ratios"]["pipeline_vs_naive_script"], ">=", 1.7,
                               f"the target is for 12k images; measured at {images}"))
        targets.append(_target(f"largest worker peak RSS (GiB), {resize}",
                               round(m["pipeline"]["memory"]["worker_rss"] / GiB, 3), "<=", 1.0))
        targets.append(_target(f"start-up (s), {resize}", m["startup"]["wall_s"], "<", 5.0))
        share = m["profile"].get("phash_share_of_kernel")
        if share is not None:  # issue 15: the perceptual hash against the per-image kernel (the profile's images)
            targets.append(_target(f"perceptual hash / process_image time (%), {resize}", round(100 * share, 2),
                                   "<", 2.0, "the profile's phash line against its process_image time"))
    scaling = report.get("scaling")
    if scaling:
        sizes = f"{scaling['runs'][0]['images']} and {scaling['runs'][-1]['images']} images"
        targets.append(_target("peak RSS of the process tree projected to ImageNet-1k (GiB)",
                               round(scaling["tree_rss"]["projected_imagenet_1k"] / GiB, 2), "<=", 12.0,
                               f"half this machine's 24 GB; from {sizes}"))
        change = scaling["steady_state_change"]
        targets.append(_target("steady-state time per image, change between the two sizes",
                               abs(change) if change is not None else None, "<=", 0.15, sizes))
    return targets


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model, "cores": cpu_count(), "python": platform.python_version(), "pil": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"), "loadavg": list(os.getloadavg())}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def print_mode(m: dict, cores: int) -> None:
    k, p, s, n = m["kernels"], m["pipeline"], m["startup"], m["naive_script"]
    print(f"\n=== --resize {m['resize']} ===")
    print(f"kernels, one core, {k['reference']['images']} images in memory (each image's best of "
          f"{k['reference']['repeats']}):")
    for name in ("reference", "project", "naive"):
        print(f"  {name:<10} {k[name]['images_per_s']:>9.1f} images/s  {k[name]['ms_per_image']:7.3f} ms/image  "
              f"(best whole pass {k[name].get('best_pass_images_per_s', 0):.1f} images/s, "
              f"median pass {k[name]['median_pass_s']:.2f} s)")
    if "reference_all_cores" in k:
        a = k["reference_all_cores"]
        print(f"  reference on all {a['processes']} cores at once, the build's {a['images']} images, one pass after "
              f"each build: {a['images_per_s']:.1f} images/s "
              f"(runs: {', '.join(f'{x:.1f}' for x in a['runs_images_per_s'])}; "
              f"per process {', '.join(f'{x:.1f}' for x in a['per_process_images_per_s'])})")
    prof = m["profile"]
    print(f"profile of the project's per-image work ({prof['images']} images, ms/image, share):")
    for phase in PHASES:
        print(f"  {phase:<13}{prof['ms_per_image'][phase]:>8.3f}  {100 * prof['share'][phase]:5.1f}%   "
              f"{prof['notes'][phase]}")
    print(f"  {'total':<13}{prof['total_ms_per_image']:>8.3f}")
    print(f"builds, all {cores} cores:")
    runs = lambda r: f"  (runs: {', '.join(f'{w:.2f}' for w in r['walls_s'])} s)" if r.get("walls_s") else ""  # noqa: E731
    print(f"  start-up (20-image build)      {s['wall_s']:8.2f} s{runs(s)}")
    print(f"  pipeline    {p['images']:>6} images {p['wall_s']:8.2f} s  end to end {p['images_per_s']:8.1f} images/s  "
          f"steady state {p['steady_state_images_per_s'] or 0:8.1f} images/s{runs(p)}")
    print(f"    steady-state CPU {p['steady_state_cpu_ms_per_image']} ms/image (all processes) -> "
          f"{p['cpu_bound_images_per_s']} images/s on {cores} idle cores; start-up CPU {s['cpu_s']:.1f} s; "
          f"machine load at start {p['loadavg_at_start']} (start-up build {s['loadavg_at_start']})")
    print(f"  naive script {n['images']:>5} images {n['wall_s']:8.2f} s  end to end {n['images_per_s']:8.1f} images/s"
          f"{runs(n)}")
    i2d = m.get("img2dataset")
    if i2d and "error" in i2d:
        print(f"  img2dataset  failed: {i2d['error']}")
    elif i2d:
        print(f"  img2dataset {i2d['images']:>6} images {i2d['wall_s']:8.2f} s  end to end {i2d['images_per_s']:8.1f} "
              f"images/s  steady state {i2d['steady_state_images_per_s'] or 0:8.1f} images/s "
              f"(its start-up {i2d['startup_s']:.2f} s)")
    for run in (p, n):
        mem = run["memory"]
        print(f"  peak RSS {run['name']:<28} tree {_mib(mem['tree_rss']):>10} ({mem['tree_processes']} processes)  "
              f"largest worker {_mib(mem['worker_rss']):>9}  driver {_mib(mem['root_rss']):>9}")
    r = m["ratios"]
    print("ratios:")
    print(f"  steady-state / (cores x reference)  {r['steady_state_vs_cores_x_reference']}  "
          f"(the reference on all cores over the build's images; against {cores} x the one-core sample: "
          f"{r['steady_state_vs_cores_x_one_core_reference']}, best whole pass "
          f"{r['steady_state_vs_cores_x_one_core_reference_best_pass']}, from CPU time "
          f"{r['cpu_bound_vs_cores_x_one_core_reference']})")
    print(f"  project kernel / reference          {r['project_vs_reference']}")
    print(f"  project kernel / naive kernel       {r['project_vs_naive']}")
    print(f"  reference / naive kernel            {r['reference_vs_naive']}")
    print(f"  pipeline / naive script (e2e)       {r['pipeline_vs_naive_script']}")
    if r["pipeline_vs_img2dataset"]:
        print(f"  pipeline / img2dataset (e2e)        {r['pipeline_vs_img2dataset']}")


def print_targets(targets: list[dict]) -> None:
    print("\ntargets (informative):")
    for t in targets:
        verdict = "PASS" if t["pass"] else "FAIL"
        note = f"  ({t['note']})" if t["note"] else ""
        print(f"  {verdict}  {t['name']}: {t['value']} {t['op']} {t['threshold']}{note}")


def make_report(s: Settings, corpus: dict, modes: dict, wall_s: float, scaling: Optional[dict] = None) -> dict:
    """The whole report (what bench.json holds): settings, corpus, every mode, the targets."""
    report: dict[str, Any] = {
        "machine": machine_info(), "settings": dataclasses.asdict(s), "corpus": corpus, "modes": modes,
        "scaling": scaling, "default_vs_shorter256": None, "targets": None, "bench_wall_s": round(wall_s, 1)}
    if "shorter:256" in modes and DEFAULT_RESIZE in modes:
        default, short = modes[DEFAULT_RESIZE], modes["shorter:256"]
        report["default_vs_shorter256"] = {
            "pipeline_steady_state": _ratio(default["pipeline"]["steady_state_images_per_s"],
                                            short["pipeline"]["steady_state_images_per_s"]),
            "project_kernel": _ratio(default["kernels"]["project"]["images_per_s"],
                                     short["kernels"]["project"]["images_per_s"]),
        }
    report["targets"] = check_targets(report)
    return report


def print_report(report: dict) -> None:
    cores = report["machine"]["cores"]
    for m in report["modes"].values():
        print_mode(m, cores)
    d = report["default_vs_shorter256"]
    if d:
        print(f"\ndefault path / shorter:256 path: pipeline steady state {d['pipeline_steady_state']}, "
              f"project kernel {d['project_kernel']}")
    if report.get("scaling"):
        print_memory_scaling(report["scaling"])
    print_targets(report["targets"])


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def _ms_per_image(seconds: float, images: int) -> Optional[float]:
    return round(1000 * seconds / images, 3) if images else None


def _sized_run(run: dict, startup: dict) -> dict:
    """A build's figures with its steady-state cost per image (its start-up build subtracted)."""
    return {**run, "steady_state_ms_per_image": _ms_per_image(run["wall_s"] - startup["wall_s"], run["images"]),
            "steady_state_cpu_ms_per_image": _ms_per_image(run["cpu_s"] - startup["cpu_s"], run["images"])}


def memory_scaling(runs: list[dict], startup: dict) -> dict:
    """Peak RSS and steady-state time per image against corpus size: the per-sample slope of each
    memory figure (least squares over the runs), projected to ImageNet-1k and -21k, and how much
    the steady-state time per image moves between the smallest and the largest run."""
    runs = sorted((_sized_run(r, startup) for r in runs), key=lambda r: r["images"])
    xs = [r["images"] for r in runs]
    report: dict[str, Any] = {"runs": runs, "startup_s": startup["wall_s"]}
    for what in ("tree_rss", "worker_rss", "root_rss"):
        slope, intercept = _fit_line(xs, [r["memory"][what] for r in runs])
        report[what] = {"bytes_per_sample": round(slope, 1), "intercept_bytes": round(intercept),
                        "projected_imagenet_1k": round(intercept + slope * IMAGENET_1K),
                        "projected_imagenet_21k": round(intercept + slope * IMAGENET_21K)}
    small, large = runs[0]["steady_state_ms_per_image"], runs[-1]["steady_state_ms_per_image"]
    report["size_ratio"] = round(xs[-1] / xs[0], 2)
    report["steady_state_change"] = round(large / small - 1, 3) if small and large else None
    return report


def print_memory_scaling(m: dict) -> None:
    print(f"\nmemory and time against corpus size (start-up {m['startup_s']:.2f} s subtracted):")
    for r in m["runs"]:
        mem = r["memory"]
        print(f"  {r['images']:>7} images  wall {r['wall_s']:7.2f} s  "
              f"steady state {r['steady_state_ms_per_image']} ms/image "
              f"(CPU {r['steady_state_cpu_ms_per_image']} ms/image, load {r['loadavg_at_start']})  "
              f"peak tree {_mib(mem['tree_rss'])}  largest worker {_mib(mem['worker_rss'])}  "
              f"driver {_mib(mem['root_rss'])}")
    for what, label in (("tree_rss", "tree"), ("worker_rss", "largest worker"), ("root_rss", "driver")):
        f = m[what]
        print(f"  {label:<15} slope {f['bytes_per_sample']:>10,.0f} bytes/sample -> ImageNet-1k "
              f"{f['projected_imagenet_1k'] / GiB:8.2f} GiB, ImageNet-21k {f['projected_imagenet_21k'] / GiB:8.2f} GiB")
    if m["steady_state_change"] is not None:
        print(f"  steady-state time per image, {m['size_ratio']}x the images: {100 * m['steady_state_change']:+.1f}%")

