"""The output tables: one Arrow schema per table, kept here and nowhere else.

Other tools rely on these names and types (see README "Output contract"); the tests
compare them to a golden list.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["IndexRow", "INDEX_SCHEMA", "DATASET_COLUMNS", "REJECTS_SCHEMA", "NEAR_DUPLICATES_SCHEMA", "as_dict",
           "with_offset", "rows_to_table", "rejects_to_table", "table_from_parquet_bytes",
           "table_from_parquet_files"]

# A bounding box: [xmin, ymin, xmax, ymax], normalised to [0, 1] in the stored image's frame.
BOX_TYPE = pa.list_(pa.float32())

INDEX_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),  # shard path relative to the manifest
    pa.field("offset", pa.int64(), nullable=False),  # of the .jpg payload inside the shard
    pa.field("size", pa.int64(), nullable=False),  # of the .jpg payload
    pa.field("label", pa.int64(), nullable=False),  # -1 when unlabeled
    pa.field("wnid", pa.string()),
    pa.field("width", pa.int32(), nullable=False),  # of the stored image
    pa.field("height", pa.int32(), nullable=False),
    pa.field("orig_width", pa.int32(), nullable=False),  # of the source image
    pa.field("orig_height", pa.int32(), nullable=False),
    pa.field("orig_format", pa.string(), nullable=False),
    pa.field("orig_mode", pa.string(), nullable=False),
    pa.field("reencoded", pa.bool_(), nullable=False),  # False: source bytes stored as they were
    pa.field("sha256", pa.string(), nullable=False),  # of the source bytes
    pa.field("duplicate_of", pa.string()),  # key (sorting first) with the same source bytes, or null
    pa.field("exif_orientation", pa.int32()),  # EXIF Orientation of the source (not applied), or null
    pa.field("boxes", pa.list_(BOX_TYPE), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # where the source bytes came from
    pa.field("has_boxes", pa.bool_(), nullable=False),  # at least one box joined from the annotations
    pa.field("box_names", pa.list_(pa.string()), nullable=False),  # object name of each box, as written
    pa.field("loc_blacklisted", pa.bool_(), nullable=False),  # in the devkit's localisation blacklist (val)
    pa.field("label_disagrees", pa.bool_(), nullable=False),  # annotation WNIDs exist and miss the label
    # the sample's own class: label and wnid unless --label-level gives them the coarse class's
    pa.field("fine_label", pa.int64(), nullable=False),
    pa.field("fine_wnid", pa.string()),
    # the perceptual hash of the stored pixels (transforms/phash.py), a 64-bit value stored as a
    # signed int64 (phash.to_int64: values of 2**63 and above become negative; the tool's hashes
    # keep bit 63 clear, so they are stored as they are): phash.from_int64 gives the value back
    pa.field("phash", pa.int64(), nullable=False),
    # key (sorting first) of the nearest other sample within --near-duplicate-distance, or null
    pa.field("near_duplicate_of", pa.string()),
])

# The columns known only once every shard is written (a property of the whole dataset): set when the
# index files are rewritten (transforms/index.py), and never in a sample's .json.
DATASET_COLUMNS = ("duplicate_of", "near_duplicate_of")

REJECTS_SCHEMA = pa.schema([
    pa.field(name, pa.string(), nullable=False) for name in ("key", "split", "source", "reason", "detail")
])

# near-duplicates.parquet: every pair of samples whose hashes are within --near-duplicate-distance,
# (key_a, split_a) sorting before (key_b, split_b), rows in that order.
NEAR_DUPLICATES_SCHEMA = pa.schema([
    pa.field("key_a", pa.string(), nullable=False),
    pa.field("split_a", pa.string(), nullable=False),
    pa.field("key_b", pa.string(), nullable=False),
    pa.field("split_b", pa.string(), nullable=False),
    pa.field("distance", pa.int32(), nullable=False),  # bits in which the two hashes differ
])


@dataclasses.dataclass(frozen=True)
class IndexRow:
    """One sample of the index; also, less the DATASET_COLUMNS and with no null (shard_writer.JSON_FOR_NULL),
    the sample's `.json` in its shard."""

    key: str
    split: str
    shard: str
    offset: int
    size: int
    label: int
    wnid: Optional[str]
    width: int
    height: int
    orig_width: int
    orig_height: int
    orig_format: str
    orig_mode: str
    reencoded: bool
    sha256: str
    duplicate_of: Optional[str]
    exif_orientation: Optional[int]
    boxes: tuple
    source: str
    has_boxes: bool = False
    box_names: tuple = ()
    loc_blacklisted: bool = False
    label_disagrees: bool = False
    fine_label: int = -1
    fine_wnid: Optional[str] = None
    # Keyword-only and without a default, so that no row is made without its hash.
    phash: int = dataclasses.field(kw_only=True)  # phash.to_int64 of the image's hash
    near_duplicate_of: Optional[str] = None


_FIELD_NAMES: dict[type, tuple] = {}  # a dataclass -> its fields' names, in order


def _field_names(cls: type) -> tuple:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def as_dict(record) -> dict:
    """A record's fields as a dict. Shallow: dataclasses.asdict deep-copies every value, which
    costs more per sample than hashing its image (and the field names are looked up once a class:
    dataclasses.fields costs ~5 us a call)."""
    return {name: getattr(record, name) for name in _field_names(type(record))}


def with_offset(row: IndexRow, offset: int) -> IndexRow:
    """The row with its `offset` set: a copy of its fields, without dataclasses.replace's call of
    __init__ with every field (~6 us a sample, against ~1)."""
    new = object.__new__(IndexRow)
    new.__dict__.update(row.__dict__)
    object.__setattr__(new, "offset", offset)
    return new


def rows_to_table(rows) -> pa.Table:
    """The index table of `rows`, built column by column (the same table as from_pylist of each
    row's dict, for half the time)."""
    rows = list(rows)
    return pa.Table.from_pydict({name: [getattr(r, name) for r in rows] for name in INDEX_SCHEMA.names},
                                schema=INDEX_SCHEMA)


def rejects_to_table(rejects) -> pa.Table:
    return pa.Table.from_pylist([as_dict(r) for r in rejects], schema=REJECTS_SCHEMA)


def table_from_parquet_bytes(data: bytes, schema: Optional[pa.Schema] = None) -> pa.Table:
    """A Parquet file held in memory, as a table, decoded on the calling thread (with `schema`: its
    columns, in that order and of those types, as one of this tool's own files has). With Arrow's threads
    (`pq.read_table`, or `use_threads`), one of them may drop the last reference to `data` after a
    command has returned, as Python shuts down; it cannot take the GIL then, and the process aborts
    ("terminate called without an active exception": 3 runs of `verify` in 20 did). The files read
    so (index and rejects files) are small, and their readers have threads of their own."""
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    return table.select(schema.names).cast(schema) if schema is not None else table


def table_from_parquet_files(fs, paths: list[str]) -> pa.Table:
    """The Parquet files `paths` on the fsspec filesystem `fs` as one table, in that order: fetched
    at once (`fs.cat`: concurrent requests on an object store), each decoded by
    table_from_parquet_bytes; a column that a file lacks is null in its rows."""
    data = fs.cat(paths)
    return pa.concat_tables([table_from_parquet_bytes(data[p]) for p in paths], promote_options="default")
