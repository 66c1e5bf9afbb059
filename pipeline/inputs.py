"""Resolving the inputs: everything a build does before its graph is built.

Contract, in the order the command line calls these (each raises UsageError or SourceError,
exit status 2, with a message that says what was expected):
  1. discover_inputs: discover what SOURCE holds (transforms/sources.py: its layout, splits,
     labels, boxes), then narrow and relabel it by the options (--label-map, --val-per-class,
     --boxes, --splits, --classes, --relabel, --min-per-class, --label-level), so that usage errors
     come before OUT is touched;
  2. prepare_output: OUT is new, empty, a dataset root of versions (pipeline/versions.py), or an
     unversioned build of an earlier release that --overwrite replaces;
  3. verify_inputs: check the official archives' MD5 sums (--verify-inputs);
  4. stage_inputs: stage a gzipped tar of class tars into the version's _staging/ (gzip cannot be
     read by ranges), and discover and narrow the staged copy instead; fingerprint the tars.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import sys
from typing import IO, Callable, Optional

import fsspec
from tqdm import tqdm

from pipeline.lock import LOCK_NAME
from pipeline.options import BuildConfig, UsageError
from pipeline.versions import LATEST_NAME, VERSIONS_DIR
from transforms.layout import FAILED_REPORT_NAME, MANIFEST_NAME, PIECES_DIR, OutputLayout
from transforms.records import SourceError
from transforms.release_files import OFFICIAL_MD5, read_class_entries, read_class_list, verify_md5
from transforms.sources import Discovery, discover, stage_gzipped_tar
from transforms.storage import fingerprint

__all__ = ["Inputs", "discover_inputs", "prepare_output", "verify_inputs", "stage_inputs"]

@dataclasses.dataclass(frozen=True)
class Inputs:
    discovery: Discovery  # what the build reads, narrowed by the options
    staging: Optional[str] = None  # where a gzipped tar's class tars were staged (removed after the build)
    # {url: storage.fingerprint} of the tars the build reads, taken when they were discovered:
    # WriteManifest checks them again, so an archive rewritten during the build fails it (the files
    # of folder layouts are not fingerprinted one by one)
    fingerprints: dict = dataclasses.field(default_factory=dict)


def _fingerprints(discovery: Discovery) -> dict:
    return {a.url: fingerprint(a.url) for a in discovery.archives if a.kind in ("tar", "nested_tar")}


def discover_inputs(config: BuildConfig, discovery: Optional[Discovery] = None) -> Discovery:
    """What SOURCE holds, narrowed by the options (step 1). `discovery`: SOURCE already discovered."""
    if discovery is None:
        discovery = discover(config.source, config.layout)
    return discovery if discovery.needs_staging else _refine(discovery, config)


def stage_inputs(config: BuildConfig, discovery: Discovery, version: OutputLayout,
                 terminal: Optional[IO[str]] = None) -> Inputs:
    """What the build reads (step 4): the discovery, or a staged copy of a gzipped tar of class
    tars in the version's _staging/ folder; the tars fingerprinted. `terminal`: where messages and
    progress bars go (standard error by default)."""
    if not discovery.needs_staging:
        return Inputs(discovery, fingerprints=_fingerprints(discovery))
    terminal = terminal or sys.stderr
    staging = version.url(f"_staging/{discovery.needs_staging.name}")
    staged = _refine(_stage(discovery, staging, _printer(terminal), terminal), config)
    return Inputs(staged, staging, _fingerprints(staged))


def _printer(terminal: IO[str]) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(message, file=terminal, flush=True)
    return say


def _refine(discovery: Discovery, config: BuildConfig) -> Discovery:
    """Apply the options that narrow or relabel what was discovered."""
    if config.label_map:
        discovery = discovery.with_label_map(read_class_list(config.label_map))
    if config.val_per_class:
        discovery = discovery.with_holdout(config.val_per_class)
    classes = read_class_entries(config.classes_file) if config.classes_file else None
    discovery = discovery.with_boxes(config.boxes).with_min_per_class(config.min_per_class).select(
        config.splits, classes, config.relabel)
    if config.label_level:  # coarse labels, over the classes selected
        discovery = discovery.with_label_level(read_class_list(config.label_level), config.label_level_on_several)
    return discovery


def verify_inputs(discovery: Discovery, terminal: Optional[IO[str]] = None) -> None:
    """Check the official archives' MD5 sums against the published ones (step 3, --verify-inputs)."""
    terminal = terminal or sys.stderr
    say = _printer(terminal)
    for archive in discovery.archives:
        expected = OFFICIAL_MD5.get(archive.name)
        if expected is None:
            say(f"  {archive.name}: no published MD5, not verified")
            continue
        with tqdm(total=archive.size, unit="B", unit_scale=True, desc=f"md5 {archive.name}",
                  file=terminal, disable=None) as bar:
            actual = verify_md5(archive.url, expected, bar.update)
        if actual:
            raise SourceError(f"{archive.name}: MD5 {actual} does not match the published {expected} "
                              "(incomplete or altered download?)")
        say(f"  {archive.name}: MD5 ok")


def _stage(discovery: Discovery, staging: str, say: Callable[[str], None], terminal: IO[str]) -> Discovery:
    """A gzipped tar cannot be read by ranges: one sequential pass copies its class tars to
    the output's staging area, and the build reads those instead."""
    spec = discovery.needs_staging
    assert spec is not None
    say(f"staging the class tars of {spec.name} (gzip cannot be read by ranges: one sequential pass)")
    with tqdm(unit="B", unit_scale=True, desc="staging", file=terminal, disable=None) as bar:
        stage_gzipped_tar(spec, staging, bar.update)
    staged = discover(staging, "in21k")
    return dataclasses.replace(staged, inputs=discovery.inputs)


# Names at the top of OUT that a build writes, besides one folder per split.
_BUILD_NAMES = {MANIFEST_NAME, FAILED_REPORT_NAME, "rejects", PIECES_DIR, "_progress", "_staging"}
# Files a build writes in a split's folder: its shards and their indexes, and their temporary names.
_SHARD_FILE = re.compile(r"^\.?[\w-]+-\d{6}\.(tar|parquet)(\.tmp-[0-9a-f]+)?$")


def _not_written_by_a_build(fs, root: str, names: set) -> list:
    """The entries of OUT that no build of this tool writes (an empty list: all of it is a build's).
    What the manifest (or failed report) does not name as this tool's is counted as foreign."""
    report = MANIFEST_NAME if MANIFEST_NAME in names else FAILED_REPORT_NAME
    try:
        with fs.open(f"{root}/{report}", "rb") as f:
            manifest = json.load(f)
        splits = set(manifest["splits"]) if str(manifest.get("format", "")).startswith("imagenet-shards/") else None
    except (OSError, ValueError, KeyError, TypeError):
        splits = None
    if splits is None:
        return sorted(names)  # not this tool's manifest: nothing in OUT is known to be a build's
    foreign = sorted(names - _BUILD_NAMES - splits)
    for split in sorted(names & splits):
        for path in fs.find(f"{root}/{split}"):
            if not _SHARD_FILE.match(posixpath.basename(path)):
                foreign.append(posixpath.relpath(path, root))
    return foreign


def prepare_output(config: BuildConfig) -> None:
    """OUT must be new, empty, a dataset root (versions and LATEST: the build adds a version), or an
    unversioned build of an earlier release, which --overwrite removes; --overwrite removes only what
    a build writes, and refuses a folder that holds anything else."""
    fs, root = fsspec.core.url_to_fs(config.out)
    if not fs.exists(root):
        fs.makedirs(root, exist_ok=True)
        return
    if not fs.isdir(root):
        raise UsageError(f"--out {config.out!r} exists and is not a folder")
    root = root.rstrip("/")
    entries = {os.path.basename(e.rstrip("/")): e for e in fs.ls(root, detail=False)}
    for name in [n for n in entries if n.startswith(LOCK_NAME)]:
        del entries[name]  # the lock of the build now running (pipeline/lock.py) is not content
    if not entries:
        return
    names = set(entries)
    if names & {LATEST_NAME, VERSIONS_DIR}:
        return  # a dataset root: the build adds a version, and touches nothing else of it
    previous = bool(names & {MANIFEST_NAME, FAILED_REPORT_NAME})
    if not previous:
        raise UsageError(f"--out {config.out!r} is not empty and holds no previous build: choose a new folder")
    if not config.overwrite:
        raise UsageError(f"--out {config.out!r} holds an unversioned build of an earlier release: pass --overwrite "
                         "to replace it (from then on, builds keep versions side by side)")
    foreign = _not_written_by_a_build(fs, root, names)
    if foreign:
        raise UsageError(f"--out {config.out!r} holds a previous build, but also files no build writes "
                         f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): --overwrite deletes only "
                         "a build's own files; move the others away, or choose another folder")
    # The manifest goes first: from here on, nothing in OUT looks like a finished build. Then the
    # rest of the build (the lock, which this build holds, is not among the entries).
    for name in (MANIFEST_NAME, FAILED_REPORT_NAME):
        if name in entries:
            fs.rm(entries.pop(name))
    for entry in entries.values():
        fs.rm(entry, recursive=True)
