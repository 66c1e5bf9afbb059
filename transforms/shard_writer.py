"""The shard writer: samples in, one WebDataset tar and its Parquet index out. No Beam.

Contract:
    with ShardWriter(layout, ShardTask(split, shard_id)) as shard:
        shard.add(row, jpeg)          # .jpg, .cls and .json of one sample, in the order given
    shard.result                      # ShardResult: ShardInfo, IndexFile, the rows (offsets set)

The tar appears under its final name only when the block ends without an error (written to a
temporary name, then renamed), then its DALI index (transforms/reader_files.py; none for a shard
without samples) and its Parquet index, the same way: a reader that finds the index finds the
whole tar. Each row's `offset` is where its .jpg payload starts in the tar.

Determinism: tar headers have fixed fields (mtime 0, mode 0644, owner 0/0 with no names, GNU
format), so the same samples in the same order give the same bytes on any machine.
read_written_shard gives back what a ShardWriter reported for a shard it already wrote (a
runner's retry after success).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
from contextlib import ExitStack
from typing import IO, Optional, Sequence

import fsspec

from transforms.index import index_file_of, write_index_file
from transforms.layout import OutputLayout
from transforms.reader_files import dali_index, dali_sample_line
from transforms.records import IndexFile, Reject, ShardInfo, ShardTask
from transforms.schema import DATASET_COLUMNS, INDEX_SCHEMA, IndexRow, as_dict, table_from_parquet_bytes, with_offset
from transforms.storage import atomic_write

__all__ = ["TAR_MTIME", "TAR_MODE", "JSON_FOR_NULL", "ShardResult", "ShardTarWriter", "ShardWriter", "sample_json",
           "read_written_shard"]

# Fixed tar header fields: any wall-clock or user-dependent value would make shards differ.
TAR_MTIME = 0
TAR_MODE = 0o644


@dataclasses.dataclass
class ShardResult:
    shard: ShardInfo
    index: IndexFile  # the shard's Parquet index, written beside it (DATASET_COLUMNS not yet set)
    rows: list
    rejects: list = dataclasses.field(default_factory=list)  # Reject: members that did not make it
    orphan_annotations: int = 0  # annotations whose image is not in this shard's split


class ShardTarWriter:
    """A deterministic WebDataset tar writer that reports where each payload lands.

    Headers are tarfile's own GNU-format headers with fixed fields (see _tar_header); the
    writer concatenates header, payload and padding (tarfile.addfile cost ~0.3 ms per sample in
    copies and small writes; this ~0.1 ms). Samples are gathered until WRITE_BYTES are pending,
    then written and hashed in one call: a sample of a few KB written on its own cost a system
    call and a hash update of its own (the write alone was ~9% of the stage that writes the
    shards, in a profile of benchmarks/scale.py's build of 200k tiny images). The file holds the
    whole tar only after close(). The end of archive is what tarfile writes.
    """

    WRITE_BYTES = 1 << 20

    def __init__(self, fileobj: IO[bytes]):
        self._f = fileobj
        self._sha256 = hashlib.sha256()
        self._offset = 0  # the tar's length so far, written or pending
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def payload_offset(self, name: str) -> int:
        """Where the payload of a member named `name` appended next will start (a header's
        length depends on the name only: GNU long names take extra blocks)."""
        return self._offset + len(_tar_header(name, 0))

    def add(self, name: str, data: bytes) -> int:
        """Append one member; return the byte offset of its payload in the tar."""
        return self.add_sample([(name, data)])[0]

    def add_sample(self, members: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append members (a sample's, kept adjacent); return each payload's byte offset."""
        parts: list[bytes] = []
        offsets: list[int] = []
        offset = self._offset
        for name, data in members:
            header = _tar_header(name, len(data))
            offset += len(header)
            offsets.append(offset)
            padding = -len(data) % tarfile.BLOCKSIZE
            parts += (header, data, _ZEROS[:padding])
            offset += len(data) + padding
        self._write(parts, offset - self._offset)
        return offsets

    def close(self) -> tuple[int, str]:
        """Finish the tar as tarfile does (two zero blocks, then padding to a whole record);
        return (total bytes, sha256 hex)."""
        end = self._offset + 2 * tarfile.BLOCKSIZE
        tail = bytes(2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE))
        self._write([tail], len(tail))
        self._flush()
        return self._offset, self._sha256.hexdigest()

    def _write(self, parts: list[bytes], size: int) -> None:
        self._pending += parts
        self._pending_bytes += size
        self._offset += size
        if self._pending_bytes >= self.WRITE_BYTES:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._f.write(data)
        self._sha256.update(data)
        self._pending.clear()
        self._pending_bytes = 0


_ZEROS = bytes(tarfile.BLOCKSIZE)


def _tarinfo_header(name: str, size: int) -> bytes:
    # Every field but name and size is fixed: wall-clock or user-dependent values would make
    # shards differ between runs.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


# tarfile's header with the name and size fields cut out: the same for every member. Filling in
# a name and a size and summing the checksum is ~1 us; TarInfo.tobuf ~25 us, a tenth of the
# per-sample overhead (tests check the two agree byte for byte).
_TEMPLATE = _tarinfo_header("x", 0)
_BEFORE_SIZE, _AFTER_SIZE = _TEMPLATE[100:124], _TEMPLATE[136:148]  # mode, uid, gid | mtime
_TAIL = _TEMPLATE[156:]  # type flag, link name, magic, owner names, device numbers, padding
_FIXED_SUM = sum(_BEFORE_SIZE) + sum(_AFTER_SIZE) + 8 * ord(" ") + sum(_TAIL)  # chksum counts itself as spaces


def _tar_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or size >= 8 ** 11:  # GNU long-name block / base-256 size: tarfile's own way
        return _tarinfo_header(name, size)
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(raw) + sum(size_field)
    return b"".join((raw.ljust(100, b"\0"), _BEFORE_SIZE, size_field, _AFTER_SIZE, b"%06o\0 " % checksum, _TAIL))


# What a sample's .json holds where its index row holds null: the empty value of the field's type.
# Each field then has one JSON type in every sample, which readers that infer a field's type from
# the first samples (Hugging Face datasets) need. EXIF's own orientations are 1 to 8: 0 is "none".
JSON_FOR_NULL = {"wnid": "", "fine_wnid": "", "exif_orientation": 0}


def sample_json(row: IndexRow) -> bytes:
    """A sample's .json: its index row, less duplicate_of and near_duplicate_of, with no null
    (JSON_FOR_NULL), plus its boxes in pixels. `phash` is the index's int64 (phash.to_int64)."""
    fields = as_dict(row)
    # duplicate_of and near_duplicate_of are properties of the whole dataset, known only once
    # every shard is written: they live in the Parquet index, not in the per-sample JSON.
    for name in DATASET_COLUMNS:
        del fields[name]
    for name, empty in JSON_FOR_NULL.items():
        if fields[name] is None:
            fields[name] = empty
    # Boxes also in pixels of the stored image, for readers that draw or crop directly.
    fields["boxes_px"] = [[round(b[0] * row.width, 2), round(b[1] * row.height, 2),
                           round(b[2] * row.width, 2), round(b[3] * row.height, 2)] for b in row.boxes]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


class ShardWriter:
    """Writes one shard's tar (.jpg, .cls, .json a sample) and then its Parquet index; a context
    manager (see the module docstring). `result` is set when the block ends without an error."""

    def __init__(self, layout: OutputLayout, task: ShardTask):
        self._layout = layout
        self._task = task
        self._relative = layout.shard(task.split, task.shard_id)
        self._rows: list[IndexRow] = []
        self._dali_lines: list[str] = []  # one line of the shard's DALI index a sample
        self._stack = ExitStack()
        self._tar: Optional[ShardTarWriter] = None
        self.result: Optional[ShardResult] = None

    def __enter__(self) -> ShardWriter:
        self._tar = ShardTarWriter(self._stack.enter_context(atomic_write(self._layout.url(self._relative))))
        return self

    def add(self, row: IndexRow, jpeg: bytes) -> IndexRow:
        """Append one sample; return its row with the .jpg payload's offset in the tar."""
        assert self._tar is not None, "add() outside the with block"
        row = with_offset(row, self._tar.payload_offset(f"{row.key}.jpg"))  # the .json carries it
        members = [(f"{row.key}.jpg", jpeg), (f"{row.key}.cls", str(row.label).encode()),
                   (f"{row.key}.json", sample_json(row))]
        written = self._tar.add_sample(members)
        assert written[0] == row.offset, (written[0], row.offset)
        self._dali_lines.append(dali_sample_line(members, written))
        self._rows.append(row)
        return row

    def __exit__(self, exc_type, exc, traceback) -> None:
        assert self._tar is not None
        if exc_type is not None:
            self._stack.__exit__(exc_type, exc, traceback)  # the temporary file is removed
            return
        size, digest = self._tar.close()
        self._stack.close()  # the tar takes its final name
        task = self._task
        if self._dali_lines:  # DALI refuses an index of no samples
            with atomic_write(self._layout.url(self._layout.dali_index(task.split, task.shard_id))) as f:
                f.write(dali_index(self._dali_lines))
        index = write_index_file(self._layout, task.split, task.shard_id, self._rows, {})  # after the tar
        info = ShardInfo(task.split, task.shard_id, self._relative, len(self._rows), size, digest)
        self.result = ShardResult(info, index, self._rows)


def read_written_shard(task: ShardTask, layout: OutputLayout, rejects: Optional[list[Reject]] = None) -> ShardResult:
    """What a ShardWriter reported for a shard it already wrote, read back from its tar and index."""
    relative, index_path = layout.shard(task.split, task.shard_id), layout.index(task.split, task.shard_id)
    try:
        with fsspec.open(layout.url(index_path), "rb") as f:
            index_bytes = f.read()
        table = table_from_parquet_bytes(index_bytes, INDEX_SCHEMA)
        digest, size = hashlib.sha256(), 0
        with fsspec.open(layout.url(relative), "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
    except FileNotFoundError as e:
        raise RuntimeError(f"shard {task}: its staged pieces are gone and the shard was never written ({e})") from None
    rows = [IndexRow(**{**r, "boxes": tuple(r["boxes"]), "box_names": tuple(r["box_names"])})
            for r in table.to_pylist()]
    info = ShardInfo(task.split, task.shard_id, relative, len(rows), size, digest.hexdigest())
    index = index_file_of(task.split, task.shard_id, index_path, rows, len(index_bytes),
                          hashlib.sha256(index_bytes).hexdigest())
    return ShardResult(info, index, rows, rejects or [])
