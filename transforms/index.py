"""The Parquet tables: the per-shard index (with duplicates and near-duplicates flagged) and the rejects.

Contracts:
  duplicate_links([HashEntry(sha256, key, split, shard_id)]) -> DuplicateLink(split, shard_id, key,
      duplicate_of) for every sample whose source bytes another key also has; duplicate_of is the
      key that sorts first, which itself stays unflagged.
  links_in_part([(split, shard_id, index file url)], part, parts) -> the DuplicateLinks of the
      samples in one part of the search (by the first 8 bytes of their digests, read from the
      index files' sha256 columns); the parts together give every link once
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
import typing
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.layout import OutputLayout
from transforms.records import (
    DuplicateLink,
    HashEntry,
    IndexFile,
    RejectsFile,
    ShardDuplicates,
)
from transforms.schema import INDEX_SCHEMA, rejects_to_table, rows_to_table, table_from_parquet_bytes
from transforms.storage import atomic_write

__all__ = ["duplicate_links", "digest_prefixes", "links_in_part", "write_index_file", "index_file_of",
           "flag_duplicates", "write_rejects_file", "index_place", "GatherIndexPlaces", "spread_parts",
           "FlagDuplicates", "WriteRejects"]


def duplicate_links(entries: Iterable[HashEntry]) -> list[DuplicateLink]:
    """Samples sharing one sha256: all but the first key (by key, then split) point to it."""
    group = sorted(entries, key=lambda e: (e.key, e.split))
    if len(group) < 2:
        return []
    first_key = group[0].key
    return [DuplicateLink(e.split, e.shard_id, e.key, first_key) for e in group[1:]]


# The duplicate search reads each index file's sha256 column and works on the first 8 bytes of
# each digest (a uint64: 8 bytes a sample); only the few digests whose prefix comes more than once
# are read whole, with their keys. It is shared out in parts by prefix (a sample belongs to part
# prefix % parts), so that a part holds its share of the prefixes, however many samples there are.
_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_PREFIX_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)


def digest_prefixes(sha256: pa.Array, where: str = "") -> np.ndarray:
    """The first 8 bytes of each hex sha256 digest, as uint64 (one per row, in order)."""
    sha256 = sha256.combine_chunks() if isinstance(sha256, pa.ChunkedArray) else sha256
    if not len(sha256):
        return np.empty(0, np.uint64)
    _, offsets, data = sha256.buffers()
    offset_type = np.int64 if sha256.type == pa.large_string() else np.int32
    ends = np.frombuffer(offsets, offset_type)[sha256.offset:sha256.offset + len(sha256) + 1]
    if sha256.null_count or not np.all(np.diff(ends) == 64):
        raise ValueError(f"{where}: a sha256 value is not 64 hex digits")
    text = np.frombuffer(data, np.uint8)[ends[0]:ends[-1]].reshape(-1, 64)[:, :16]
    nibbles = _HEX_VALUES[text]
    if (nibbles == 255).any():
        raise ValueError(f"{where}: a sha256 value is not lowercase hex")
    return np.bitwise_or.reduce(nibbles.astype(np.uint64) << _PREFIX_SHIFTS, axis=1)


def _index_columns(url: str, columns: list[str]) -> pa.Table:
    with fsspec.open(url, "rb") as f:
        # Decoded on this thread, not Arrow's (see schema.table_from_parquet_bytes).
        return pq.ParquetFile(f).read(columns=columns, use_threads=False)


def links_in_part(urls: Sequence[tuple[str, int, str]], part: int, parts: int) -> list[DuplicateLink]:
    """duplicate_links of every sample whose digest prefix is in part `part` of `parts`, over the
    index files `urls` ((split, shard_id, url) each): the digests' prefixes are read first (8 bytes
    a sample of the part), then the keys and whole digests of the rows whose prefix comes twice
    (only the files that hold such a row are read again). About 0.5 s of one core for a million
    samples in 221 files, where the shuffle of (key, digest) records it replaced held 36 bytes a
    sample in the local runner's driver."""
    mine = []  # each file's prefixes in this part
    for _, _, url in urls:
        prefixes = digest_prefixes(_index_columns(url, ["sha256"]).column("sha256"), url)
        mine.append(prefixes[prefixes % np.uint64(parts) == part])
    every = np.sort(np.concatenate(mine or [np.empty(0, np.uint64)]))
    repeated = np.unique(every[1:][every[1:] == every[:-1]])
    del every
    by_sha = collections.defaultdict(list)
    for (split, shard_id, url), prefixes in zip(urls, mine):
        if not np.isin(prefixes, repeated).any():
            continue  # no candidate in this file: not read again
        table = _index_columns(url, ["key", "sha256"])
        rows = np.flatnonzero(np.isin(digest_prefixes(table.column("sha256"), url), repeated))
        chosen = table.take(pa.array(rows))
        for key, sha in zip(chosen.column("key").to_pylist(), chosen.column("sha256").to_pylist()):
            by_sha[sha].append(HashEntry(sha, key, split, shard_id))
    return [link for sha in sorted(by_sha) if len(by_sha[sha]) > 1 for link in duplicate_links(by_sha[sha])]


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


def index_place(index: IndexFile) -> tuple:
    """(split, shard_id, the index file's path relative to the version): what the searches that read
    the index files once every shard is written (duplicates, near-duplicates) gather."""
    return index.split, index.shard_id, index.path


class GatherIndexPlaces(beam.PTransform):
    """IndexFile -> one list of every index file's index_place (a few dozen bytes a shard; ToList: one
    element even for a build of no samples)."""

    def expand(self, index_files):
        return (index_files
                | "IndexPlaces" >> beam.Map(index_place)
                | "GatherPlaces" >> beam.combiners.ToList().with_output_types(typing.List[typing.Tuple]))


def spread_parts(pipeline: beam.Pipeline, count: int) -> beam.PCollection:
    """The part numbers 0 .. count - 1 as elements grouped by themselves, so that the local runner
    deals them out one a worker (transforms/segments.py) and other runners spread them."""
    return (pipeline
            | "Parts" >> beam.Create([(i, i) for i in range(count)])
            | "SpreadParts" >> beam.GroupByKey()
            | "PartNumber" >> beam.MapTuple(lambda part, _: part))


class FlagDuplicates(beam.PTransform):
    """IndexFile (every shard's) -> ShardDuplicates for each shard that holds a duplicate, after its
    index file is rewritten (with the file's new sha256).

    Applied to {"index": those, "near_links": ((split, shard_id), ("near_duplicate_of", ((key,
    other key), ...)))} (FindNearDuplicates' links), it sets near_duplicate_of in the same rewrite:
    a shard that holds either is rewritten once, with both columns.

    The duplicates are found by links_in_part, in `parts` parts (the local runner's workers), each
    reading the index files' sha256 columns: what crosses a shuffle is the files' places and the
    few links, never a record per sample. A part holds 16 bytes a sample of its share at its peak
    (the prefixes and their sorted copy): ~114 MB in each of two parts for ImageNet-21k's 14.2M
    samples, for a moment. (Before, each shard's keys and digests were shuffled by hash bucket, 36
    bytes a sample, which Beam's local runner holds in the driver for the whole of WriteShards:
    ~36 MB at 1M samples, ~0.5 GB for ImageNet-21k.)
    """

    def __init__(self, out_root: str, parts: int = 1):
        super().__init__()
        self._out_root = out_root
        self._parts = max(1, parts)

    def expand(self, inputs):
        root, count = self._out_root, self._parts
        if isinstance(inputs, dict):
            index_files, near_links = inputs["index"], inputs.get("near_links")
        else:
            index_files, near_links = inputs, None
        places = index_files | "GatherIndexPlaces" >> GatherIndexPlaces()

        def links_of_part(part: int, places: list) -> list:
            layout = OutputLayout(root)
            return links_in_part([(split, shard_id, layout.url(path)) for split, shard_id, path in places],
                                 part, count)

        links = (
            spread_parts(index_files.pipeline, count)
            | "LinkDuplicates" >> beam.FlatMap(links_of_part, beam.pvalue.AsSingleton(places))
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
