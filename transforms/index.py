"""The Parquet tables: the per-shard index (with duplicates and near-duplicates flagged) and the rejects.

Contracts:
  duplicate_links([HashEntry(sha256, key, split, shard_id)]) -> DuplicateLink(split, shard_id, key,
      duplicate_of) for every sample whose source bytes another key also has; duplicate_of is the
      key that sorts first, which itself stays unflagged.
  write_index_file(rows of one shard, {key: duplicate_of}) -> IndexFile (with the file's size and
      sha256; the shard writer calls it with no duplicates: they are known only once every shard
      is done)
  flag_duplicates(one shard's index file, {key: duplicate_of}, {key: near_duplicate_of}) ->
      ShardDuplicates: the numbers flagged, and the size and sha256 of the file rewritten in place
      (atomically) with duplicate_of and near_duplicate_of set, which the manifest records instead
      of the IndexFile's. The near-duplicates come from transforms/near_duplicate_search.py; a
      shard's file is rewritten once, with both columns, whichever it holds.
  write_rejects_file(rejects of one split) -> RejectsFile
Index files sit next to their shard (train/train-000003.parquet for train-000003.tar),
rows in the shard's order; one rejects file per split, one folder deeper (rejects/train/), so
that the glob `*/*.parquet` in a version reads only index files.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
from typing import Iterable, Optional

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.layout import OutputLayout
from transforms.records import (
    DuplicateLink,
    HashBatch,
    HashEntry,
    IndexFile,
    RejectsFile,
    ShardDuplicates,
    from_shuffle,
    to_shuffle,
)
from transforms.schema import INDEX_SCHEMA, rejects_to_table, rows_to_table, table_from_parquet_bytes
from transforms.storage import atomic_write

__all__ = ["duplicate_links", "hash_buckets", "links_in_bucket", "write_index_file", "index_file_of",
           "flag_duplicates", "write_rejects_file", "FlagDuplicates", "WriteRejects"]


def duplicate_links(entries: Iterable[HashEntry]) -> list[DuplicateLink]:
    """Samples sharing one sha256: all but the first key (by key, then split) point to it."""
    group = sorted(entries, key=lambda e: (e.key, e.split))
    if len(group) < 2:
        return []
    first_key = group[0].key
    return [DuplicateLink(e.split, e.shard_id, e.key, first_key) for e in group[1:]]


# The duplicate search shuffles (sha256, key) records by sha256: bucketed by the digest's first
# hex digit, one element carries a shard's records of a bucket (up to 16 elements per shard,
# whatever its size) instead of one element per sample.
HASH_BUCKETS = 16


def hash_buckets(rows, shard_id: int) -> list[tuple[int, bytes]]:
    """[(bucket, to_shuffle(HashBatch))] for one shard's index rows (all of one split): about 37
    bytes a sample in the shuffle, where a tuple of HashEntry took about 48."""
    buckets = collections.defaultdict(list)
    for r in rows:
        buckets[int(r.sha256[0], 16) % HASH_BUCKETS].append(r)
    return [(b, to_shuffle(HashBatch(chosen[0].split, shard_id, tuple(r.key for r in chosen),
                                     b"".join(bytes.fromhex(r.sha256) for r in chosen))))
            for b, chosen in sorted(buckets.items())]


def links_in_bucket(batches: Iterable[bytes]) -> list[DuplicateLink]:
    """duplicate_links for every sha256 of a bucket: its shards' record batches, merged."""
    by_sha = collections.defaultdict(list)
    for packed in batches:
        batch = from_shuffle(packed)
        for i, key in enumerate(batch.keys):
            by_sha[batch.digests[32 * i:32 * (i + 1)]].append((key, batch.split, batch.shard_id))
    # Raw digests sort as their hex text does: the links come in the same order.
    return [link for sha in sorted(by_sha) if len(by_sha[sha]) > 1
            for link in duplicate_links(HashEntry(sha.hex(), key, split, shard) for key, split, shard in by_sha[sha])]


def _write_parquet(layout: OutputLayout, relative: str, table) -> tuple[int, str]:
    """Write a table; return the file's size and sha256 (a shard's index is a few hundred kB)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue()
    with atomic_write(layout.url(relative)) as f:
        f.write(data)
    return len(data), hashlib.sha256(data).hexdigest()


def write_index_file(layout: OutputLayout, split: str, shard_id: int, rows: list, duplicate_of: dict) -> IndexFile:
    rows = sorted(rows, key=lambda r: r.offset)
    if duplicate_of:
        rows = [dataclasses.replace(r, duplicate_of=duplicate_of.get(r.key)) for r in rows]
    relative = layout.index(split, shard_id)
    size, digest = _write_parquet(layout, relative, rows_to_table(rows))
    return index_file_of(split, shard_id, relative, rows, size, digest)


def index_file_of(split: str, shard_id: int, relative: str, rows: list, size: int, digest: str) -> IndexFile:
    """The facts of an index file holding `rows`, of `size` bytes with that sha256."""
    return IndexFile(split, shard_id, relative, len(rows), sum(1 for r in rows if r.duplicate_of),
                     with_boxes=sum(1 for r in rows if r.has_boxes), boxes=sum(len(r.boxes) for r in rows),
                     label_disagreements=sum(1 for r in rows if r.label_disagrees), bytes=size, sha256=digest)


def flag_duplicates(layout: OutputLayout, split: str, shard_id: int, duplicate_of: dict,
                    near_duplicate_of: Optional[dict] = None) -> ShardDuplicates:
    """Set duplicate_of and near_duplicate_of in one shard's index file for the keys in
    `duplicate_of` and `near_duplicate_of` (every other row gets null); return how many of each,
    and the rewritten file's size and sha256.

    A read-modify-write of a file of a few thousand rows, done only for shards that hold a
    duplicate or a near-duplicate; a retry rewrites the same values."""
    relative = layout.index(split, shard_id)
    with fsspec.open(layout.url(relative), "rb") as f:
        table = table_from_parquet_bytes(f.read(), INDEX_SCHEMA)
    keys = table.column("key").to_pylist()
    flagged = []
    for name, links in (("duplicate_of", duplicate_of), ("near_duplicate_of", near_duplicate_of or {})):
        values = pa.array([links.get(k) for k in keys], pa.string())
        column = INDEX_SCHEMA.get_field_index(name)
        table = table.set_column(column, INDEX_SCHEMA.field(column), values)
        flagged.append(len(values) - values.null_count)
    size, digest = _write_parquet(layout, relative, table)
    return ShardDuplicates(split, shard_id, flagged[0], size, digest, flagged[1])


def write_rejects_file(layout: OutputLayout, split: str, rejects: list, kind: str = "images") -> RejectsFile:
    """kind "images": the images' rejects table; "annotations": the annotation files set aside."""
    rejects = sorted(rejects)
    relative = layout.rejects(split) if kind == "images" else layout.annotation_rejects(split)
    _write_parquet(layout, relative, rejects_to_table(rejects))
    by_reason = dict(sorted(collections.Counter(r.reason for r in rejects).items()))
    return RejectsFile(split, relative, len(rejects), by_reason, kind)


# --- Beam wiring -------------------------------------------------------------------

def _rewrite_index(root: str, shard: tuple, links) -> ShardDuplicates:
    """links: (column, ((key, value), ...)) records, column "duplicate_of" or "near_duplicate_of"."""
    split, shard_id = shard
    values: dict = {"duplicate_of": {}, "near_duplicate_of": {}}
    for column, pairs in links:
        values[column].update(pairs)
    return flag_duplicates(OutputLayout(root), split, shard_id, values["duplicate_of"], values["near_duplicate_of"])


class FlagDuplicates(beam.PTransform):
    """(bucket, to_shuffle((HashEntry, ...))) (hash_buckets of each shard) -> ShardDuplicates for
    each shard that holds a duplicate, after its index file is rewritten (with the file's new sha256).

    Applied to {"hashes": those, "near_links": ((split, shard_id), ("near_duplicate_of", ((key,
    other key), ...)))} (FindNearDuplicates' links), it sets near_duplicate_of in the same rewrite:
    a shard that holds either is rewritten once, with both columns.

    Only these small records are shuffled (by bucket, then the few links by shard): the rows
    themselves stay in the files the shard writers made.
    """

    def __init__(self, out_root: str):
        super().__init__()
        self._out_root = out_root

    def expand(self, inputs):
        root = self._out_root
        if isinstance(inputs, dict):
            hashes, near_links = inputs["hashes"], inputs.get("near_links")
        else:
            hashes, near_links = inputs, None
        links = (
            hashes
            | "GroupByBucket" >> beam.GroupByKey()
            | "LinkDuplicates" >> beam.FlatMapTuple(lambda bucket, batches: links_in_bucket(batches))
            | "KeyLinkByShard" >> beam.Map(
                lambda link: ((link.split, link.shard_id), ("duplicate_of", ((link.key, link.duplicate_of),))))
        )
        if near_links is not None:
            links = (links, near_links) | "AllLinks" >> beam.Flatten()
        return (
            links
            | "GroupByShard" >> beam.GroupByKey()
            | "RewriteIndex" >> beam.MapTuple(lambda shard, links: _rewrite_index(root, shard, links))
        )


class WriteRejects(beam.PTransform):
    """Reject -> RejectsFile, one Parquet file per split that has rejects. kind "images": the
    samples' rejects table; "annotations": the annotation files set aside."""

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
