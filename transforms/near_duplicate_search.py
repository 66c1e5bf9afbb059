"""FindNearDuplicates: the pairs of samples whose perceptual hashes are close, over the whole build.

Contracts:
    shard_hashes(split, shard_id, keys, phashes) -> ShardHashes: one shard's keys (fixed-width
        UTF-8 bytes) and hashes (uint64, from the index's int64 phash values), in the same order
    read_shard_hashes(url, split, shard_id) -> ShardHashes of one index file (its key and phash
        columns only): the search reads the index files that WriteShards wrote (a resumed or copied
        shard's too), so that no hash crosses a shuffle
    search_batches(shards, max_distance) -> NearDuplicates: every pair of samples whose hashes
        (transforms/phash.py) differ in at most max_distance bits, found by the exact band search
        of transforms/near_duplicates.py; for each sample in a pair, the key (sorting first) of
        its nearest other sample; the pairs counted per pair of splits ("train-val", ...)
    write_near_duplicates(layout, found, max_distance) -> NearDuplicatesFile: near-duplicates.parquet
        (schema.NEAR_DUPLICATES_SCHEMA) beside the manifest, with its size and sha256
    ordered_hashes(shards) -> every hash in the order of the keys (8 bytes a sample)
    search_part(hashes, max_distance, (i, n)) -> the pairs (as positions) of the i-th of n parts of
        the search, which search_batches merges (the search shared out over n workers)
    FindNearDuplicates(out_root, max_distance, parts): IndexFile -> {"file": NearDuplicatesFile,
        "links": ((split, shard_id), ("near_duplicate_of", ((key, other key), ...)))}, the links
        of each shard that holds a near-duplicate, which FlagDuplicates (transforms/index.py)
        writes into the index files in the same rewrite as duplicate_of

The search runs once every shard is written: the index files' places gathered into one element
(a few dozen bytes a shard), the hashes read from the index files and put in the order of the
keys, the buckets shared out over `parts` workers (each reads the ordered hashes, 8 bytes a
sample), then one worker reads the index files again, merges the pairs and writes the file.
Why the index files and not a shuffle of each shard's keys and hashes (27 bytes a sample, what
this stage did before): Beam's local runner holds a shuffle's data in the driver, and a worker
keeps the last element it processed while its DoFn has a side input, so a 1M build held the
batches (~19 MB) in the driver and twice more in the worker that searched (37 MiB); ImageNet-21k
would hold ~270 MB in the driver and twice that in a worker. The other way, sending each sample
to its max_distance + 1 buckets (band_index, band_value) and searching the buckets on many
workers, shuffles a record per sample per band (328 bytes a sample).
benchmarks/near_duplicates_bench.py measures the search on a million random hashes (1,000 close
pairs planted) at the default distance 8:
  * time: about 11 s of one core for the million, nearly all of it the search (the sort of the
    keys and the links take about a second), about 15 s for ImageNet-1k, once every shard is
    written; shared out over 2 workers, about half of that each;
  * memory: the worker that orders the hashes and the one that merges the parts hold every key
    as fixed-width UTF-8 bytes (~30 bytes a sample; as Python strings they took ~100), the
    hashes, splits, shards and the order as arrays (~26 bytes); a part holds the ordered hashes
    (8 bytes a sample) and the search's own ~40 bytes a sample (its numpy arrays alone peak at
    19 MB in one part of two over a million hashes).
The search is exact (near_duplicates.py); a group of more than IDENTICAL_GROUP_LIMIT identical
hashes (blank images all hash to 0) is listed as a star, the pairs left out counted as
`unlisted`, and near_duplicate_of stays exact.
"""
from __future__ import annotations

import hashlib
import io
import itertools
from typing import Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam import pvalue

from transforms.index import GatherIndexPlaces, spread_parts
from transforms.layout import NEAR_DUPLICATES_NAME, OutputLayout
from transforms.near_duplicates import merge_parts, search_indices
from transforms.records import NearDuplicatesFile, from_shuffle, to_shuffle
from transforms.schema import NEAR_DUPLICATES_SCHEMA
from transforms.storage import atomic_write

__all__ = ["ShardHashes", "NearDuplicates", "shard_hashes", "read_shard_hashes", "split_pair", "ordered_hashes",
           "search_part", "search_batches", "write_near_duplicates", "FindNearDuplicates"]

# The order of the splits in a pair's name ("train-val", not "val-train"); other splits come after
# these, in alphabetical order.
SPLIT_ORDER = ("train", "val", "test")


class ShardHashes(NamedTuple):
    """One shard's samples for the search: their keys as fixed-width UTF-8 bytes (a numpy "S"
    array: ~30 bytes a key, where a str takes ~70) and their hashes (uint64), in the same order."""

    split: str
    shard_id: int
    keys: np.ndarray
    hashes: np.ndarray


class NearDuplicates(NamedTuple):
    """What the search found: the pairs as columns (schema.NEAR_DUPLICATES_SCHEMA's, rows sorted),
    the links that the index files take, and the counts."""

    columns: dict  # {"key_a": [...], "split_a": [...], "key_b": [...], "split_b": [...], "distance": [...]}
    links: dict  # {(split, shard_id): {key: near_duplicate_of}}
    by_split_pair: dict  # {"train-val": pairs, ...}
    samples: int
    unlisted: int


def shard_hashes(split: str, shard_id: int, keys: Iterable[str], phashes: Iterable[int]) -> ShardHashes:
    """A shard's ShardHashes from its keys and their phash values as the index stores them
    (signed int64, phash.to_int64)."""
    encoded = [key.encode("utf-8", "surrogateescape") for key in keys]
    values = np.asarray(phashes if isinstance(phashes, np.ndarray) else list(phashes), dtype=np.int64)
    if len(values) != len(encoded):
        raise ValueError(f"{split} shard {shard_id}: {len(encoded)} keys but {len(values)} hashes")
    # An int64 and the uint64 of the same bits are the same hash (phash.from_int64).
    return ShardHashes(split, shard_id, np.array(encoded, dtype=bytes) if encoded else np.empty(0, "S1"),
                       values.view(np.uint64))


def read_shard_hashes(url: str, split: str, shard_id: int) -> ShardHashes:
    """The ShardHashes of one shard's index file (a local path or an fsspec URL): only its key
    and phash columns are read."""
    with fsspec.open(url, "rb") as f:
        # Decoded on this thread, not Arrow's, as the other readers of index files in a worker do
        # (see schema.table_from_parquet_bytes).
        table = pq.ParquetFile(f).read(columns=["key", "phash"], use_threads=False)
    return shard_hashes(split, shard_id, table.column("key").to_pylist(),
                        table.column("phash").to_numpy(zero_copy_only=False))


def _split_rank(split: str) -> tuple:
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def split_pair(a: str, b: str) -> str:
    """The name of a pair of splits: "train-val", "train-train", "val-test"..."""
    first, second = sorted((a, b), key=_split_rank)
    return f"{first}-{second}"


class _Samples(NamedTuple):
    """Every shard's samples, in the order of their batches sorted by (split, shard), and `order`:
    their positions in (key, split) order, which the search works in."""

    keys: np.ndarray  # each key in UTF-8, fixed width ("S"): ~30 bytes a key, where a str takes ~70
    splits: list  # the splits' names, sorted
    split_of: np.ndarray  # each sample's split, as its place in `splits`
    shard_of: np.ndarray
    hashes: np.ndarray  # uint64
    order: np.ndarray


def _samples(shards: Iterable[ShardHashes]) -> _Samples:
    # Each shard's keys are a fixed-width byte array as they are read, so that the keys of every
    # shard are never all Python strings at once.
    decoded = sorted((shard for shard in shards if len(shard.keys)), key=lambda b: (b.split, b.shard_id))
    splits = sorted({b.split for b in decoded})
    keys = np.concatenate([b.keys for b in decoded] or [np.empty(0, "S1")])
    split_of = np.concatenate([np.full(len(b.keys), splits.index(b.split), dtype=np.int16) for b in decoded]
                              or [np.empty(0, np.int16)])
    shard_of = np.concatenate([np.full(len(b.keys), b.shard_id, dtype=np.int32) for b in decoded]
                              or [np.empty(0, np.int32)])
    hashes = np.concatenate([b.hashes for b in decoded] or [np.empty(0, np.uint64)])
    del decoded  # each shard's arrays, now copied: not held through the sort below
    # In (key, split) order, which the search needs (its positions are the order of the keys): a
    # stable sort by key of samples already in the order of their splits' names. UTF-8 bytes sort
    # as their text does (code point order), so the byte array sorts as the keys would.
    order = np.argsort(keys, kind="stable").astype(np.int64)
    return _Samples(keys, splits, split_of, shard_of, hashes, order)


def _key(keys: np.ndarray, i: int) -> str:
    return bytes(keys[i]).decode("utf-8", "surrogateescape")


def ordered_hashes(shards: Iterable[ShardHashes]) -> bytes:
    """Every sample's hash in the samples' (key, split) order, as raw little-endian uint64: all that
    a part of the search needs (8 bytes a sample, where the keys take ~30 in a worker)."""
    samples = _samples(shards)
    return samples.hashes.astype("<u8", copy=False)[samples.order].tobytes()


def search_part(hashes: bytes, max_distance: int, part: tuple[int, int]) -> bytes:
    """to_shuffle(IndexPairs) of part (i, n) of the search (near_duplicates.search_indices) of
    ordered_hashes' array, on positions in the samples' (key, split) order: what one of n workers
    finds."""
    # Read in place (little-endian uint64 is numpy's uint64 here): no copy of the 8 bytes a sample.
    return to_shuffle(search_indices(np.frombuffer(hashes, dtype="<u8").astype(np.uint64, copy=False), max_distance,
                                     part=part))


def search_batches(shards: Iterable[ShardHashes], max_distance: int, parts: Optional[Iterable[bytes]] = None
                   ) -> NearDuplicates:
    """See the module docstring. `shards`: every shard's ShardHashes, in any order; `parts`:
    search_part's of every part of the search, when the search was shared out (else it runs here)."""
    keys, splits, split_of, shard_of, hashes, order = _samples(shards)
    count = len(keys)
    if parts is None:
        found = search_indices(hashes[order].astype(np.uint64), max_distance)
    else:
        found = merge_parts(from_shuffle(p) for p in parts)
    first, second = order[found.first], order[found.second]
    names = [split_pair(a, b) for a, b in itertools.combinations_with_replacement(splits, 2)]
    by_split_pair = dict.fromkeys(sorted(names, key=lambda n: [_split_rank(s) for s in n.split("-", 1)]), 0)
    if len(first):
        combos, counts = np.unique(np.stack([split_of[first], split_of[second]]), axis=1, return_counts=True)
        for (a, b), n in zip(combos.T.tolist(), counts.tolist()):
            by_split_pair[split_pair(splits[a], splits[b])] += n
    columns = {"key_a": [_key(keys, i) for i in first.tolist()],
               "split_a": [splits[i] for i in split_of[first].tolist()],
               "key_b": [_key(keys, i) for i in second.tolist()],
               "split_b": [splits[i] for i in split_of[second].tolist()],
               "distance": found.distance.tolist()}
    links = _nearest_links(found.first, found.second, found.distance, order, keys, splits, split_of, shard_of)
    return NearDuplicates(columns, links, by_split_pair, count, found.unlisted)


def _nearest_links(first, second, distance, order, keys, splits, split_of, shard_of) -> dict:
    """{(split, shard_id): {key: the key of its nearest other sample}}, the nearest sorting first
    among equals. first, second: positions in (key, split) order, so the smaller is the one
    sorting first."""
    owner = np.concatenate([first, second])
    other = np.concatenate([second, first])
    d = np.concatenate([distance, distance])
    chosen = np.lexsort((other, d, owner))
    owner, other = owner[chosen], other[chosen]
    best = np.ones(len(owner), dtype=bool)
    best[1:] = owner[1:] != owner[:-1]  # the first row of each owner: the nearest, then the first key
    links: dict = {}
    for mine, theirs in zip(order[owner[best]].tolist(), order[other[best]].tolist()):
        links.setdefault((splits[int(split_of[mine])], int(shard_of[mine])), {})[_key(keys, mine)] = _key(keys, theirs)
    return links


def write_near_duplicates(layout: OutputLayout, found: NearDuplicates, max_distance: int) -> NearDuplicatesFile:
    """Write near-duplicates.parquet beside the manifest; return its record."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(found.columns, schema=NEAR_DUPLICATES_SCHEMA), buffer, compression="zstd")
    data = buffer.getvalue()
    with atomic_write(layout.url(NEAR_DUPLICATES_NAME)) as f:
        f.write(data)
    return NearDuplicatesFile(NEAR_DUPLICATES_NAME, max_distance, found.samples, len(found.columns["key_a"]),
                              found.unlisted, found.by_split_pair, len(data), hashlib.sha256(data).hexdigest())


# --- Beam wiring -------------------------------------------------------------------

def _read_shards(out_root: str, places: Iterable[tuple]) -> Iterator[ShardHashes]:
    """The ShardHashes of each (split, shard_id, index file relative to the manifest), read in turn."""
    layout = OutputLayout(out_root)
    for split, shard_id, relative in places:
        yield read_shard_hashes(layout.url(relative), split, shard_id)


@beam.typehints.with_output_types(NearDuplicatesFile)
class _SearchFn(beam.DoFn):
    """[(split, shard_id, index file), ...] (every shard's) and the search's parts ->
    NearDuplicatesFile; links -> each shard's links."""

    def __init__(self, out_root: str, max_distance: int):
        self._out_root = out_root
        self._max_distance = max_distance

    def process(self, places, parts):
        found = search_batches(_read_shards(self._out_root, places), self._max_distance, parts)
        beam.metrics.Metrics.counter("near_duplicates", "pairs").inc(len(found.columns["key_a"]))
        yield write_near_duplicates(OutputLayout(self._out_root), found, self._max_distance)
        for shard, links in sorted(found.links.items()):
            yield pvalue.TaggedOutput("links", (shard, ("near_duplicate_of", tuple(sorted(links.items())))))


class FindNearDuplicates(beam.PTransform):
    """See the module docstring. Applied to WriteShards' IndexFile records, once every shard's
    index file is written. The files' places are gathered into one element (ToList: one element
    even for a build of no samples, so that the file is always written). The search is shared
    out in `parts` (the local runner's workers: one key each, as transforms/segments.py deals
    them): one worker reads the hashes and puts them in the order of the keys (ordered_hashes),
    each part reads that array as a side input and searches its share of the buckets, and one
    worker then reads the index files' keys again, merges the parts' pairs and writes the file.
    Shared out over 2 workers, each searches half of the buckets. OrderHashes and SearchPairs each
    read the files: handing the arrays from one step to the other (tried) kept them in the runner
    between the steps, and a 1M build's tree peaked 143 MiB higher."""

    def __init__(self, out_root: str, max_distance: int, parts: int = 1):
        super().__init__()
        self._out_root = out_root
        self._search = _SearchFn(out_root, max_distance)
        self._max_distance = max_distance
        self._parts = max(1, parts)

    def expand(self, index_files):
        root, max_distance, count = self._out_root, self._max_distance, self._parts
        gathered = index_files | "GatherIndexPlaces" >> GatherIndexPlaces()
        ordered = gathered | "OrderHashes" >> beam.Map(lambda places: ordered_hashes(_read_shards(root, places)))
        parts = (
            spread_parts(index_files.pipeline, count)
            | "SearchPart" >> beam.Map(lambda part, hashes: search_part(hashes, max_distance, (part, count)),
                                       beam.pvalue.AsSingleton(ordered))
        )
        searched = gathered | "SearchPairs" >> beam.ParDo(self._search, beam.pvalue.AsList(parts)).with_outputs(
            "links", main="file")
        return {"file": searched.file, "links": searched.links}
