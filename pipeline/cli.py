"""The command line: parse, run, report.

  imagenet-shards build SOURCE --out OUT [options] [Beam pipeline options]
  imagenet-shards demo [--out DIR] [options]

Exit status: 0 success, 1 the build failed (including too many rejects), 2 bad usage
or unusable input.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from typing import Optional, Sequence

import apache_beam as beam
import fsspec
from tqdm import tqdm

import pipeline
from pipeline.build import build_graph
from pipeline.console import Console, default_log_path, root_cause
from pipeline.fingerprint import build_fingerprint
from pipeline.incremental import PREVIOUS_DIR, Previous, prepare_previous, reused_images
from pipeline.inputs import Inputs, discover_inputs, prepare_output, stage_inputs, verify_inputs
from pipeline.local_runner import fewer_malloc_arenas, worker_log_level
from pipeline.lock import OutputLock
from pipeline.options import (
    BuildConfig,
    UsageError,
    add_build_arguments,
    beam_options,
    config_from_args,
    is_local_runner,
    local_workers,
)
from pipeline.sample import make_sample_release
from pipeline.stopping import Terminated, stop_cleanly_on_signals
from pipeline.versions import LATEST_NAME, DatasetRoot, new_build_id
from transforms.checkpoints import completed_shards, remove_completion_records
from transforms.header_cache import header_cache_root, remove_stale
from transforms.image import codec_versions
from transforms.layout import PIECES_DIR, PROGRESS_DIR, OutputLayout
from transforms.progress import read_progress
from transforms.records import SourceError
from transforms.sources import Discovery
from transforms.storage import is_local, remove_temporaries

__all__ = ["main", "run_build"]

log = logging.getLogger("imagenet_shards")


# Where the tool's own words go: the terminal, while Beam's and the workers' output goes to the log
# (pipeline/console.py). main() opens it for the run.
_console = Console(default_log_path(), verbose=True)


def _say(msg: str = "") -> None:
    _console.say(msg)


# --- progress ------------------------------------------------------------------------

class ProgressMonitor:
    """Shows samples processed so far, from the files of the progress protocol
    (transforms/progress.py) that the shard writers leave."""

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

    def _run(self) -> None:
        terminal = _console.terminal
        interactive = terminal.isatty()
        bar = tqdm(total=0, unit="img", desc="images", file=terminal, dynamic_ncols=True,
                   mininterval=0.5 if interactive else 15, disable=None if interactive else False)
        try:
            while not self._stop.wait(0.5):
                progress = read_progress(self._dir)
                if progress.total and bar.total != progress.total:
                    bar.total = progress.total
                    bar.refresh()
                if progress.done > bar.n:
                    bar.update(progress.done - bar.n)
            progress = read_progress(self._dir)
            if progress.done > bar.n:
                bar.update(progress.done - bar.n)
        finally:
            bar.close()


# --- the build -----------------------------------------------------------------------

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
    near = manifest.get("near_duplicates")
    if near:  # None: --near-duplicate-distance off
        pairs = ", ".join(f"{name} {n:,}" for name, n in near["by_split_pair"].items() if n)
        _say(f"near-duplicates (perceptual hashes within {near['max_distance']} bits): {near['pairs']:,} pairs"
             + (f" ({pairs})" if pairs else "") + (f", {near['unlisted']:,} more among identical hashes"
                                                   if near["unlisted"] else ""))
        if "train-val" in near["by_split_pair"]:
            _say(f"possible train/val leakage: {near['by_split_pair']['train-val']:,} train-val pairs "
                 f"(a val image with a near-copy in train; see {near['path']})")
    if manifest.get("diff"):
        diff = manifest["diff"]
        _say(f"changes since {diff['from']}: " + "; ".join(
            f"{name} {d['added']:,} added, {d['removed']:,} removed, {d['changed']:,} changed"
            for name, d in sorted(diff["splits"].items(), key=lambda kv: _SPLIT_ORDER.get(kv[0], 9))))
    boxes = sum(s.get("boxes", 0) for s in splits.values())
    if boxes or manifest.get("annotation_rejects") or manifest.get("orphan_annotations"):
        _say(f"boxes: {boxes} on {sum(s.get('with_boxes', 0) for s in splits.values())} images; "
             f"annotation rejects: {manifest.get('annotation_rejects_by_reason') or 0}; "
             f"orphan annotations: {manifest.get('orphan_annotations', 0)}; "
             f"val label disagreements: {splits.get('val', {}).get('label_disagreements', 0)}")
    dropped = manifest.get("dropped_classes") or []
    if dropped:
        shown = ", ".join(f"{c['wnid']} ({c['images']})" for c in dropped[:5])
        _say(f"classes left out by --min-per-class: {len(dropped):,} with {sum(c['images'] for c in dropped):,} "
             f"images: {shown}{', ...' if len(dropped) > 5 else ''} (all in the manifest's dropped_classes)")
    for damaged in manifest.get("damaged_archives", ()):
        _say(f"damaged archive, read as far as it goes: {damaged['source']}: {damaged['detail']} "
             f"(members located in the first {damaged['readable_bytes']:,} of {damaged['bytes']:,} bytes)")
    _say(f"wall time {wall:.1f} s, {samples / wall if wall else 0:.1f} images/s")
    if status != "ok":
        _say(f"FAILED: {manifest.get('error', status)}")


def _describe(discovery: Discovery) -> None:
    for warning in discovery.warnings:
        _say(f"warning: {warning}")
    _say(f"layout: {discovery.layout}; splits: "
         + ", ".join(f"{a.split} <- {a.name}" for a in discovery.archives))
    if discovery.annotations:
        _say("boxes: " + ", ".join(a.name for a in discovery.annotations))
    if discovery.class_matches:  # --classes: how many classes each entry matched
        _say("classes: " + ", ".join(f"{entry} matched {n}" for entry, n in discovery.class_matches))


def _remove_scratch(layout: OutputLayout) -> None:
    """The version's scratch folders: heartbeats, staged class tars, pieces, the previous
    version's lookup. None outlives the build, finished, failed or stopped (the records of
    completed shards do: a rerun resumes from them)."""
    for scratch in (PROGRESS_DIR, "_staging", PIECES_DIR, PREVIOUS_DIR):
        fs, path = fsspec.core.url_to_fs(layout.url(scratch))
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _report(layout: OutputLayout, wall: float) -> int:
    """Print the summary of what the build wrote; its exit status."""
    fs, _ = fsspec.core.url_to_fs(layout.root)
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


def run_build(config: BuildConfig, beam_args: list[str], discovery=None, tool_options: Sequence[str] = ()) -> int:
    """Resolve the inputs, build a new version of OUT, publish it. Returns the exit status.
    tool_options: the command's own option strings, suggested first for a misspelled one."""
    options = beam_options(beam_args, tool_options)
    started = time.monotonic()
    with OutputLock(config.out) as lock:
        discovery = discover_inputs(config, discovery)
        _describe(discovery)
        dataset = DatasetRoot(config.out)
        codecs = codec_versions()
        fingerprint = build_fingerprint(config, discovery.layout, codecs)
        latest_relative = dataset.latest()
        latest = dataset.manifest(latest_relative) if latest_relative else None
        if latest and latest.get("fingerprint", {}).get("digest") == fingerprint["digest"] and not config.force:
            dataset.match_root_info()
            _say(f"up to date: {dataset.join(latest_relative or '')} was built from these inputs with these "
                 "options (--force builds again)")
            return 0
        prepare_output(config)
        if config.verify_inputs:
            verify_inputs(discovery, _console.terminal)
        resumed = dataset.resumable(fingerprint["digest"])
        build_id = resumed.build_id if resumed else new_build_id(fingerprint["digest"])
        for removed in dataset.remove_unfinished(keep=build_id):
            _say(f"removed {removed}, left unfinished by an earlier build")
        if resumed is None:
            version = OutputLayout(dataset.start_version(build_id, fingerprint["digest"]))
        else:
            version = OutputLayout(dataset.join(resumed.relative))
            remove_temporaries(version.root)  # files the stopped build was writing
            _say(f"resuming {resumed.relative}, which a stopped build of these inputs and options began "
                 f"({completed_shards(version)} shards completed)")
        building = resumed is None or not resumed.finished  # else only publishing was left to do
        if building:
            try:
                inputs = stage_inputs(config, discovery, version, _console.terminal)
                previous = prepare_previous(config.out, latest_relative, latest, fingerprint, version)
                header = {"version": build_id, "previous": latest_relative, "fingerprint": fingerprint}
                code = _build(config, options, version, inputs, codecs, header, started, previous)
            finally:
                _remove_scratch(version)
        else:  # its manifest is written
            code = _report(version, time.monotonic() - started)
        if code == 0:
            lock.check()  # an object store's lease still this build's: nobody else is publishing
            remove_completion_records(version)
            dataset.publish(build_id)
            _say(f"published: {dataset.join(LATEST_NAME)} -> versions/{build_id}")
            for removed in dataset.prune(config.keep):
                _say(f"removed {removed} (--keep {config.keep})")
            if building:  # the tar headers of archives that changed or went
                remove_stale(header_cache_root(config.out), inputs.fingerprints)
        return code


def _build(config: BuildConfig, options, version: OutputLayout, inputs: Inputs, codecs: dict, header: dict,
           started: float, previous: Optional[Previous] = None) -> int:
    """Run the pipeline into the version folder; report. Returns the exit status. (The caller
    removes the scratch folders.)"""
    progress_dir = None
    if is_local_runner(options) and is_local(version.root) and config.progress:
        progress_dir = os.path.abspath(fsspec.core.url_to_fs(version.url(PROGRESS_DIR))[1])
        os.makedirs(progress_dir, exist_ok=True)

    p = beam.Pipeline(options=options)
    build_graph(p, config, inputs, codecs, version.root, header, progress_dir, local_workers(options), previous)
    with contextlib.ExitStack() as running:
        if is_local_runner(options):
            running.enter_context(worker_log_level(options))
        if progress_dir:
            running.enter_context(ProgressMonitor(progress_dir))
        result = p.run()
        result.wait_until_finish()
    if previous is not None and previous.lookup:
        _say(f"images taken from {previous.relative} (source bytes unchanged, not decoded again): "
             f"{reused_images(result):,} of its {previous.samples:,}")
    return _report(version, time.monotonic() - started)


# --- demo ----------------------------------------------------------------------------

READING_EXAMPLE = """\
How to read it (webdataset and pyarrow):

  import json, pyarrow.parquet as pq, webdataset as wds
  root = "{out}"                                            # the dataset; LATEST names its current version
  root += "/" + open(f"{{root}}/LATEST").read().strip()
  manifest = json.load(open(f"{{root}}/manifest.json"))
  shards = [f"{{root}}/{{s['path']}}" for s in manifest["splits"]["train"]["shards"]]
  for sample in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
      image, label = sample["jpg"], int(sample["cls"])      # PIL image, class index
  index = pq.read_table([f"{{root}}/{{p}}" for p in manifest["splits"]["val"]["index"]])
  row = index.slice(0, 1).to_pylist()[0]                    # one seek + one read:
  with open(f"{{root}}/{{row['shard']}}", "rb") as f:
      f.seek(row["offset"]); jpeg = f.read(row["size"])
"""


def run_demo(args, beam_args: list[str]) -> int:
    base = os.path.abspath(args.out)
    source = os.path.join(base, "ILSVRC2012")
    out = os.path.join(base, "shards")
    _say(f"writing a miniature ILSVRC2012 release (official layout, planted faults) to {source}")
    release = make_sample_release(source, classes=10, train_per_class=12, val_images=40, test_images=6)
    planted = sum(1 for split in release.expected.values() for e in split.values() if e.outcome != "kept")
    _say(f"  {sum(len(v) for v in release.expected.values())} members, {planted} planted to be rejected")
    args.source, args.out, args.overwrite = source, out, True
    config = config_from_args(args)
    code = run_build(config, beam_args, tool_options=args.tool_options)
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
    parser.add_argument("--version", action=_PrintVersion)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build shards from a folder of official ILSVRC2012 archives")
    build.set_defaults(tool_options=tuple(add_build_arguments(build)))
    demo = sub.add_parser("demo", help="build the bundled miniature ILSVRC2012 sample")
    out = demo.add_argument("--out", default="demo-out", help="folder for the sample and its shards (default demo-out)")
    # The sample plants faults on purpose (~7% rejects), and is small: small shards show the sharding.
    demo.set_defaults(max_reject_rate=0.25, shard_size=1_000_000,
                      tool_options=(*out.option_strings, *add_build_arguments(demo, with_source=False)))
    return parser


class _PrintVersion(argparse.Action):
    """--version: print the versions on one line and exit (argparse's own action wraps the line)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show the versions that decide the output, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def _version() -> str:
    """The tool's version and the versions that decide its output bytes."""
    codecs = codec_versions()
    return (f"imagenet-shards {pipeline.__version__} (apache-beam {beam.__version__}, PIL {codecs['pil']}, "
            f"libjpeg-turbo {codecs['libjpeg_turbo']})")


def _setup_logging() -> None:
    # apache_beam installs a root handler on import; ours replaces it (force=True).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)


def main(argv: Optional[list[str]] = None) -> int:
    """The command line (the `imagenet-shards` console script)."""
    fewer_malloc_arenas()
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    global _console
    _console = Console(args.log_file or default_log_path(), verbose=args.verbose)
    stop_cleanly_on_signals(_say)
    with _console:
        _setup_logging()  # after the console: the log handler writes to its standard error, the log
        return _run(args, beam_args)


def _run(args, beam_args: list[str]) -> int:
    """Run the command; turn what can go wrong into a line on the terminal and an exit status."""
    try:
        if args.command == "demo":
            return run_demo(args, beam_args)
        return run_build(config_from_args(args), beam_args, tool_options=args.tool_options)
    except (UsageError, SourceError) as e:
        _say(f"imagenet-shards: error: {e}")
        return 2
    except Terminated:
        _say("imagenet-shards: stopped (SIGTERM); nothing was published, the scratch files are removed")
        return 143
    except KeyboardInterrupt:
        _say("imagenet-shards: interrupted; nothing was published, the scratch files are removed")
        return 130
    except Exception as e:  # the build failed: one line here, the whole traceback in the log
        log.error("build failed", exc_info=True)
        cause = root_cause(e)
        if cause.startswith("TarDamaged:"):
            cause += "; --accept-damaged-archives builds from what can be read and lists the damage in the manifest"
        if "No space left on device" in cause:
            cause += "; free some space and run the same command again: it resumes from the shards it completed"
        where = "" if _console.verbose else f" (details: {_console.log_path})"
        _say(f"imagenet-shards: build failed: {cause}{where}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
