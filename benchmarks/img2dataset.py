"""img2dataset (optional): the same files through a popular downloader, in a venv of its own.

It is installed into OUT/img2dataset-venv on first use, never into the project's venv, and runs
as a command: the benchmarks never import it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Optional

from benchmarks.corpus import SourceImage, load_images
from benchmarks.procmem import run_sampled
from benchmarks.runs import warm_page_cache
from benchmarks.settings import QUALITY
from pipeline.options import cpu_count

__all__ = ["img2dataset_run", "img2dataset_bench"]

_I2D_RESIZE = {"longer": "keep_ratio_largest", "shorter": "keep_ratio"}


def _img2dataset_venv(root: str, say) -> Optional[str]:
    venv = os.path.join(root, "img2dataset-venv")
    exe = os.path.join(venv, "bin", "img2dataset")
    if os.path.exists(exe):
        return exe
    say(f"installing img2dataset into {venv} (never into the project's venv) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "img2dataset"], check=True,
                       timeout=900)
    except (subprocess.SubprocessError, OSError) as e:
        say(f"  img2dataset could not be installed: {e}")
        return None
    return exe if os.path.exists(exe) else None


def img2dataset_run(images: list[SourceImage], name: str, resize: str, root: str, say) -> dict:
    """img2dataset over file:// URLs of `images` (the corpus `name`, extracted to files once):
    {"images", "wall_s", "images_per_s", "memory"} or {"error": ...}."""
    exe = _img2dataset_venv(root, say)
    if exe is None:
        return {"error": "not installable here"}
    work = os.path.join(root, "img2dataset", name)
    files, urls = os.path.join(work, "files"), os.path.join(work, "urls.txt")
    if not os.path.exists(urls):
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(files)
        for image in images:
            with open(os.path.join(files, f"{image.key}.jpg"), "wb") as f:
                f.write(image.data)
        with open(urls + ".tmp", "w") as f:
            f.writelines(f"file://{os.path.abspath(os.path.join(files, i.key))}.jpg\n" for i in images)
        os.replace(urls + ".tmp", urls)
    tag = f"{name}-{resize.replace(':', '')}"
    out = os.path.join(root, "builds", f"img2dataset-{tag}")
    shutil.rmtree(out, ignore_errors=True)
    mode, _, n = resize.partition(":")
    cmd = [exe, "--url_list", urls, "--input_format", "txt", "--output_folder", out, "--output_format",
           "webdataset", "--image_size", n, "--resize_mode", _I2D_RESIZE[mode], "--resize_only_if_bigger", "True",
           "--encode_quality", str(QUALITY), "--processes_count", str(cpu_count()), "--thread_count", "4",
           "--number_sample_per_shard", "1000", "--enable_wandb", "False", "--distributor", "multiprocessing"]
    log = os.path.join(root, "logs", f"img2dataset-{tag}.log")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}  # no update check over the network
    warm_page_cache(files)  # as for every timed run
    try:
        run = run_sampled(cmd, log, timeout=1800, env=env)
    except OSError as e:
        return {"error": str(e)}
    done = _img2dataset_successes(out)
    if run.exit_code != 0 or not done:
        return {"error": f"exit {run.exit_code}, see {log}", "wall_s": round(run.wall_s, 3)}
    return {"images": done, "wall_s": round(run.wall_s, 3), "cpu_s": round(run.cpu_s, 3),
            "images_per_s": round(done / run.wall_s, 2), "memory": run.memory.as_dict(), "log": log}


def img2dataset_bench(corpus: str, images: list[SourceImage], startup_corpus: str, resize: str, root: str,
                      say) -> dict:
    """img2dataset end to end, and its steady state (its own start-up measured on the 20-image corpus)."""
    startup = img2dataset_run(load_images(startup_corpus), os.path.basename(startup_corpus), resize, root, say)
    run = img2dataset_run(images, os.path.basename(corpus), resize, root, say)
    if "error" in run or "error" in startup:
        return {**run, "startup": startup}
    steady_s = run["wall_s"] - startup["wall_s"]
    return {**run, "startup_s": startup["wall_s"],
            "steady_state_images_per_s": round(run["images"] / steady_s, 2) if steady_s > 0 else None}


def _img2dataset_successes(out: str) -> int:
    total = 0
    for name in os.listdir(out) if os.path.isdir(out) else ():
        if name.endswith("_stats.json"):
            with open(os.path.join(out, name)) as f:
                total += json.load(f).get("successes", 0)
    return total
