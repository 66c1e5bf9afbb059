"""The Parquet tables: the per-shard index (with duplicates flagged) and the rejects.

Contracts:
  duplicate_links([(sha256, key, split, shard_id)]) -> (split, shard_id, key, duplicate_of)
      for every sample whose source bytes another key also has; duplicate_of is the key
      that sorts first, which itself stays unflagged.
  write_index_file(rows of one shard, {key: duplicate_of}) -> IndexFile
  write_rejects_file(rejects of one split) -> RejectsFile
Index files sit next to their shard (train/train-000003.parquet for train-000003.tar),
rows in the shard's order; one rejects file per split.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterable

import pyarrow.parquet as pq

from transforms.layout import OutputLayout
from transforms.schema import rejects_to_table, rows_to_table
from transforms.storage import atomic_write

__all__ = ["IndexFile", "RejectsFile", "duplicate_links", "write_index_file", "write_rejects_file"]


@dataclasses.dataclass(frozen=True)
class IndexFile:
    split: str
    shard_id: int
    path: str  # relative to the manifest
    rows: int
    duplicates: int
    with_boxes: int = 0  # samples with at least one box
    boxes: int = 0
    label_disagreements: int = 0


@dataclasses.dataclass(frozen=True)
class RejectsFile:
    split: str
    path: str
    rows: int
    by_reason: dict
    kind: str = "images"  # "images" | "annotations"


def duplicate_links(entries: Iterable[tuple]) -> list[tuple]:
    """Samples sharing one sha256: all but the first key (by key, then split) point to it."""
    group = sorted(entries, key=lambda e: (e[1], e[2]))
    if len(group) < 2:
        return []
    first_key = group[0][1]
    return [(split, shard_id, key, first_key) for _sha, key, split, shard_id in group[1:]]


def _write_parquet(layout: OutputLayout, relative: str, table) -> None:
    with atomic_write(layout.url(relative)) as f:
        pq.write_table(table, f, compression="zstd")


def write_index_file(layout: OutputLayout, split: str, shard_id: int, rows: list, duplicate_of: dict) -> IndexFile:
    rows = sorted(rows, key=lambda r: r.offset)
    if duplicate_of:
        rows = [dataclasses.replace(r, duplicate_of=duplicate_of.get(r.key)) for r in rows]
    relative = layout.index(split, shard_id)
    _write_parquet(layout, relative, rows_to_table(rows))
    return IndexFile(split, shard_id, relative, len(rows), sum(1 for r in rows if r.duplicate_of),
                     with_boxes=sum(1 for r in rows if r.has_boxes), boxes=sum(len(r.boxes) for r in rows),
                     label_disagreements=sum(1 for r in rows if r.label_disagrees))


def write_rejects_file(layout: OutputLayout, split: str, rejects: list, kind: str = "images") -> RejectsFile:
    """kind "images": the images' rejects table; "annotations": the annotation files set aside."""
    rejects = sorted(rejects)
    relative = layout.rejects(split) if kind == "images" else layout.annotation_rejects(split)
    _write_parquet(layout, relative, rejects_to_table(rejects))
    by_reason = dict(sorted(collections.Counter(r.reason for r in rejects).items()))
    return RejectsFile(split, relative, len(rejects), by_reason, kind)


# --- Beam wiring -------------------------------------------------------------------

import apache_beam as beam  # noqa: E402


def _write_index(layout_root: str):
    def write(task_key, grouped):
        rows = [row for batch in grouped["rows"] for row in batch]
        duplicate_of = dict(grouped["links"])
        return write_index_file(OutputLayout(layout_root), task_key[0], task_key[1], rows, duplicate_of)
    return write


class WriteIndex(beam.PTransform):
    """(ShardTask, [IndexRow]) -> IndexFile, one Parquet file per shard, duplicates flagged.

    Duplicates are found by a shuffle of (sha256, key) pairs only; the flags then join the
    rows of their shard. Rows cross one shuffle (to meet their flags), images none.
    """

    def __init__(self, out_root: str):
        super().__init__()
        self._out_root = out_root

    def expand(self, shard_rows):
        by_shard = shard_rows | "KeyByShard" >> beam.MapTuple(lambda task, rows: ((task.split, task.shard_id), rows))
        links = (
            shard_rows
            | "HashesOfShard" >> beam.FlatMapTuple(
                lambda task, rows: [(r.sha256, (r.sha256, r.key, r.split, task.shard_id)) for r in rows])
            | "GroupBySha256" >> beam.GroupByKey()
            | "LinkDuplicates" >> beam.FlatMapTuple(lambda sha, entries: duplicate_links(entries))
            | "KeyLinkByShard" >> beam.Map(lambda link: ((link[0], link[1]), (link[2], link[3])))
        )
        return (
            {"rows": by_shard, "links": links}
            | "JoinLinks" >> beam.CoGroupByKey()
            | "WriteParquet" >> beam.MapTuple(_write_index(self._out_root))
        )


class WriteRejects(beam.PTransform):
    """Reject | AnnotationReject -> RejectsFile, one Parquet file per split that has rejects."""

    def __init__(self, out_root: str, kind: str = "images"):
        super().__init__()
        self._out_root = out_root
        self._kind = kind

    def expand(self, rejects):
        root, kind = self._out_root, self._kind
        return (
            rejects
            | "KeyBySplit" >> beam.Map(lambda r: (r.split, r))
            | "GroupBySplit" >> beam.GroupByKey()
            | "WriteParquet" >> beam.MapTuple(
                lambda split, rs: write_rejects_file(OutputLayout(root), split, list(rs), kind))
        )
