"""One split of a finished build, read through its manifest and its Parquet index.

    ds = open_dataset("/data/imagenet-shards", "val")   # a dataset root, a version folder, or an fsspec URL
    len(ds), ds.classes, ds.counts, ds.shards           # from the manifest
    ds.index()                                          # the split's index as a pyarrow Table (read once)
    sample = ds.get("ILSVRC2012_val_00000001")          # one ranged read of the .jpg payload
    sample.image()                                      # a PIL image
    q = ds.query(has_boxes=True, under="n02084071")     # a filtered view of the index
    len(q), q.keys(), q.table
    for sample in q: ...                                # only the matching samples, in shard order

open_dataset follows the version that OUT/LATEST names (pipeline.versions.current_version), and
reads an unversioned output of an earlier release, or a version folder, as it stands. Paths in the
manifest and in the index are relative to the version folder.

Every read of a sample is one read of its `.jpg` payload at the offset and size that the index
gives: no tar is scanned. Local shards are read through open file handles that are kept (at most
MAX_OPEN of them); remote shards are read with one ranged request per sample in get(), and with
requests read ahead (transforms/readahead.py) when a query is iterated. torch is never imported here.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import posixpath
import threading
from typing import Any, Iterable, Iterator, Optional, Union

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipeline.reading.stream import Stream, stream
from pipeline.versions import current_version
from transforms.hierarchy import wordnet_hierarchy
from transforms.layout import MANIFEST_NAME
from transforms.schema import table_from_parquet_files
from transforms.storage import ArchiveReader, is_local

__all__ = ["open_dataset", "Dataset", "Query", "Sample", "ShardEntry", "MAX_OPEN", "READ_CHUNK"]

MAX_OPEN = 64  # local shard files kept open by a Dataset's get()
READ_CHUNK = 4096  # index rows turned into Python objects at a time while a query is iterated

ClassSpec = Union[str, int, Iterable[Union[str, int]]]


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One shard of a split, as the manifest lists it. `url` is a local path or an fsspec URL."""

    url: str
    path: str  # relative to the version folder
    samples: int
    bytes: int
    sha256: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sample: its stored JPEG bytes and its index row (label, wnid, boxes, sizes, hashes...)."""

    key: str
    split: str
    label: int
    jpeg: bytes
    row: dict

    @property
    def wnid(self) -> Optional[str]:
        return self.row.get("wnid")

    @property
    def boxes(self) -> list:
        """The boxes as [xmin, ymin, xmax, ymax], normalised to [0, 1] of the stored image."""
        return self.row.get("boxes") or []

    def image(self, mode: str = "RGB") -> Image.Image:
        """The decoded image, loaded and converted to `mode` (the stored JPEGs are RGB already)."""
        with Image.open(io.BytesIO(self.jpeg)) as image:
            image.load()
            return image.convert(mode) if image.mode != mode else image.copy()


def open_dataset(root: Union[str, os.PathLike], split: str) -> Dataset:
    """The split `split` of the build at `root`: a dataset root (its current version, which LATEST
    names), a version folder, or an unversioned output of an earlier release; a local path or an
    fsspec URL (s3://, gs://, file://, ...). Raises FileNotFoundError when `root` holds no published
    build, and KeyError, naming the splits there are, when the build has no such split."""
    version = current_version(os.fspath(root))
    with fsspec.open(posixpath.join(version, MANIFEST_NAME), "rb") as f:
        manifest = json.load(f)
    return Dataset(version, split, manifest)


class Dataset:
    """One split of a build: counts from the manifest, samples by key or by query through the index.

    A Dataset can be shared by threads (get() takes a lock around its file handles) and pickled (for
    the worker processes of a data loader): a copy reopens its files and rereads its index when it
    needs them.
    """

    def __init__(self, url: str, split: str, manifest: dict):
        if split not in manifest.get("splits", {}):
            raise KeyError(f"{url} has no split {split!r}; its splits are: {', '.join(sorted(manifest['splits']))}")
        self.url = url  # the version folder: a local path or an fsspec URL
        self.split = split
        self.manifest = manifest
        self.info: dict = manifest["splits"][split]  # the split's entry of the manifest
        self._urls: dict[str, str] = {}
        self._reset()

    def _reset(self) -> None:
        self._table: Optional[pa.Table] = None
        self._positions: Optional[dict[str, int]] = None
        self._reader: Optional[ArchiveReader] = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("_table", "_positions", "_reader", "_lock"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"Dataset({self.url!r}, split={self.split!r}, samples={len(self)})"

    # --- what the manifest says ------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.info["samples"])

    @property
    def classes(self) -> list[dict]:
        """The manifest's class records: label, wnid, name, and their WordNet lemmas, gloss,
        parents, depth and ancestors (null fields for a class that is not a WordNet synset). Under
        --label-level these are the coarse classes; `fine_classes` lists the classes of the samples."""
        return list(self.manifest.get("classes", []))

    @property
    def fine_classes(self) -> Optional[list[dict]]:
        """The classes of the samples under --label-level (with coarse_label, coarse_wnid), else None."""
        return self.manifest.get("fine_classes")

    @property
    def counts(self) -> dict[str, int]:
        """The split's counts and sizes: read, samples, rejected, left_out, duplicates,
        near_duplicates, with_boxes, boxes, bytes, ... (those the manifest holds), and `shards`."""
        found = {k: v for k, v in self.info.items() if isinstance(v, int) and not isinstance(v, bool)}
        found["shards"] = len(self.info.get("shards", []))
        return found

    @property
    def bytes(self) -> int:
        """The bytes of the split's shards."""
        return int(self.info["bytes"])

    @property
    def rejected(self) -> int:
        return int(self.info.get("rejected", 0))

    @property
    def rejects_by_reason(self) -> dict[str, int]:
        return dict(self.info.get("rejects_by_reason", {}))

    @property
    def shards(self) -> list[ShardEntry]:
        """The split's shards in manifest order (the order of the index files)."""
        return [ShardEntry(self._url(s["path"]), s["path"], int(s["samples"]), int(s.get("bytes", 0)), s.get("sha256"))
                for s in self.info.get("shards", [])]

    def _url(self, relative: str) -> str:
        url = self._urls.get(relative)
        if url is None:
            url = self._urls[relative] = posixpath.join(self.url, relative)
        return url

    # --- the index -------------------------------------------------------------------------------

    def index(self) -> pa.Table:
        """The split's Parquet index as one table: the index files in manifest order, each one's
        rows in tar order. Read once, then kept."""
        if self._table is None:
            if not self.info.get("index"):
                raise FileNotFoundError(f"the manifest of {self.url} lists no index file for split {self.split!r}")
            fs, base = fsspec.core.url_to_fs(self.url)
            paths = [posixpath.join(base, p) for p in self.info["index"]]
            if is_local(self.url):
                table = pq.read_table(paths)
            else:  # not Arrow's threads on Python's bytes: see table_from_parquet_bytes
                table = table_from_parquet_files(fs, paths)
            self._table = table.combine_chunks() if table.num_rows else table
        return self._table

    def _position(self, key: str) -> int:
        if self._positions is None:
            keys = self.index().column("key").to_pylist()
            self._positions = dict(zip(keys, range(len(keys))))
        try:
            return self._positions[key]
        except KeyError:
            raise KeyError(f"no sample {key!r} in split {self.split!r} of {self.url}") from None

    def __contains__(self, key: object) -> bool:
        try:
            self._position(str(key))
        except KeyError:
            return False
        return True

    # --- samples ---------------------------------------------------------------------------------

    def get(self, key: str) -> Sample:
        """The sample `key`: one read of its `.jpg` payload at the offset the index gives, and its
        index row. KeyError, naming the key, when the split has no such sample."""
        row = self.index().slice(self._position(key), 1).to_pylist()[0]
        with self._lock:
            if self._reader is None:
                self._reader = ArchiveReader(max_open=MAX_OPEN)
            jpeg = self._reader.read(self._url(row["shard"]), row["offset"], row["size"])
        return Sample(row["key"], row["split"], row["label"], jpeg, row)

    def __getitem__(self, key: str) -> Sample:
        return self.get(key)

    def query(self, filter: Optional[pc.Expression] = None, *, sql: Optional[str] = None,
              classes: Optional[ClassSpec] = None, under: Union[str, Iterable[str], None] = None,
              has_boxes: Optional[bool] = None, min_size: Optional[int] = None, no_duplicates: bool = False,
              no_near_duplicates: bool = False) -> Query:
        """The samples of the split whose index rows match every condition given (see Query.query)."""
        return Query(self, self.index()).query(filter, sql=sql, classes=classes, under=under, has_boxes=has_boxes,
                                               min_size=min_size, no_duplicates=no_duplicates,
                                               no_near_duplicates=no_near_duplicates)

    def stream(self, **options: Any) -> Stream:
        """A webdataset pipeline over the split's shards for training: seeded shard shuffle, sample
        shuffle buffer, equal epochs per rank and worker, decoding, resuming. The options are those
        of pipeline.reading.stream.stream."""
        return stream(self.shards, **options)

    def read_rows(self, table: pa.Table) -> Iterator[Sample]:
        """The samples of the index rows of `table`, in its order, each read by its offset. Rows of
        one shard that follow each other are read in the order of their offsets; remote payloads
        are read ahead, and those close together in a shard share a request."""
        reader = ArchiveReader(max_open=MAX_OPEN)
        try:
            for start in range(0, table.num_rows, READ_CHUNK):
                rows = table.slice(start, READ_CHUNK).to_pylist()
                ranges = [(self._url(r["shard"]), r["offset"], r["size"]) for r in rows]
                for row, jpeg in zip(rows, reader.read_ranges(ranges)):
                    yield Sample(row["key"], row["split"], row["label"], jpeg, row)
        finally:
            reader.close()

    def close(self) -> None:
        """Close the files that get() keeps open (a later get() opens them again)."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Query:
    """A filtered view of a split: the index rows that matched (`table`, in shard order: the
    shards in manifest order, each one's rows by offset), their keys, and their samples when
    iterated (only those are read, each by its offset). A Query can be refined by query()."""

    def __init__(self, dataset: Dataset, table: pa.Table):
        self.dataset = dataset
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Query({self.dataset.url!r}, split={self.dataset.split!r}, samples={len(self)})"

    def keys(self) -> list[str]:
        return self.table.column("key").to_pylist()

    def __iter__(self) -> Iterator[Sample]:
        return self.dataset.read_rows(self.table)

    def query(self, filter: Optional[pc.Expression] = None, *, sql: Optional[str] = None,
              classes: Optional[ClassSpec] = None, under: Union[str, Iterable[str], None] = None,
              has_boxes: Optional[bool] = None, min_size: Optional[int] = None, no_duplicates: bool = False,
              no_near_duplicates: bool = False) -> Query:
        """The rows of this view that match every condition given:

        filter: a pyarrow compute expression over the index columns (`pc.field("label") < 10`);
        sql: DuckDB SQL over the rows as a table named `index` that selects their `key` column
          (`SELECT key FROM index WHERE has_boxes`; quote "offset", a reserved word); needs duckdb;
        classes: WNIDs or labels (one, or several): the samples labelled so; under --label-level a
          WNID of `fine_classes` selects the samples of that fine class;
        under: a WNID (or several): the samples whose own class (fine_wnid) is it or lies under it
          in WordNet (transforms/hierarchy.py); a WNID that WordNet does not hold is an error;
        has_boxes: with (True) or without (False) bounding boxes;
        min_size: the shorter side of the original image is at least this many pixels;
        no_duplicates: leave out the samples whose bytes another sample has, keeping the one whose key
          sorts first (duplicate_of is null);
        no_near_duplicates: leave out every sample that has a near-duplicate (near_duplicate_of is
          null; both samples of a pair go). An error when the build did not search for them.
        """
        conditions = [] if filter is None else [filter]
        conditions += self._conditions(classes, under, has_boxes, min_size, no_duplicates, no_near_duplicates)
        table = self.table
        if conditions:
            combined = conditions[0]
            for condition in conditions[1:]:
                combined = combined & condition
            table = table.filter(combined)
        if sql is not None:
            table = _select_by_sql(table, sql)
        return Query(self.dataset, table)

    def _conditions(self, classes: Optional[ClassSpec], under: Union[str, Iterable[str], None],
                    has_boxes: Optional[bool], min_size: Optional[int], no_duplicates: bool,
                    no_near_duplicates: bool) -> list[pc.Expression]:
        found = []
        if classes is not None:
            found.append(self._classes(classes))
        if under is not None:
            found.append(self._under(under))
        if has_boxes is not None:
            found.append(pc.field("has_boxes") == pa.scalar(bool(has_boxes)))
        if min_size is not None:
            found.append(pc.min_element_wise(pc.field("orig_width"), pc.field("orig_height")) >= int(min_size))
        if no_duplicates:
            found.append(pc.field("duplicate_of").is_null())
        if no_near_duplicates:
            searched = self.dataset.manifest.get("near_duplicates") is not None
            if not searched or "near_duplicate_of" not in self.table.schema.names:
                raise ValueError(f"the build at {self.dataset.url} did not search for near-duplicates "
                                 "(--near-duplicate-distance off, or an earlier release of the tool)")
            found.append(pc.field("near_duplicate_of").is_null())
        return found

    def _classes(self, classes: ClassSpec) -> pc.Expression:
        wanted = [classes] if isinstance(classes, (str, int)) else list(classes)
        manifest = self.dataset.manifest
        labels = {c["label"] for c in manifest.get("classes", [])}
        wnids = {c["wnid"] for c in manifest.get("classes", [])}
        fine = {c["wnid"] for c in manifest.get("fine_classes") or []}
        unknown = [c for c in wanted if c not in (wnids | fine if isinstance(c, str) else labels)]
        if unknown:
            raise ValueError(f"not classes of {self.dataset.url}: {', '.join(map(str, unknown))}")
        by_label = [c for c in wanted if not isinstance(c, str)]
        by_wnid = [c for c in wanted if isinstance(c, str) and c in wnids]
        by_fine = [c for c in wanted if isinstance(c, str) and c in fine and c not in wnids]
        expression = pc.field("label").isin(pa.array(by_label, pa.int64()))
        expression = expression | pc.field("wnid").isin(pa.array(by_wnid, pa.string()))
        if by_fine:
            expression = expression | pc.field("fine_wnid").isin(pa.array(by_fine, pa.string()))
        return expression

    def _under(self, under: Union[str, Iterable[str]]) -> pc.Expression:
        hierarchy = wordnet_hierarchy()
        column = "fine_wnid" if "fine_wnid" in self.table.schema.names else "wnid"
        present = [w for w in pc.unique(self.table.column(column)).to_pylist() if w is not None and w in hierarchy]
        ancestors = [under] if isinstance(under, str) else list(under)
        selected = sorted({w for ancestor in ancestors for w in hierarchy.subtree(ancestor, present)})
        return pc.field(column).isin(pa.array(selected, pa.string()))


def _select_by_sql(table: pa.Table, sql: str) -> pa.Table:
    """The rows of `table` whose keys a DuckDB query over it (as the table `index`) returns, in the
    order of `table`."""
    import duckdb  # optional: only a query by SQL needs it (the "test" extra installs it)

    with duckdb.connect() as connection:
        connection.register("index", table)
        result = connection.sql(sql)
        if result is None:
            raise ValueError(f"the SQL returns no rows (is it a SELECT?): {sql}")
        answer = result.arrow()
        if isinstance(answer, pa.RecordBatchReader):  # duckdb 1.4 and later
            answer = answer.read_all()
    if "key" not in answer.column_names:
        raise ValueError(f"the SQL must select the key column (SELECT key FROM index WHERE ...): {sql}")
    positions = pc.index_in(answer.column("key"), value_set=table.column("key"))
    if positions.null_count:
        raise ValueError(f"the SQL returns keys that are not in the index: {sql}")
    return table.take(pa.array(np.unique(positions.to_numpy(zero_copy_only=False)), pa.int64()))
