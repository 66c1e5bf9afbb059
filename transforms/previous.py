"""The previous version of a dataset: the images a rebuild need not decode again, and the diff.

A rebuild after a change of the inputs (pipeline/cli.py) makes a new version whose shards must be
byte for byte those of a clean build of the new inputs. Most of its images are the previous
version's: same key, same split, same source bytes. When the previous version was built with the
options and the code that decide an image's bytes (fingerprint.reuses_images), the kernel would
give each such image exactly the bytes and facts it gave then, so they are taken from there:
  - the driver writes a lookup of the previous version's samples (write_lookup): an SQLite file,
    which every worker process opens read-only and queries by key, so that no previous row
    crosses a shuffle and a worker holds only the rows of the piece it is processing;
  - the kernel loop (transforms/processing.py) still reads each member's source bytes and hashes
    them; where the sha256 is the previous one, PreviousImages.image gives the stored JPEG (the
    source itself when it was stored as it is, else the previous shard's bytes, one ranged read)
    and the image's facts, and the decode, resize and encode are skipped.

`version_diff` says what changed between the two versions' indexes: keys added, removed and
changed (other source bytes) per split and class, for the manifest.
"""
from __future__ import annotations

import dataclasses
import posixpath
import sqlite3
from typing import Iterable, Optional

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms.image import ProcessedImage
from transforms.phash import from_int64
from transforms.records import MemberRef
from transforms.storage import ArchiveReader

__all__ = ["IMAGE_COLUMNS", "PreviousImage", "PreviousImages", "write_lookup", "version_diff"]

# The index columns that describe the stored image: with the key, the split and the source's
# sha256, what a rebuild takes from the previous version instead of running the kernel.
IMAGE_COLUMNS = ("shard", "offset", "size", "width", "height", "orig_width", "orig_height", "orig_format",
                 "orig_mode", "reencoded", "exif_orientation", "phash")
_COLUMNS = ("key", "split", "sha256", *IMAGE_COLUMNS)
_QUERY_CHUNK = 500  # keys per query (SQLite allows 32,766 parameters)


def _index_paths(root: str, manifest: dict) -> list[str]:
    return [posixpath.join(root, p) for s in manifest["splits"].values() for p in s["index"]]


def write_lookup(previous_root: str, manifest: dict, path: str) -> int:
    """Write the lookup of a version's samples (its index files) to the local SQLite file `path`.
    Returns how many samples it holds. An index file that lacks one of the columns (written by an
    earlier tool, e.g. before `phash`) adds none: its images are made again by the kernel. (The
    fingerprint's code digest already keeps a rebuild from reusing another tool's images.)"""
    db = sqlite3.connect(path)
    try:
        columns = ", ".join(f'"{c}"' for c in _COLUMNS)
        db.execute(f"CREATE TABLE previous ({columns}, PRIMARY KEY (key, split)) WITHOUT ROWID")
        rows = 0
        for index in _index_paths(previous_root, manifest):
            with fsspec.open(index, "rb") as f:
                parquet = pq.ParquetFile(f)
                if not set(_COLUMNS) <= set(parquet.schema_arrow.names):
                    continue
                table = parquet.read(columns=list(_COLUMNS), use_threads=False)  # see table_from_parquet_bytes
            db.executemany(f"INSERT OR IGNORE INTO previous VALUES ({', '.join('?' * len(_COLUMNS))})",
                           zip(*(table[c].to_pylist() for c in _COLUMNS)))
            rows += table.num_rows
        db.commit()
    finally:
        db.close()
    return rows


@dataclasses.dataclass(frozen=True)
class PreviousImage:
    """A sample as the previous version stored it."""

    sha256: str  # of the source bytes
    shard: str  # relative to the previous version's folder
    offset: int
    size: int
    width: int
    height: int
    orig_width: int
    orig_height: int
    orig_format: str
    orig_mode: str
    reencoded: bool
    exif_orientation: Optional[int]
    phash: int  # as the index stores it (phash.to_int64)


class PreviousImages:
    """The lookup of the previous version's samples, open read-only in a worker process.
    `previous_root`: the previous version's folder (path or URL), where its shards are read."""

    def __init__(self, lookup_path: str, previous_root: str):
        self._db = sqlite3.connect(f"file:{lookup_path}?mode=ro", uri=True, check_same_thread=False)
        self._root = previous_root
        self.reused = 0  # images taken from the previous version so far (a counter for the stage)

    def find(self, members: Iterable[MemberRef]) -> dict:
        """{(key, split): PreviousImage} of the members that the previous version has."""
        wanted = {(m.key, m.split) for m in members}
        keys = sorted({key for key, _ in wanted})
        found = {}
        columns = ", ".join(f'"{c}"' for c in _COLUMNS)
        for start in range(0, len(keys), _QUERY_CHUNK):
            chunk = keys[start:start + _QUERY_CHUNK]
            query = f"SELECT {columns} FROM previous WHERE key IN ({', '.join('?' * len(chunk))})"
            for (key, split, sha256, shard, offset, size, width, height, orig_width, orig_height, orig_format,
                 orig_mode, reencoded, exif_orientation, phash) in self._db.execute(query, chunk):
                if (key, split) in wanted:
                    found[key, split] = PreviousImage(sha256, shard, offset, size, width, height, orig_width,
                                                      orig_height, orig_format, orig_mode, bool(reencoded),
                                                      exif_orientation, phash)
        return found

    def image(self, previous: PreviousImage, data: bytes, reader: ArchiveReader) -> ProcessedImage:
        """The image the kernel would make of `data` (the source bytes, whose sha256 is the
        previous one): the source itself when it was stored as it is, else the stored bytes."""
        if previous.reencoded:
            jpeg = reader.read(posixpath.join(self._root, previous.shard), previous.offset, previous.size)
            if len(jpeg) != previous.size:
                raise OSError(f"{previous.shard} of the previous version ends before byte "
                              f"{previous.offset + previous.size}: it changed under the build")
        else:
            jpeg = data
        self.reused += 1
        return ProcessedImage(jpeg, previous.width, previous.height, previous.orig_width, previous.orig_height,
                              previous.orig_format, previous.orig_mode, previous.reencoded, previous.exif_orientation,
                              phash=from_int64(previous.phash))

    def close(self) -> None:
        self._db.close()


def _samples(root: str, manifest: dict) -> pa.Table:
    tables = []
    for index in _index_paths(root, manifest):
        with fsspec.open(index, "rb") as f:
            # Decoded on this thread, not Arrow's: see schema.table_from_parquet_bytes.
            tables.append(pq.ParquetFile(f).read(columns=["key", "split", "wnid", "sha256"], use_threads=False))
    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "split": pa.array([], pa.string()),
                         "wnid": pa.array([], pa.string()), "sha256": pa.array([], pa.string())})
    return pa.concat_tables(tables)


def version_diff(previous_root: str, previous_manifest: dict, root: str, manifest: dict) -> dict:
    """What changed from the previous version to this one, by split and by class: keys added,
    removed, and changed (the same key, other source bytes); `unchanged` per split. A class is
    listed only where something changed; an unlabelled sample's class is ""."""
    joined = _samples(root, manifest).join(_samples(previous_root, previous_manifest), keys=["split", "key"],
                                           join_type="full outer", right_suffix="_previous")
    added = pc.is_null(joined["sha256_previous"])
    removed = pc.is_null(joined["sha256"])
    changed = pc.and_(pc.invert(pc.or_(added, removed)), pc.not_equal(joined["sha256"], joined["sha256_previous"]))
    change = pc.if_else(added, "added", pc.if_else(removed, "removed", pc.if_else(changed, "changed", "unchanged")))
    wnid = pc.fill_null(pc.coalesce(joined["wnid"], joined["wnid_previous"]), "")
    counts = pa.table({"split": joined["split"], "wnid": wnid, "change": change}).group_by(
        ["split", "wnid", "change"]).aggregate([([], "count_all")]).to_pylist()
    splits: dict = {}
    classes: dict = {}
    for row in sorted(counts, key=lambda r: (r["split"], r["wnid"], r["change"])):
        totals = splits.setdefault(row["split"], {"added": 0, "removed": 0, "changed": 0, "unchanged": 0})
        totals[row["change"]] += row["count_all"]
        if row["change"] != "unchanged":
            classes.setdefault(row["split"], {}).setdefault(row["wnid"], {})[row["change"]] = row["count_all"]
    return {"splits": splits, "classes": classes}
