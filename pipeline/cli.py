"""The command line: parse, run, report.

  imagenet-shards build SOURCE --out OUT [options] [Beam pipeline options]
  imagenet-shards demo [--out DIR] [options]

Exit status: 0 success, 1 the build failed (including too many rejects), 2 bad usage
or unusable input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from typing import Optional

import fsspec

from pipeline.options import BuildConfig, UsageError, add_build_arguments, beam_options, config_from_args
from transforms.layout import FAILED_REPORT_NAME, MANIFEST_NAME, PIECES_DIR, OutputLayout
from transforms.sources import (OFFICIAL_MD5, SourceError, discover, read_class_list, stage_gzipped_tar,
                               verify_md5)
from transforms.storage import is_local

__all__ = ["main", "run_build"]

log = logging.getLogger("imagenet_shards")


def _say(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


# --- output folder -------------------------------------------------------------------

def prepare_output(config: BuildConfig) -> None:
    """OUT must be empty, new, or (with --overwrite) a previous build, which is removed."""
    fs, root = fsspec.core.url_to_fs(config.out)
    if not fs.exists(root):
        fs.makedirs(root, exist_ok=True)
        return
    if not fs.isdir(root):
        raise UsageError(f"--out {config.out!r} exists and is not a folder")
    entries = fs.ls(root, detail=False)
    if not entries:
        return
    names = {os.path.basename(e.rstrip("/")) for e in entries}
    previous = bool(names & {MANIFEST_NAME, FAILED_REPORT_NAME})
    if not previous:
        raise UsageError(f"--out {config.out!r} is not empty and holds no previous build: choose a new folder")
    if not config.overwrite:
        raise UsageError(f"--out {config.out!r} holds a previous build: pass --overwrite to replace it")
    # The manifest goes first: from here on, nothing in OUT looks like a finished build.
    for name in (MANIFEST_NAME, FAILED_REPORT_NAME):
        if name in names:
            fs.rm(f"{root.rstrip('/')}/{name}")
    fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)


# --- progress ------------------------------------------------------------------------

class ProgressMonitor:
    """Shows samples processed so far, from the heartbeat files the shard writers leave."""

    def __init__(self, progress_dir: str):
        self._dir = progress_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _read(self) -> tuple[int, int, int]:
        total = done = shards_total = 0
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return 0, 0, 0
        for name in names:
            if name.endswith(".tmp"):
                continue
            try:
                with open(os.path.join(self._dir, name)) as f:
                    a, b = (int(x) for x in f.read().split())
            except (OSError, ValueError):
                continue
            if name.startswith("plan-"):
                total += a
                shards_total += b
            else:
                done += a
        return done, total, shards_total

    def _run(self) -> None:
        from tqdm import tqdm

        interactive = sys.stderr.isatty()
        bar = tqdm(total=0, unit="img", desc="images", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if interactive else 15, disable=None if interactive else False)
        try:
            while not self._stop.wait(0.5):
                done, total, _ = self._read()
                if total and bar.total != total:
                    bar.total = total
                    bar.refresh()
                if done > bar.n:
                    bar.update(done - bar.n)
            done, total, _ = self._read()
            if done > bar.n:
                bar.update(done - bar.n)
        finally:
            bar.close()


# --- the build -----------------------------------------------------------------------

def _local_workers(options) -> Optional[int]:
    """The local runner's worker count, which WriteShards shares the work out over (see
    transforms/segments.py); None for other runners (Dataflow and the like move work between
    workers themselves: shards are cut into small pieces for them)."""
    from apache_beam.options.pipeline_options import DirectOptions

    from pipeline.options import is_local_runner
    from pipeline.workers import cpu_count

    if not is_local_runner(options):
        return None
    return options.view_as(DirectOptions).direct_num_workers or cpu_count()  # 0: one a core


def _verify_inputs(discovery) -> None:
    from tqdm import tqdm

    sizes = {a.url: a.size for a in discovery.archives}
    for archive in discovery.archives:
        expected = OFFICIAL_MD5.get(archive.name)
        if expected is None:
            _say(f"  {archive.name}: no published MD5, not verified")
            continue
        with tqdm(total=sizes[archive.url], unit="B", unit_scale=True, desc=f"md5 {archive.name}",
                  file=sys.stderr, disable=None) as bar:
            actual = verify_md5(archive.url, expected, bar.update)
        if actual:
            raise SourceError(f"{archive.name}: MD5 {actual} does not match the published {expected} "
                              "(incomplete or altered download?)")
        _say(f"  {archive.name}: MD5 ok")


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _summary(manifest: dict, wall: float, status: str) -> None:
    splits = manifest["splits"]
    samples = sum(s["samples"] for s in splits.values())
    _say("")
    _say(f"{'split':<8}{'read':>10}{'samples':>10}{'rejected':>10}{'dups':>7}{'shards':>8}{'bytes':>15}")
    for name, s in sorted(splits.items(), key=lambda kv: _SPLIT_ORDER.get(kv[0], 9)):
        _say(f"{name:<8}{s['read']:>10,}{s['samples']:>10,}{s['rejected']:>10,}{s['duplicates']:>7,}"
             f"{len(s['shards']):>8,}{s['bytes']:>15,}")
    if manifest["rejects_by_reason"]:
        _say("rejects by reason: " + ", ".join(f"{k} {v}" for k, v in manifest["rejects_by_reason"].items()))
    _say(f"duplicates (same bytes under several keys): {manifest['duplicates']}")
    boxes = sum(s.get("boxes", 0) for s in splits.values())
    if boxes or manifest.get("annotation_rejects") or manifest.get("orphan_annotations"):
        _say(f"boxes: {boxes} on {sum(s.get('with_boxes', 0) for s in splits.values())} images; "
             f"annotation rejects: {manifest.get('annotation_rejects_by_reason') or 0}; "
             f"orphan annotations: {manifest.get('orphan_annotations', 0)}; "
             f"val label disagreements: {splits.get('val', {}).get('label_disagreements', 0)}")
    _say(f"wall time {wall:.1f} s, {samples / wall if wall else 0:.1f} images/s")
    if status != "ok":
        _say(f"FAILED: {manifest.get('error', status)}")


def _stage(discovery, staging: str):
    """A gzipped tar cannot be read by ranges: one sequential pass copies its class tars to
    the output's staging area, and the build reads those instead."""
    from tqdm import tqdm

    spec = discovery.needs_staging
    _say(f"staging the class tars of {spec.name} (gzip cannot be read by ranges: one sequential pass)")
    with tqdm(unit="B", unit_scale=True, desc="staging", file=sys.stderr, disable=None) as bar:
        stage_gzipped_tar(spec, staging, bar.update)
    staged = discover(staging, "in21k")
    return dataclasses.replace(staged, inputs=discovery.inputs)


def _refine(discovery, config: BuildConfig):
    """Apply the options that narrow or relabel what was discovered."""
    if config.label_map:
        discovery = discovery.with_label_map(read_class_list(config.label_map))
    if config.val_per_class:
        discovery = discovery.with_holdout(config.val_per_class)
    classes = read_class_list(config.classes_file) if config.classes_file else None
    return discovery.with_boxes(config.boxes).select(config.splits, classes, config.relabel)


def run_build(config: BuildConfig, beam_args: list[str], discovery=None, workers=None) -> int:
    """Build; `workers`: local Beam workers already started (pipeline.workers), or None."""
    import apache_beam as beam

    from pipeline.build import build_graph
    from pipeline.options import is_local_runner, local_runner
    from transforms.image import codec_versions

    options = beam_options(beam_args)
    started = time.monotonic()
    layout = OutputLayout(config.out)
    if discovery is None:
        discovery = discover(config.source, config.layout)
    if not discovery.needs_staging:
        discovery = _refine(discovery, config)  # usage errors before OUT is touched
    if config.verify_inputs:
        _verify_inputs(discovery)
    prepare_output(config)
    staging = None
    if discovery.needs_staging:
        staging = layout.url(f"_staging/{discovery.needs_staging.name}")
        discovery = _refine(_stage(discovery, staging), config)
    for w in discovery.warnings:
        _say(f"warning: {w}")
    _say(f"layout: {discovery.layout}; splits: "
         + ", ".join(f"{a.split} <- {a.name}" for a in discovery.archives))
    if discovery.annotations:
        _say("boxes: " + ", ".join(a.name for a in discovery.annotations))

    local = is_local_runner(options) and is_local(config.out)
    progress_dir = None
    if local and config.progress:
        progress_dir = os.path.abspath(fsspec.core.url_to_fs(layout.progress_dir)[1])
        os.makedirs(progress_dir, exist_ok=True)

    p = beam.Pipeline(runner=local_runner(options, workers.command if workers else None), options=options)
    build_graph(p, config, discovery, codec_versions(), progress_dir, _local_workers(options))
    try:
        if progress_dir:
            with ProgressMonitor(progress_dir):
                p.run().wait_until_finish()
        else:
            p.run().wait_until_finish()
    finally:
        if progress_dir:
            import shutil

            shutil.rmtree(progress_dir, ignore_errors=True)
        for scratch in ("_staging", PIECES_DIR):  # pieces: none left after a build that finished
            fs, path = fsspec.core.url_to_fs(layout.url(scratch))
            if fs.exists(path):
                fs.rm(path, recursive=True)
    wall = time.monotonic() - started

    fs, _ = fsspec.core.url_to_fs(config.out)
    for path, status in ((layout.manifest, "ok"), (layout.failed_report, "too_many_rejects")):
        if fs.exists(fsspec.core.url_to_fs(path)[1]):
            with fsspec.open(path, "r") as f:
                manifest = json.load(f)
            _summary(manifest, wall, status)
            if status == "ok":
                _say(f"\nmanifest: {path}")
            else:
                _say(f"\nrejects: {', '.join(layout.url(r) for r in manifest['rejects'])}")
            return 0 if status == "ok" else 1
    _say("FAILED: the pipeline finished without writing a manifest")
    return 1


# --- demo ----------------------------------------------------------------------------

READING_EXAMPLE = """\
How to read it (webdataset and pyarrow):

  import json, pyarrow.parquet as pq, webdataset as wds
  root = "{out}"
  manifest = json.load(open(f"{{root}}/manifest.json"))
  shards = [f"{{root}}/{{s['path']}}" for s in manifest["splits"]["train"]["shards"]]
  for sample in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
      image, label = sample["jpg"], int(sample["cls"])      # PIL image, class index
  index = pq.read_table([f"{{root}}/{{p}}" for p in manifest["splits"]["val"]["index"]])
  row = index.slice(0, 1).to_pylist()[0]                    # one seek + one read:
  with open(f"{{root}}/{{row['shard']}}", "rb") as f:
      f.seek(row["offset"]); jpeg = f.read(row["size"])
"""


def run_demo(args, beam_args: list[str], workers=None) -> int:
    from pipeline.sample import make_sample_release

    base = os.path.abspath(args.out)
    source = os.path.join(base, "ILSVRC2012")
    out = os.path.join(base, "shards")
    _say(f"writing a miniature ILSVRC2012 release (official layout, planted faults) to {source}")
    release = make_sample_release(source, classes=10, train_per_class=12, val_images=40, test_images=6)
    planted = sum(1 for split in release.expected.values() for e in split.values() if e.outcome != "kept")
    _say(f"  {sum(len(v) for v in release.expected.values())} members, {planted} planted to be rejected")
    args.source, args.out, args.overwrite = source, out, True
    config = config_from_args(args)
    code = run_build(config, beam_args, workers=workers)
    if code == 0:
        _say("")
        _say(READING_EXAMPLE.format(out=out))
    return code


# --- entry point ---------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagenet-shards",
        description="ImageNet archives -> WebDataset shards + Parquet index, on Apache Beam. "
                    "Arguments the tool does not know are passed to Beam as pipeline options.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build shards from a folder of official ILSVRC2012 archives")
    add_build_arguments(build)
    demo = sub.add_parser("demo", help="build the bundled miniature ILSVRC2012 sample")
    demo.add_argument("--out", default="demo-out", help="folder for the sample and its shards (default demo-out)")
    add_build_arguments(demo, with_source=False)
    # The sample plants faults on purpose (~7% rejects), and is small: small shards show the sharding.
    demo.set_defaults(max_reject_rate=0.25, shard_size=1_000_000)
    return parser


class _DropBeamImportNoise(logging.Filter):
    """Beam warns at import that the optional BigQuery client is missing; we never use it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


def _setup_logging() -> None:
    # apache_beam installs a root handler on import; ours replaces it (force=True).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropBeamImportNoise())


def main(argv: Optional[list[str]] = None, workers=None) -> int:
    """The command line. `workers`: local Beam workers started ahead (pipeline.launch does)."""
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    _setup_logging()
    try:
        if args.command == "demo":
            return run_demo(args, beam_args, workers)
        return run_build(config_from_args(args), beam_args, workers=workers)
    except (UsageError, SourceError) as e:
        _say(f"imagenet-shards: error: {e}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as e:  # the pipeline failed: say why in one line, details in the log above
        log.debug("build failed", exc_info=True)
        _say(f"imagenet-shards: build failed: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
