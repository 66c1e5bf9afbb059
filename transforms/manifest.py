"""The manifest: what a build produced, written last, once every file is in place.

Contract: Facts from the other stages (ShardInfo, IndexFile, RejectsFile, SplitCount,
ShardDuplicates, NearDuplicatesFile) -> manifest dict. Per split, read = samples + rejected must
hold (a bug otherwise: the build fails). When rejects exceed --max-reject-rate the same document is written under
build-failed.json instead, so a build of the wrong files never looks finished. Otherwise the files
other readers expect (timm's _info.json, the wids shard indexes: transforms/reader_files.py) are
written just before manifest.json, which lists them under `reader_files`.
"""
from __future__ import annotations

import collections
import json
from typing import Iterable, Optional

import apache_beam as beam

from transforms.classes import without_dropped_classes
from transforms.layout import OutputLayout
from transforms.previous import version_diff
from transforms.reader_files import write_reader_files
from transforms.records import Fact
from transforms.storage import atomic_write, changed_since

__all__ = ["FORMAT", "FACT_KINDS", "assemble_manifest", "reconcile", "write_manifest", "WriteManifest"]

FORMAT = "imagenet-shards/1"


# What each kind of Fact holds.
FACT_KINDS = {
    "read": "SplitCount: members read (kept or rejected)",
    "left_out": "SplitCount: members of classes --classes leaves out or --min-per-class drops (not read)",
    "dropped_classes": "ClassCount: a class --min-per-class drops, and its members",
    "orphans": "SplitCount: annotations whose image is in no shard",
    "shard": "ShardInfo",
    "index": "IndexFile",
    "rejects": "RejectsFile of the samples' rejects",
    "annotation_rejects": "RejectsFile of the annotation files set aside",
    "duplicates": "ShardDuplicates: samples of that shard's index flagged duplicate_of and near_duplicate_of",
    "near_duplicates": "NearDuplicatesFile: near-duplicates.parquet, the pairs the near-duplicate search found",
    "damaged": "DamagedArchive: a tar read only as far as it goes (--accept-damaged-archives)",
}


def assemble_manifest(header: dict, facts: Iterable[Fact]) -> dict:
    """header: format-independent fields (tool, codecs, config, inputs, classes).
    facts: Fact(kind, value) with kind one of FACT_KINDS."""
    read: collections.Counter[str] = collections.Counter()
    orphans: collections.Counter[str] = collections.Counter()
    left_out: collections.Counter[str] = collections.Counter()
    duplicates: collections.Counter[str] = collections.Counter()
    near_flagged: collections.Counter[str] = collections.Counter()
    near_file = None  # the NearDuplicatesFile; None when the search is off (--near-duplicate-distance off)
    shards, index, rejects = collections.defaultdict(list), collections.defaultdict(list), {}
    rewritten = {}  # (split, shard_id): ShardDuplicates of an index file that FlagDuplicates rewrote
    annotation_rejects = {}
    damaged = []
    dropped_classes = []
    for kind, fact in facts:
        if kind == "read":
            read[fact.split] += fact.n
        elif kind == "orphans":
            orphans[fact.split] += fact.n
        elif kind == "left_out":
            left_out[fact.split] += fact.n
        elif kind == "annotation_rejects":
            annotation_rejects[fact.split] = fact
        elif kind == "shard":
            shards[fact.split].append(fact)
        elif kind == "index":
            index[fact.split].append(fact)
        elif kind == "rejects":
            rejects[fact.split] = fact
        elif kind == "duplicates":
            duplicates[fact.split] += fact.flagged
            near_flagged[fact.split] += fact.near_flagged
            if fact.sha256:
                rewritten[fact.split, fact.shard_id] = fact
        elif kind == "near_duplicates":
            near_file = fact
        elif kind == "dropped_classes":
            dropped_classes.append(fact)
        elif kind == "damaged":
            damaged.append(fact)
        else:
            raise ValueError(f"unknown fact {kind!r}")

    splits = {}
    for split in sorted(set(read) | set(shards) | set(rejects) | set(duplicates)):
        split_shards = sorted(shards[split], key=lambda s: s.shard_id)
        split_index = sorted(index[split], key=lambda i: i.shard_id)
        split_rejects = rejects.get(split)
        splits[split] = {
            "read": read[split],
            "left_out": left_out[split],  # members of classes --classes or --min-per-class left out (not read)
            "samples": sum(s.samples for s in split_shards),
            "rejected": split_rejects.rows if split_rejects else 0,
            "duplicates": sum(i.duplicates for i in split_index) + duplicates[split],
            "near_duplicates": near_flagged[split],  # samples with a near_duplicate_of
            "with_boxes": sum(i.with_boxes for i in split_index),
            "boxes": sum(i.boxes for i in split_index),
            "label_disagreements": sum(i.label_disagreements for i in split_index),
            "bytes": sum(s.bytes for s in split_shards),
            "rejects_by_reason": split_rejects.by_reason if split_rejects else {},
            "shards": [{"path": s.path, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
                       for s in split_shards],
            "index": [i.path for i in split_index],
            # the same files, with their size and sha256 as they stand once FlagDuplicates is done
            "index_files": [_index_entry(i, rewritten.get((split, i.shard_id))) for i in split_index],
        }
    by_reason: collections.Counter[str] = collections.Counter()
    for s in splits.values():
        by_reason.update(s["rejects_by_reason"])
    return {
        "format": FORMAT,
        **without_dropped_classes(header, dropped_classes),  # and "dropped_classes"
        "splits": splits,
        "rejects": [rejects[s].path for s in sorted(rejects)],
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "duplicates": sum(s["duplicates"] for s in splits.values()),
        "near_duplicates": _near_duplicates_entry(near_file),
        "annotation_rejects": [annotation_rejects[s].path for s in sorted(annotation_rejects)],
        "annotation_rejects_by_reason": dict(sorted(sum(
            (collections.Counter(r.by_reason) for r in annotation_rejects.values()), collections.Counter()).items())),
        "orphan_annotations": sum(orphans.values()),
        "damaged_archives": [{"split": d.split, "source": d.source, "detail": d.detail, "readable_bytes": d.readable,
                              "bytes": d.size} for d in sorted(damaged)],
    }


def _near_duplicates_entry(near) -> Optional[dict]:
    """The manifest's `near_duplicates`: the pairs file and its counts (None: the search was off)."""
    if near is None:
        return None
    return {"path": near.path, "max_distance": near.max_distance, "samples": near.samples, "pairs": near.pairs,
            "unlisted": near.unlisted, "by_split_pair": near.by_split_pair, "bytes": near.bytes, "sha256": near.sha256}


def _index_entry(index, rewritten) -> dict:
    final = rewritten or index  # FlagDuplicates rewrote the file: its digest is the final one
    return {"path": index.path, "rows": index.rows, "bytes": final.bytes, "sha256": final.sha256}


def reconcile(manifest: dict) -> list[str]:
    """Problems with the counts (empty when every split reconciles)."""
    problems = []
    for name, s in manifest["splits"].items():
        if s["read"] != s["samples"] + s["rejected"]:
            problems.append(f"{name}: read {s['read']} != samples {s['samples']} + rejected {s['rejected']}")
        if sum(sh["samples"] for sh in s["shards"]) != s["samples"]:
            problems.append(f"{name}: shard sample counts do not add up")
    return problems


class InputChanged(RuntimeError):
    """An input archive changed while the build read it: its shards may not match their index."""


def write_manifest(layout: OutputLayout, manifest: dict, max_reject_rate: float,
                   inputs: Optional[dict] = None) -> str:
    """Write manifest.json, or build-failed.json when too many samples were rejected.

    Returns "ok" or "too_many_rejects". Raises RuntimeError when counts do not reconcile, and
    InputChanged when one of `inputs` ({url: storage.fingerprint} taken before the build read
    it) is no longer that version: the build's bytes would not be what its index says.
    """
    changed = changed_since(inputs or {})
    if changed:
        raise InputChanged("an input changed while the build read it, so its shards may not match their index: "
                           + "; ".join(changed) + ". Build again once the inputs are complete.")
    problems = reconcile(manifest)
    if problems:
        raise RuntimeError("counts do not reconcile: " + "; ".join(problems))
    read = sum(s["read"] for s in manifest["splits"].values())
    rejected = sum(s["rejected"] for s in manifest["splits"].values())
    rate = rejected / read if read else 0.0
    status = "ok" if rate <= max_reject_rate else "too_many_rejects"
    target = layout.manifest
    if status != "ok":
        manifest = {**manifest, "error": f"{rejected} of {read} samples rejected ({rate:.1%}), "
                                         f"more than --max-reject-rate {max_reject_rate:.1%}"}
        target = layout.failed_report
    else:  # timm's _info.json and the wids shard indexes, just before the manifest
        manifest = {**manifest, "reader_files": write_reader_files(layout, manifest)}
    with atomic_write(target) as f:
        f.write(json.dumps(manifest, indent=1).encode() + b"\n")
    return status


# --- Beam wiring -------------------------------------------------------------------

class WriteManifest(beam.PTransform):
    """{kind: PCollection of that kind's facts} (kinds: FACT_KINDS) -> the status string
    ("ok" or "too_many_rejects"), after manifest.json or build-failed.json is written.

    All facts are combined into one list first, so the manifest is written exactly once,
    after every shard, index and rejects file is in place.
    """

    def __init__(self, out_root: str, header: dict, max_reject_rate: float, inputs: Optional[dict] = None,
                 previous: Optional[tuple[str, str]] = None):
        """inputs: {url: storage.fingerprint} of the archives the build reads, checked again first;
        previous: (the previous version's folder, its manifest as JSON text), which the manifest's
        `diff` compares this version with."""
        super().__init__()
        self._out_root = out_root
        # As JSON text: Beam's type inference would walk the 1,000 classes of a dict in a closure.
        self._header = json.dumps(header)
        self._max_reject_rate = max_reject_rate
        self._inputs = dict(inputs or {})
        self._previous = previous

    def expand(self, facts: dict):
        unknown = set(facts) - set(FACT_KINDS)
        if unknown:
            raise ValueError(f"unknown kinds of facts: {sorted(unknown)}")
        tagged = [
            pcoll | f"Tag{kind.title()}" >> beam.Map(lambda value, kind=kind: Fact(kind, value))
            for kind, pcoll in sorted(facts.items())
        ]
        root, header, rate, inputs = self._out_root, self._header, self._max_reject_rate, self._inputs
        previous = self._previous
        return (
            tagged
            | "AllFacts" >> beam.Flatten()
            | "Collect" >> beam.combiners.ToList()
            | "Write" >> beam.Map(lambda fs: write_manifest(
                OutputLayout(root), with_diff(assemble_manifest(json.loads(header), fs), root, previous), rate,
                inputs))
        )


def with_diff(manifest: dict, root: str, previous: Optional[tuple[str, str]]) -> dict:
    """The manifest with its `diff` against the previous version (transforms/previous.py), when
    there is one: keys added, removed and changed per split and class."""
    if previous is None:
        return manifest
    previous_root, previous_manifest = previous
    return {**manifest, "diff": {"from": manifest.get("previous"),
                                 **version_diff(previous_root, json.loads(previous_manifest), root, manifest)}}
