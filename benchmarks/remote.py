"""The benchmark behind `make bench-remote`: one build from local disk and from a loopback object store.

    python -m benchmarks.remote [--images N] [--classes K] [--delays 0,20] [--rounds R] [--out DIR]

The corpus is the benchmark's (benchmarks/corpus.py: the official layout, ImageNet's sizes and
bytes), N train images (3,000 by default) in K class tars (6: 500 images, ~60 MB a class tar;
ImageNet's are ~1,300 images and ~140 MB) and N/10 val images. It is built with the same
options three ways, in rounds (each figure is the best of its rounds):
  - from local disk (SOURCE a folder);
  - from an HTTP server on loopback that serves byte ranges and directory listings
    (benchmarks/range_server.py: a ranged read costs what the range costs, as on an object store;
    moto, the S3 stand-in of the tests, reads the whole object for every ranged GET), once for
    each delay injected before every request (0 and 20 ms: a real network's round trip).
For each build it prints the wall time, the requests the server answered (by kind) per member
read, the bytes it sent per byte of the corpus, and the peak memory of the build's process tree.
Targets: at 20 ms, a build within 1.25x of the same build at 0 ms; at most 1.2 requests per
member, tar headers included; at 0 ms, within 1.5x of the build from local disk. Every remote
build must give the local build's shards, byte for byte (their sha256 in the manifests).

It also measures how often the members of a shard lie next to each other in their archive, in
shard order and within the read-ahead's window (what coalescing can save): the shard order is
the seeded key hash, so on ImageNet's 1,000 class tars members next to each other in a shard
are almost never next to each other in a tar. The figures go to OUT/remote.json.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import sys
import tarfile
import time
from typing import Optional

import pyarrow.parquet as pq

from benchmarks.corpus import CorpusSpec, ensure_corpus
from benchmarks.procmem import run_sampled
from benchmarks.range_server import RangeServer
from benchmarks.runs import REPO_ROOT, warm_page_cache
from benchmarks.settings import DEFAULT_OUT
from pipeline.sample import TRAIN_TAR, VAL_TAR
from pipeline.versions import current_version, read_manifest
from transforms.readahead import ReadAhead, plan_requests

__all__ = ["main", "RemoteRun", "adjacency"]

SHARD_SIZE = "64MB"  # several shards per split, so that the work is shared out as in a real build
TARGET_DELAY_RATIO = 1.25  # build at 20 ms / build at 0 ms
TARGET_REQUESTS_PER_MEMBER = 1.2
TARGET_LOCAL_RATIO = 1.5  # build from the server at 0 ms / build from local disk


@dataclasses.dataclass
class RemoteRun:
    """One timed build: from local disk (delay_ms None) or from the server."""

    name: str
    delay_ms: Optional[float]
    wall_s: float
    cpu_s: float
    peak_tree_mib: float
    members: int
    requests: dict  # {kind: count}
    sent_bytes: int
    shards: dict  # {shard path: sha256}
    server_cpu_s: float = 0.0  # this process's CPU time during the build: the server's (and the memory sampler's)

    @property
    def request_count(self) -> int:
        return sum(self.requests.values())

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "request_count": self.request_count,
                "requests_per_member": round(self.request_count / self.members, 4) if self.members else None}


def _cli() -> list[str]:
    return [sys.executable, "-m", "pipeline"]


def _build(source: str, out: str, log: str) -> tuple:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*_cli(), "build", source, "--out", out, "--no-progress", "--shard-size", SHARD_SIZE]
    run = run_sampled(cmd, log, cwd=REPO_ROOT)
    if run.exit_code != 0:
        with open(log) as f:
            raise SystemExit(f"the build of {source} failed (exit {run.exit_code}):\n{f.read()[-3000:]}")
    manifest = read_manifest(current_version(out))
    members = sum(s["read"] for s in manifest["splits"].values())
    shards = {s["path"]: s["sha256"] for split in manifest["splits"].values() for s in split["shards"]}
    return run, members, shards


def _kind(request) -> str:
    if request.method == "HEAD":
        return "HEAD"
    if request.range is None:
        return "GET listing" if request.path.endswith("/") else "GET whole file"
    return "GET range"


def local_run(corpus: str, out: str, logdir: str, name: str) -> RemoteRun:
    warm_page_cache(corpus)
    run, members, shards = _build(corpus, out, os.path.join(logdir, f"{name}.log"))
    return RemoteRun(name, None, run.wall_s, run.cpu_s, run.memory.tree_rss / 2**20, members, {}, 0, shards)


def server_run(corpus: str, out: str, logdir: str, name: str, delay_ms: float) -> RemoteRun:
    warm_page_cache(corpus)
    with RangeServer(corpus, delay=delay_ms / 1000) as server:
        before = time.process_time()
        run, members, shards = _build(server.url(), out, os.path.join(logdir, f"{name}.log"))
        server_cpu = time.process_time() - before
        served = server.requests()
    kinds = collections.Counter(_kind(r) for r in served)
    return RemoteRun(name, delay_ms, run.wall_s, run.cpu_s, run.memory.tree_rss / 2**20, members, dict(kinds),
                     sum(r.sent for r in served), shards, server_cpu)


def _places(corpus: str) -> dict:
    """{key: (archive, offset, size)} of every image of the corpus, from its tar headers."""
    places = {}
    train = os.path.join(corpus, TRAIN_TAR)
    with tarfile.open(train) as outer:
        for member in outer:
            inner_file = outer.extractfile(member)
            assert inner_file is not None
            with tarfile.open(fileobj=inner_file) as inner:
                for m in inner:
                    places[m.name.rsplit(".", 1)[0]] = (train, member.offset_data + m.offset_data, m.size)
    val = os.path.join(corpus, VAL_TAR)
    with tarfile.open(val) as tar:
        for m in tar:
            places[m.name.rsplit(".", 1)[0]] = (val, m.offset_data, m.size)
    return places


def adjacency(corpus: str, version: str) -> dict:
    """How often a member of a shard lies next to the one before it (in shard order) in its archive,
    and the requests per member that read-ahead plans with its window and gap (the local build's
    shards: their index gives the order)."""
    places = _places(corpus)
    shards: dict = collections.defaultdict(list)
    for split in read_manifest(version)["splits"].values():
        for index in split["index"]:
            for row in pq.read_table(os.path.join(version, index), columns=["key", "shard", "offset"]).to_pylist():
                shards[row["shard"]].append(row)
    adjacent = members = planned = 0
    defaults = ReadAhead()
    for rows in shards.values():
        rows.sort(key=lambda r: r["offset"])
        ranges = [places[r["key"]] for r in rows]
        for before, after in zip(ranges, ranges[1:]):
            gap = after[1] - (before[1] + before[2])
            adjacent += before[0] == after[0] and 0 <= gap <= 2 * tarfile.BLOCKSIZE
        members += len(ranges)
        planned += len(plan_requests(ranges, defaults.max_gap, defaults.max_bytes // 2, defaults.window))
    return {"members": members, "adjacent_in_shard_order": adjacent,
            "share_adjacent": round(adjacent / members, 4) if members else None,
            "planned_requests_per_member": round(planned / members, 4) if members else None,
            "window": defaults.window, "max_gap": defaults.max_gap}


def _best(runs: list[RemoteRun]) -> RemoteRun:
    return min(runs, key=lambda r: r.wall_s)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def report(spec: CorpusSpec, stats: dict, runs: dict, adjacent: dict) -> dict:
    local = _best(runs["local disk"])
    configs = {}
    for name, group in runs.items():
        best = _best(group)
        configs[name] = {"best": best.as_dict(), "walls_s": [round(r.wall_s, 3) for r in group],
                         "same_shards_as_local": all(r.shards == local.shards for r in group)}
    at = {group[0].delay_ms: _best(group) for group in runs.values() if group[0].delay_ms is not None}
    targets = []
    if 0 in at and 20 in at:
        targets.append(("build at 20 ms / at 0 ms", _ratio(at[20].wall_s, at[0].wall_s), "<=", TARGET_DELAY_RATIO))
    if 0 in at:
        targets.append(("build at 0 ms / from local disk", _ratio(at[0].wall_s, local.wall_s), "<=",
                        TARGET_LOCAL_RATIO))
    for delay, best in sorted(at.items()):
        targets.append((f"requests per member at {delay:g} ms", round(best.request_count / best.members, 3), "<=",
                        TARGET_REQUESTS_PER_MEMBER))
    return {
        "corpus": {"spec": dataclasses.asdict(spec), **stats},
        "shard_size": SHARD_SIZE,
        "runs": configs,
        "adjacency": adjacent,
        "targets": [{"name": n, "value": v, "op": op, "threshold": t, "pass": v <= t} for n, v, op, t in targets],
    }


def print_report(r: dict) -> None:
    c = r["corpus"]
    print(f"\ncorpus: {c['spec']['train']} train + {c['spec']['val']} val images in {c['spec']['classes']} class tars, "
          f"{c['bytes'] / 1e6:,.0f} MB; shard size {r['shard_size']}")
    print(f"{'build':<16}{'wall s':>8}{'(rounds)':>22}{'requests':>10}{'/member':>9}{'sent/corpus':>13}"
          f"{'peak MiB':>10}{'build CPU s':>13}{'server CPU s':>14}  same shards")
    for name, cfg in r["runs"].items():
        b = cfg["best"]
        rounds = ", ".join(f"{w:.1f}" for w in cfg["walls_s"])
        per = f"{b['requests_per_member']:.3f}" if b["request_count"] else "-"
        sent = f"{b['sent_bytes'] / c['bytes']:.2f}x" if b["sent_bytes"] else "-"
        server = f"{b['server_cpu_s']:.1f}" if b["request_count"] else "-"
        print(f"{name:<16}{b['wall_s']:>8.2f}{rounds:>22}{b['request_count'] or '-':>10}{per:>9}{sent:>13}"
              f"{b['peak_tree_mib']:>10.0f}{b['cpu_s']:>13.1f}{server:>14}  "
              f"{'yes' if cfg['same_shards_as_local'] else 'NO'}")
    for name, cfg in r["runs"].items():
        if cfg["best"]["requests"]:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(cfg["best"]["requests"].items()))
            print(f"  {name}: {kinds}")
    a = r["adjacency"]
    print(f"members next to the one before them in their archive, in shard order: {a['adjacent_in_shard_order']} "
          f"of {a['members']} ({a['share_adjacent']:.2%}); requests per member that read-ahead plans "
          f"(window {a['window']}, gap {a['max_gap']} B): {a['planned_requests_per_member']:.3f}")
    for t in r["targets"]:
        print(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['name']}: {t['value']} (target {t['op']} {t['threshold']})")


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.remote", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3000, help="train images (default 3000)")
    p.add_argument("--classes", type=int, default=6, help="class tars (default 6)")
    p.add_argument("--delays", default="0,20", help="delays before each request, in ms (default 0,20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds; each figure is the best of them (default 2)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    spec = CorpusSpec(args.images, max(2, args.images // 10), args.classes)
    corpus, stats = ensure_corpus(spec, os.path.join(args.out, "corpus"))
    builds = os.path.join(args.out, "remote-builds")
    logdir = os.path.join(args.out, "logs")
    os.makedirs(logdir, exist_ok=True)
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    runs: dict = collections.defaultdict(list)
    started = time.perf_counter()
    for round_ in range(args.rounds):
        print(f"round {round_ + 1} of {args.rounds}", flush=True)
        runs["local disk"].append(local_run(corpus, os.path.join(builds, "local"), logdir, "remote-local"))
        print(f"  local disk: {runs['local disk'][-1].wall_s:.2f} s", flush=True)
        for delay in delays:
            name = f"http {delay:g} ms"
            run = server_run(corpus, os.path.join(builds, f"http-{delay:g}ms"), logdir, f"remote-http-{delay:g}ms",
                             delay)
            runs[name].append(run)
            print(f"  {name}: {run.wall_s:.2f} s, {run.request_count} requests", flush=True)
    adjacent = adjacency(corpus, current_version(os.path.join(builds, "local")))
    result = report(spec, stats, dict(runs), adjacent)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print_report(result)
    path = os.path.join(args.out, "remote.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwritten to {path}")
    return 0 if all(cfg["same_shards_as_local"] for cfg in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
