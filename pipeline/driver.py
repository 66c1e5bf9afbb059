"""What the command line does around the graph: one build's life.

Lock OUT, resolve the inputs, compare the fingerprint with the current version's (up to date:
nothing to do), take a new version folder or resume a stopped one, run the graph into it, then
publish it (LATEST) and prune old versions. ARCHITECTURE.md draws the sequence.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import IO, Optional, Sequence

import apache_beam as beam
import fsspec
from tqdm import tqdm

from pipeline.build import build_graph
from pipeline.console import Console
from pipeline.fingerprint import build_fingerprint
from pipeline.incremental import PREVIOUS_DIR, Previous, prepare_previous, reused_images
from pipeline.inputs import Inputs, discover_inputs, prepare_output, stage_inputs, verify_inputs
from pipeline.local_runner import worker_log_level
from pipeline.lock import OutputLock
from pipeline.options import BuildConfig, beam_options, is_local_runner, local_workers
from pipeline.summary import describe_inputs, report_build
from pipeline.versions import LATEST_NAME, DatasetRoot, new_build_id
from transforms.checkpoints import completed_shards, remove_completion_records
from transforms.header_cache import header_cache_root, remove_stale
from transforms.image import codec_versions
from transforms.layout import PIECES_DIR, PROGRESS_DIR, OutputLayout
from transforms.progress import read_progress
from transforms.storage import is_local, remove_temporaries

__all__ = ["run_build"]


def _remove_scratch(layout: OutputLayout) -> None:
    """The version's scratch folders: heartbeats, staged class tars, pieces, the previous
    version's lookup. None outlives the build, finished, failed or stopped (the records of
    completed shards do: a rerun resumes from them)."""
    for scratch in (PROGRESS_DIR, "_staging", PIECES_DIR, PREVIOUS_DIR):
        fs, path = fsspec.core.url_to_fs(layout.url(scratch))
        if fs.exists(path):
            fs.rm(path, recursive=True)


def run_build(config: BuildConfig, beam_args: list[str], console: Console, discovery=None,
              tool_options: Sequence[str] = ()) -> int:
    """Resolve the inputs, build a new version of OUT, publish it. Returns the exit status.
    console: where the tool's own words go. tool_options: the command's own option strings,
    suggested first for a misspelled one."""
    say = console.say
    options = beam_options(beam_args, tool_options, source=config.source, out=config.out)
    started = time.monotonic()
    with OutputLock(config.out) as lock:
        discovery = discover_inputs(config, discovery)
        describe_inputs(discovery, say)
        dataset = DatasetRoot(config.out)
        codecs = codec_versions()
        fingerprint = build_fingerprint(config, discovery.layout, codecs)
        latest_relative = dataset.latest()
        latest = dataset.manifest(latest_relative) if latest_relative else None
        if latest and latest.get("fingerprint", {}).get("digest") == fingerprint["digest"] and not config.force:
            dataset.match_root_info()
            say(f"up to date: {dataset.join(latest_relative or '')} was built from these inputs with these "
                 "options (--force builds again)")
            return 0
        prepare_output(config)
        if config.verify_inputs:
            verify_inputs(discovery, console.terminal)
        resumed = dataset.resumable(fingerprint["digest"])
        build_id = resumed.build_id if resumed else new_build_id(fingerprint["digest"])
        for removed in dataset.remove_unfinished(keep=build_id):
            say(f"removed {removed}, left unfinished by an earlier build")
        if resumed is None:
            version = OutputLayout(dataset.start_version(build_id, fingerprint["digest"]))
        else:
            version = OutputLayout(dataset.join(resumed.relative))
            remove_temporaries(version.root)  # files the stopped build was writing
            say(f"resuming {resumed.relative}, which a stopped build of these inputs and options began "
                 f"({completed_shards(version)} shards completed)")
        building = resumed is None or not resumed.finished  # else only publishing was left to do
        if building:
            try:
                inputs = stage_inputs(config, discovery, version, console.terminal)
                previous = prepare_previous(config.out, latest_relative, latest, fingerprint, version)
                header = {"version": build_id, "previous": latest_relative, "fingerprint": fingerprint}
                code = _build(config, options, version, inputs, codecs, header, started, console, previous)
            finally:
                _remove_scratch(version)
        else:  # its manifest is written
            code = report_build(version, time.monotonic() - started, say)
        if code == 0:
            lock.check()  # an object store's lease still this build's: nobody else is publishing
            remove_completion_records(version)
            dataset.publish(build_id)
            say(f"published: {dataset.join(LATEST_NAME)} -> versions/{build_id}")
            for removed in dataset.prune(config.keep):
                say(f"removed {removed} (--keep {config.keep})")
            if building:  # the tar headers of archives that changed or went
                remove_stale(header_cache_root(config.out), inputs.fingerprints)
        return code


def _build(config: BuildConfig, options, version: OutputLayout, inputs: Inputs, codecs: dict, header: dict,
           started: float, console: Console, previous: Optional[Previous] = None) -> int:
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
            running.enter_context(ProgressMonitor(progress_dir, console.terminal))
        result = p.run()
        result.wait_until_finish()
    if previous is not None and previous.lookup:
        console.say(f"images taken from {previous.relative} (source bytes unchanged, not decoded again): "
             f"{reused_images(result):,} of its {previous.samples:,}")
    return report_build(version, time.monotonic() - started, console.say)


class ProgressMonitor:
    """Shows samples processed so far, from the files of the progress protocol
    (transforms/progress.py) that the shard writers leave."""

    def __init__(self, progress_dir: str, terminal: IO[str]):
        self._dir = progress_dir
        self._terminal = terminal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        terminal = self._terminal
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
