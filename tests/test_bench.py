"""The benchmark's parts behave (no timing is asserted): corpus, kernels, memory sampler, report."""
import collections
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

import benchmarks as bench
from benchmarks import process_tree, rss_bytes, run_sampled, runs
from benchmarks.range_server import RangeServer
from pipeline.options import cpu_count
from pipeline.sample import DEVKIT_TAR, TRAIN_TAR, VAL_TAR
from transforms.image import ResizeSpec
from transforms.sources import discover

TINY = bench.CorpusSpec(train=12, val=3, classes=2, seed=7)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root, stats = bench.ensure_corpus(TINY, str(tmp_path_factory.mktemp("corpus")), processes=2, say=lambda m: None)
    return root, stats


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# --- the corpus -------------------------------------------------------------------------------------

def test_size_mix_is_imagenet_like():
    rng = random.Random(0)
    sizes = [bench.draw_size(rng) for _ in range(20_000)]
    longer = [max(s) for s in sizes]
    share = lambda pred: sum(map(pred, longer)) / len(longer)  # noqa: E731
    assert share(lambda s: 450 <= s <= 520) > 0.7  # mostly ~500 px on the longer side
    assert 0.04 < share(lambda s: s < 400) < 0.15  # some small
    assert 0.01 < share(lambda s: s > 1000) < 0.08  # a few percent over 1,000 px
    assert sum(1 for s in sizes if s == (500, 375)) / len(sizes) > 0.25  # the commonest size
    assert 0.15 < sum(1 for w, h in sizes if h > w) / len(sizes) < 0.4  # some portrait


def test_photo_is_a_deterministic_grainy_baseline_jpeg():
    data = bench.make_photo("test/1")
    assert data == bench.make_photo("test/1") != bench.make_photo("test/2")
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and im.mode == "RGB" and not im.info.get("progressive")
    # ImageNet-like bytes: grain makes a 500-px photo tens of KB, not a few (content-free images are tiny)
    assert len(data) / (im.size[0] * im.size[1]) > 0.15


def test_corpus_has_the_official_layout(corpus):
    root, stats = corpus
    assert sorted(os.listdir(root)) == sorted([TRAIN_TAR, VAL_TAR, DEVKIT_TAR, "corpus.json"])
    with tarfile.open(os.path.join(root, TRAIN_TAR)) as outer:
        class_tars = outer.getmembers()
        assert len(class_tars) == TINY.classes
        names = []
        for member in class_tars:
            assert re.fullmatch(r"n\d{8}\.tar", member.name)
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for m in inner:
                    assert re.fullmatch(member.name[:-4] + r"_\d+\.JPEG", m.name)
                    names.append(m.name)
    assert len(names) == TINY.train
    with tarfile.open(os.path.join(root, VAL_TAR)) as val:
        assert all(re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", n) for n in val.getnames())
        assert len(val.getnames()) == TINY.val
    assert stats["images"] == TINY.images and stats["mean_bytes"] > 20_000
    # The project reads it as an official release.
    assert {a.split for a in discover(root).archives} == {"train", "val"}


def test_corpus_is_cached(corpus, tmp_path):
    root, _ = corpus
    marker = os.path.join(root, "corpus.json")
    before = os.stat(marker).st_mtime_ns
    again, _ = bench.ensure_corpus(TINY, os.path.dirname(root), say=lambda m: pytest.fail("regenerated"))
    assert again == root and os.stat(marker).st_mtime_ns == before


def test_load_images_reads_every_image_with_its_place(corpus):
    root, _ = corpus
    images = bench.load_images(root)
    assert len(images) == TINY.images
    for image in images[:3] + images[-2:]:
        with open(image.archive, "rb") as f:
            f.seek(image.offset)
            assert f.read(len(image.data)) == image.data


# --- the kernels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("resize", ["shorter:256", "longer:512", "none"])
def test_target_size_is_the_projects_rule(resize):
    spec = ResizeSpec.parse(resize)
    for w, h in [(500, 375), (375, 500), (333, 500), (1, 2000), (2592, 1944), (257, 256), (100, 80), (513, 511)]:
        assert bench.target_size(w, h, resize) == spec.target_size(w, h)


@pytest.mark.parametrize("resize", ["shorter:256", "longer:512"])
def test_kernels_make_valid_jpegs_of_the_target_size(resize):
    for seed in ("k/0", "k/1"):
        data = bench.make_photo(seed)
        target = bench.target_size(*Image.open(io.BytesIO(data)).size, resize)
        for name, kernel in bench.kernels_for(resize).items():
            out = _open(kernel(data))
            assert (out.format, out.mode, out.size) == ("JPEG", "RGB", target), name
    large = io.BytesIO()
    Image.new("RGB", (1600, 1200), (90, 120, 30)).save(large, "JPEG", quality=90)
    for kernel in (bench.reference_kernel, bench.naive_kernel):
        assert _open(kernel(large.getvalue(), resize)).size == bench.target_size(1600, 1200, resize)


def test_time_kernels_and_profile_report_every_figure(corpus, tmp_path):
    images = bench.load_images(corpus[0])[:3]
    with bench.one_cpu():
        assert len(os.sched_getaffinity(0)) == 1
        timed = bench.time_kernels(bench.kernels_for("shorter:256"), [i.data for i in images], repeats=2)
        profile = bench.profile_phases(images, "shorter:256", repeats=2, workdir=str(tmp_path))
    assert len(os.sched_getaffinity(0)) == cpu_count()
    for name in ("reference", "project", "naive"):
        assert timed[name]["images_per_s"] > 0 and timed[name]["images"] == 3
    assert set(profile["ms_per_image"]) == set(bench.PHASES)
    assert all(v >= 0 for v in profile["ms_per_image"].values()) and profile["ms_per_image"]["decode"] > 0
    assert abs(sum(profile["share"].values()) - 1) < 0.01
    phash_ms = profile["ms_per_image"]["phash"]
    assert 0 < phash_ms < profile["process_image_ms"]
    # The ms figures are rounded to a microsecond: the share agrees with them to that rounding.
    assert profile["phash_share_of_kernel"] == pytest.approx(phash_ms / profile["process_image_ms"], abs=0.01)


def test_reference_on_all_cores_processes_every_image_once_per_core(corpus):
    images = bench.load_images(corpus[0])[:7]
    run = bench.reference_on_all_cores([i.data for i in images], "shorter:256", cpu_count())
    assert run["images"] == 7 and run["processes"] == min(cpu_count(), len(os.sched_getaffinity(0)))
    assert len(run["per_process_images_per_s"]) == run["processes"]
    # wall_s is rounded to the millisecond and the rate to the hundredth: on a run of a few milliseconds
    # their product is 7 only within what the two roundings allow (a fixed 5% failed on a 9 ms run)
    rate, wall = run["images_per_s"], run["wall_s"]
    assert rate > 0 and abs(rate * wall - 7) <= rate * 0.0005 + wall * 0.005 + 1e-9
    assert len(os.sched_getaffinity(0)) == cpu_count()  # the parent's own affinity is untouched


def test_naive_script_writes_shards_of_every_image(corpus, tmp_path):
    out = tmp_path / "naive"
    assert bench.naive_convert(corpus[0], str(out), "shorter:256", 200_000) == TINY.images
    names, shorter_sides = [], []
    for shard in sorted(out.iterdir()):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
            shorter_sides += [min(_open(tar.extractfile(m).read()).size) for m in tar if m.name.endswith(".jpg")]
    assert max(shorter_sides) == 256 and shorter_sides.count(256) > len(shorter_sides) / 2  # small ones stay small
    assert len([n for n in names if n.endswith(".jpg")]) == len([n for n in names if n.endswith(".cls")]) == TINY.images
    assert len(list(out.iterdir())) > 2  # shards roll over at --shard-size, per split


def test_warm_page_cache_reads_every_byte_of_every_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.tar").write_bytes(os.urandom(9 << 20))  # more than one 8 MB read
    (tmp_path / "sub" / "b.txt").write_bytes(b"0123456789")
    read, real_open = collections.Counter(), open

    class Counting:  # open() as benchmarks.runs sees it, counting the bytes each file gives
        def __init__(self, path, *args, **kwargs):
            self._name, self._f = os.path.relpath(path, tmp_path), real_open(path, *args, **kwargs)

        def read(self, n=-1):
            data = self._f.read(n)
            read[self._name] += len(data)
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(runs, "open", Counting, raising=False)
    bench.warm_page_cache(str(tmp_path))
    assert read == {"a.tar": 9 << 20, os.path.join("sub", "b.txt"): 10}


def test_a_timed_run_warms_its_corpus_then_runs(corpus, tmp_path, monkeypatch):
    warmed = []
    real = runs.warm_page_cache
    monkeypatch.setattr(runs, "warm_page_cache", lambda folder: warmed.append(folder) or real(folder))
    run = bench.naive_script_build(corpus[0], str(tmp_path / "out"), "shorter:256", "200KB", str(tmp_path),
                                   "naive", TINY.images)
    assert warmed == [corpus[0]] and run.exit_code == 0 and run.images == TINY.images and run.wall_s > 0


# --- the memory sampler -----------------------------------------------------------------------------

def test_sampler_sees_a_grandchilds_memory(tmp_path):
    # a shell-like parent that holds little, its child 200 MB of touched pages
    child = "import time; b = b'x' * 200_000_000; time.sleep(1.0)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    run = run_sampled([sys.executable, "-c", parent], interval=0.05)
    peak = run.memory
    assert run.exit_code == 0 and run.wall_s >= 1.0 and run.cpu_s > 0.05  # writing 200 MB takes CPU
    assert peak.worker_rss >= 200_000_000 and peak.tree_rss >= peak.worker_rss + peak.root_rss * 0.5
    assert peak.max_processes >= 2 and "time.sleep" in peak.worker_cmd
    assert peak.root_rss < 100_000_000


def test_process_tree_and_rss_of_this_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and proc.pid in tree
        assert rss_bytes(os.getpid()) > 10_000_000
    finally:
        proc.kill()
        proc.wait()
    assert rss_bytes(proc.pid) == 0


# --- the report -------------------------------------------------------------------------------------

def _fake_mode(resize: str, scale: float) -> dict:
    kernels = {name: {"images_per_s": rate * scale, "ms_per_image": 1000 / (rate * scale), "images": 600,
                      "repeats": 3, "median_pass_s": 2.0} for name, rate in (("reference", 200), ("project", 250),
                                                                            ("naive", 150))}
    kernels["reference_all_cores"] = {"images_per_s": 380 * scale, "wall_s": 8.7, "images": 3300, "processes": 2,
                                      "per_process_images_per_s": [190 * scale] * 2, "runs_images_per_s": [380 * scale]}
    profile = {"ms_per_image": dict.fromkeys(bench.PHASES, 0.5), "total_ms_per_image": 4.5,
               "share": dict.fromkeys(bench.PHASES, 1 / 9), "process_image_ms": 3.0, "images": 600, "repeats": 3,
               "phash_share_of_kernel": 0.5 / 3.0 / 10 * scale, "notes": dict.fromkeys(bench.PHASES, "")}
    memory = bench.MemoryPeak(tree_rss=900 << 20, tree_processes=4, process_rss=400 << 20, worker_rss=300 << 20,
                              root_rss=400 << 20, max_processes=4, samples=100)
    run = lambda name, images, wall: bench.BuildRun(name, 0, wall, wall * 1.5, images, memory, "log").as_dict()  # noqa: E731
    return bench.make_mode_report(resize, kernels, profile, run("pipeline", 3300, 12.0 / scale),
                                  run("startup", 20, 4.0), run("naive", 3300, 30.0), cores=2)


def test_report_has_every_field_and_prints(capsys):
    settings = bench.Settings(images=3000, out="bench-out", resizes=bench.RESIZES, kernel_images=600, repeats=3,
                              shard_size="16MB", seed=0, img2dataset=False)
    modes = {"shorter:256": _fake_mode("shorter:256", 1.0), "longer:512": _fake_mode("longer:512", 2.0)}
    report = bench.make_report(settings, {"path": "x", "images": 3300, "mean_bytes": 110_000}, modes, 100.0)
    report = json.loads(json.dumps(report))  # what bench.json holds
    assert set(report) >= {"machine", "settings", "corpus", "modes", "default_vs_shorter256", "targets",
                           "bench_wall_s"}
    assert report["machine"]["cores"] >= 1 and report["machine"]["pil"]
    for m in report["modes"].values():
        assert set(m) >= {"resize", "kernels", "profile", "pipeline", "startup", "naive_script", "ratios"}
        assert set(m["ratios"]) >= {"steady_state_vs_cores_x_reference", "cpu_bound_vs_cores_x_one_core_reference",
                                    "steady_state_vs_cores_x_one_core_reference",
                                    "project_vs_reference", "project_vs_naive",
                                    "reference_vs_naive", "pipeline_vs_naive_script"}
        assert m["pipeline"]["steady_state_images_per_s"] == round(3300 / (m["pipeline"]["wall_s"] - 4.0), 2)
        cpu_s = 1.5 * (m["pipeline"]["wall_s"] - 4.0)
        assert m["pipeline"]["cpu_bound_images_per_s"] == round(2 * 3300 / cpu_s, 2)
        assert set(m["pipeline"]["memory"]) >= {"tree_rss", "worker_rss", "root_rss", "process_rss"}
    short = report["modes"]["shorter:256"]["ratios"]
    assert short["steady_state_vs_cores_x_reference"] == round(3300 / 8.0 / 380, 3)  # the all-cores reference
    assert short["steady_state_vs_cores_x_one_core_reference"] == round(3300 / 8.0 / 400, 3)
    assert short["project_vs_reference"] == 1.25 and short["pipeline_vs_naive_script"] == 2.5
    assert report["default_vs_shorter256"]["pipeline_steady_state"] == round((3300 / 2.0) / (3300 / 8.0), 3)
    names = " | ".join(t["name"] for t in report["targets"])
    for what in ("cores x reference", "project kernel / reference", "project kernel / naive", "default path",
                 "naive script", "peak RSS", "start-up", "perceptual hash"):
        assert what in names
    hashes = {t["name"]: (t["value"], t["pass"]) for t in report["targets"] if "perceptual hash" in t["name"]}
    assert hashes == {"perceptual hash / process_image time (%), shorter:256": (1.67, True),
                      "perceptual hash / process_image time (%), longer:512": (3.33, False)}
    assert all(isinstance(t["pass"], bool) for t in report["targets"])
    bench.print_report(report)
    printed = capsys.readouterr().out
    assert "PASS" in printed and "images/s" in printed and "steady state" in printed


def test_memory_scaling_fits_the_slope_and_the_time_per_image():
    memory = lambda tree: bench.MemoryPeak(tree_rss=tree, worker_rss=tree // 4, root_rss=tree // 3).as_dict()  # noqa: E731
    startup = {"wall_s": 4.0, "cpu_s": 6.0}
    small = {"images": 3300, "wall_s": 4.0 + 3300 * 0.004, "cpu_s": 6.0 + 3300 * 0.008, "memory": memory(800 << 20),
             "loadavg_at_start": 0.1}
    large = {"images": 13200, "wall_s": 4.0 + 13200 * 0.0044, "cpu_s": 6.0 + 13200 * 0.008,
             "memory": memory((800 << 20) + 9900 * 1000), "loadavg_at_start": 0.1}
    m = bench.memory_scaling([large, small], startup)
    assert [r["images"] for r in m["runs"]] == [3300, 13200]
    assert m["tree_rss"]["bytes_per_sample"] == 1000.0
    assert m["tree_rss"]["projected_imagenet_1k"] == round((800 << 20) - 3300 * 1000 + 1000 * bench.IMAGENET_1K)
    assert m["runs"][0]["steady_state_ms_per_image"] == 4.0 and m["runs"][1]["steady_state_ms_per_image"] == 4.4
    assert m["steady_state_change"] == 0.1 and m["size_ratio"] == 4.0


def test_best_run_keeps_the_fastest_run_and_the_highest_memory():
    runs = [bench.BuildRun("b", 0, wall, 1.0, 10, bench.MemoryPeak(tree_rss=tree), "log").as_dict()
            for wall, tree in ((3.0, 100), (2.0, 300), (4.0, 200))]
    best = bench.best_run(runs)
    assert best["wall_s"] == 2.0 and best["walls_s"] == [3.0, 2.0, 4.0] and best["memory"]["tree_rss"] == 300


# --- the remote benchmark's server ----------------------------------------------------------------

def test_the_range_server_serves_byte_ranges_listings_and_waits_its_delay(tmp_path):
    data = bytes(range(256)) * 40
    (tmp_path / "a.tar").write_bytes(data)
    (tmp_path / "sub").mkdir()
    with RangeServer(str(tmp_path), delay=0.05) as server:
        def get(path, **headers):
            request = urllib.request.Request(server.url(path), headers=headers)
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as r:
                return r.status, dict(r.headers), r.read()

        started = time.perf_counter()
        status, headers, body = get("a.tar", Range="bytes=100-199")
        assert time.perf_counter() - started >= 0.05  # the delay, before the answer
        assert (status, body, headers["Content-Range"]) == (206, data[100:200], f"bytes 100-199/{len(data)}")
        assert get("a.tar", Range="bytes=10000-")[2] == data[10000:]
        assert get("a.tar", Range="bytes=-5")[2] == data[-5:]
        status, headers, body = get("a.tar")
        assert (status, body) == (200, data) and headers["ETag"] and headers["Accept-Ranges"] == "bytes"
        with pytest.raises(urllib.error.HTTPError) as refused:
            get("a.tar", Range=f"bytes={len(data)}-")
        assert refused.value.code == 416
        listing = get("")[2].decode()
        assert 'href="a.tar"' in listing and 'href="sub/"' in listing
        log = server.requests()
    assert [(r.method, r.path, r.range, r.status, r.sent) for r in log[:2]] == [
        ("GET", "/a.tar", "bytes=100-199", 206, 100), ("GET", "/a.tar", "bytes=10000-", 206, len(data) - 10000)]
    assert log[-1].path == "/" and log[-1].status == 200 and log[-1].sent == len(listing)


def test_the_near_duplicate_benchmark_finds_what_it_planted_in_both_wirings():
    """benchmarks/near_duplicates_bench.py's search figures, on a small run: the planted pairs are
    found by the search alone and by the build's wiring (both in fresh processes), and the two agree."""
    from benchmarks import near_duplicates_bench as nd_bench

    alone = nd_bench.time_search(4000, 8, 1000, "phash", seed=3)  # as many as the build's wiring plants
    assert alone["planted"] == 1000 and alone["planted_found"] == 1000
    assert 0 < alone["pairs_compared"] < alone["all_pairs"]
    gathered = nd_bench.time_gathered_search(4000, 8, "phash", seed=3)
    assert gathered["pairs"] == alone["pairs_found"] > 0
    assert gathered["flagged"] >= gathered["pairs"]
