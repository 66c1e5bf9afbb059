"""Write one shard: read its members by byte range, run the image kernel, append to a tar.

Contract: (ShardTask, [MemberRef]) -> ShardResult(ShardInfo, IndexFile, [IndexRow], [Reject]).
The shard's tar and its Parquet index are both written here. This is the only stage that
touches image bytes; they live inside it and never cross a stage boundary, and neither do
the index rows (~1 KB a sample: shuffled, the local runner would hold them all in memory):
what leaves is file facts, rejects, and the (sha256, key) records of the samples, in a few
batches a shard, for the duplicate search (transforms/index.py). Rejects here: every reason
of the image kernel, plus `duplicate_key` (a second member with the same key in the same
split: the first by archive position wins).

Determinism: the members' order is the seeded key hash, tar headers are fixed (mtime,
owner, mode, format), and the kernel is deterministic, so the same inputs and options
give a byte-identical shard on any runner, with any worker count, on any retry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import tarfile
import time
from typing import IO, Callable, Iterable, Optional, Sequence

from transforms.boxes import normalise_pixel_boxes, orient_boxes
from transforms.image import ImageOptions, process_image
from transforms.index import IndexFile, hash_buckets, write_index_file
from transforms.layout import OutputLayout
from transforms.records import ImageRejected, MemberRef, Reject
from transforms.schema import IndexRow, as_dict
from transforms.sharding import key_hash
from transforms.storage import ArchiveReader, atomic_write

__all__ = ["ShardTask", "ShardInfo", "ShardResult", "ShardTarWriter", "order_members", "write_shard"]

log = logging.getLogger(__name__)

# Fixed tar header fields: any wall-clock or user-dependent value would make shards differ.
TAR_MTIME = 0
TAR_MODE = 0o644


@dataclasses.dataclass(frozen=True, order=True)
class ShardTask:
    split: str
    shard_id: int


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    split: str
    shard_id: int
    path: str  # relative to the manifest
    samples: int
    bytes: int
    sha256: str


@dataclasses.dataclass
class ShardResult:
    shard: ShardInfo
    index: IndexFile  # the shard's Parquet index, written beside it (duplicate_of not yet set)
    rows: list
    rejects: list
    orphan_annotations: int = 0  # annotations whose image is not in this shard's split


_WNID = re.compile(r"^n\d{8}$")


def _normalised(boxes, image):
    """CSV boxes come in pixels of the decoded image (orientation not applied): normalise them."""
    if boxes is not None and boxes.in_pixels:
        return normalise_pixel_boxes(boxes, image.orig_width, image.orig_height)
    return boxes


def _box_fields(ref: MemberRef, boxes, blacklist, orientation=None) -> dict:
    """The index fields a sample takes from its annotation (and the devkit's blacklist).

    orientation: the EXIF orientation applied to the stored pixels (--exif-transpose), if any.
    """
    if boxes is None:
        return {"boxes": (), "has_boxes": False, "box_names": (), "loc_blacklisted": ref.key in blacklist,
                "label_disagrees": False}
    wnids = {n for n in boxes.names if _WNID.match(n)}
    return {
        "boxes": tuple(list(b) for b in orient_boxes(boxes.boxes, orientation)),
        "has_boxes": bool(boxes.boxes),
        "box_names": boxes.names,
        "loc_blacklisted": ref.key in blacklist,
        "label_disagrees": bool(wnids) and ref.wnid is not None and ref.wnid not in wnids,
    }


class ShardTarWriter:
    """A deterministic WebDataset tar writer that reports where each payload lands.

    Headers are tarfile's own GNU-format headers with fixed fields (see _tar_header); the
    writer concatenates header, payload and padding, so a sample's members go out in one write
    and one hash update (tarfile.addfile cost ~0.3 ms a sample in copies and small writes; this
    ~0.1 ms). The end of archive is what tarfile writes.
    """

    def __init__(self, fileobj: IO[bytes]):
        self._f = fileobj
        self._sha256 = hashlib.sha256()
        self._offset = 0

    def payload_offset(self, name: str) -> int:
        """Where the payload of a member named `name` appended next will start (a header's
        length depends on the name only: GNU long names take extra blocks)."""
        return self._offset + len(_tar_header(name, 0))

    def add(self, name: str, data: bytes) -> int:
        """Append one member; return the byte offset of its payload in the tar."""
        return self.add_sample([(name, data)])[0]

    def add_sample(self, members: Sequence[tuple[str, bytes]]) -> list[int]:
        """Append members (a sample's, kept adjacent); return each payload's byte offset."""
        parts, offsets, offset = [], [], self._offset
        for name, data in members:
            header = _tar_header(name, len(data))
            offset += len(header)
            offsets.append(offset)
            padding = -len(data) % tarfile.BLOCKSIZE
            parts += (header, data, _ZEROS[:padding])
            offset += len(data) + padding
        self._write(b"".join(parts))
        return offsets

    def close(self) -> tuple[int, str]:
        """Finish the tar as tarfile does (two zero blocks, then padding to a whole record);
        return (total bytes, sha256 hex)."""
        end = self._offset + 2 * tarfile.BLOCKSIZE
        self._write(bytes(2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        return self._offset, self._sha256.hexdigest()

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._sha256.update(data)
        self._offset += len(data)


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


def order_members(refs: Iterable[MemberRef], seed: int) -> tuple[list[MemberRef], list[Reject]]:
    """Order a shard's members by seeded key hash; split off repeated keys as rejects."""
    ranked = sorted(refs, key=lambda r: (key_hash(r.key, seed), r.key, r.archive, r.offset))
    kept, rejects = [], []
    for ref in ranked:
        if kept and kept[-1].key == ref.key:
            first = kept[-1]
            rejects.append(Reject(ref.key, ref.split, ref.source, "duplicate_key",
                                  f"key already taken by {first.source}"))
        else:
            kept.append(ref)
    return kept, rejects


def _json_bytes(row: IndexRow) -> bytes:
    fields = as_dict(row)
    # duplicate_of is a property of the whole dataset, known only once every shard is
    # written: it lives in the Parquet index, not in the per-sample JSON.
    del fields["duplicate_of"]
    # Boxes also in pixels of the stored image, for readers that draw or crop directly.
    fields["boxes_px"] = [[round(b[0] * row.width, 2), round(b[1] * row.height, 2),
                           round(b[2] * row.width, 2), round(b[3] * row.height, 2)] for b in row.boxes]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def write_shard(
    task: ShardTask,
    refs: Iterable[MemberRef],
    options: ImageOptions,
    layout: OutputLayout,
    seed: int,
    reader: ArchiveReader,
    on_progress: Optional[Callable[[int, int], None]] = None,
    boxes: Optional[dict] = None,
    blacklist: frozenset = frozenset(),
) -> ShardResult:
    """Build one shard file from its members; the file appears only when complete.

    boxes: {key: BoxesRef} of the annotations that hash to this shard.
    blacklist: keys in the devkit's localisation blacklist.
    """
    boxes = boxes or {}
    members, rejects = order_members(refs, seed)
    relative = layout.shard(task.split, task.shard_id)
    rows = []
    last_report = time.monotonic()
    with atomic_write(layout.url(relative)) as f:
        tar = ShardTarWriter(f)
        for done, ref in enumerate(members, start=1):
            data = reader.read(ref.archive, ref.offset, ref.size)
            try:
                image = process_image(data, options)
            except ImageRejected as e:
                rejects.append(Reject(ref.key, ref.split, ref.source, e.reason, e.detail))
                continue
            except Exception as e:  # a decoder bug on hostile bytes must not take the whole build down
                log.warning("unexpected %s on %s: %s", type(e).__name__, ref.source, e)
                rejects.append(Reject(ref.key, ref.split, ref.source, "corrupt", f"{type(e).__name__}: {e}"))
                continue
            offset = tar.payload_offset(f"{ref.key}.jpg")  # the row (and so the .json) carries it
            row = IndexRow(
                key=ref.key, split=ref.split, shard=relative, offset=offset, size=len(image.jpeg),
                label=ref.label, wnid=ref.wnid, width=image.width, height=image.height,
                orig_width=image.orig_width, orig_height=image.orig_height,
                orig_format=image.orig_format, orig_mode=image.orig_mode, reencoded=image.reencoded,
                sha256=hashlib.sha256(data).hexdigest(), duplicate_of=None,
                exif_orientation=image.exif_orientation, source=ref.source,
                **_box_fields(ref, _normalised(boxes.get(ref.key), image), blacklist,
                              image.exif_orientation if options.exif_transpose else None),
            )
            written = tar.add_sample([(f"{ref.key}.jpg", image.jpeg), (f"{ref.key}.cls", str(ref.label).encode()),
                                      (f"{ref.key}.json", _json_bytes(row))])
            assert written[0] == offset, (written[0], offset)
            rows.append(row)
            if on_progress and time.monotonic() - last_report > 1.0:
                on_progress(done, len(members))
                last_report = time.monotonic()
        size, digest = tar.close()
    if on_progress:
        on_progress(len(members), len(members))
    info = ShardInfo(task.split, task.shard_id, relative, len(rows), size, digest)
    index = write_index_file(layout, task.split, task.shard_id, rows, {})  # after the tar: it indexes that file
    orphans = len(set(boxes) - {r.key for r in refs})
    return ShardResult(info, index, rows, rejects, orphans)


# --- Beam wiring -------------------------------------------------------------------

import os  # noqa: E402

import apache_beam as beam  # noqa: E402
from apache_beam import pvalue  # noqa: E402

from transforms.image import codec_versions  # noqa: E402


def check_codecs(expected: dict) -> None:
    """Fail a worker at start-up when its codecs differ from the driver's.

    Shards are byte-identical only for the same PIL and libjpeg-turbo builds, and the
    manifest records the driver's; a worker with stock Pillow would silently differ.
    """
    actual = codec_versions()
    if actual != expected:
        raise RuntimeError(f"this worker's image codecs {actual} differ from the build's {expected}: "
                           "install pillow-simd as the README says (make install)")


def _boxes_by_key(boxes) -> dict:
    from transforms.boxes import merge_boxes

    grouped = {}
    for b in boxes:
        grouped.setdefault(b.key, []).append(b)
    return {key: merge_boxes(refs) for key, refs in grouped.items()}


class _WriteShardFn(beam.DoFn):
    def __init__(self, options: ImageOptions, out_root: str, seed: int, codecs: dict, progress_dir: Optional[str],
                 blacklist: frozenset):
        self._blacklist = blacklist
        self._options = options
        self._out_root = out_root
        self._seed = seed
        self._codecs = codecs
        self._progress_dir = progress_dir

    def setup(self):
        check_codecs(self._codecs)
        self._layout = OutputLayout(self._out_root)
        self._reader = ArchiveReader()

    def _heartbeat(self, task: ShardTask):
        if not self._progress_dir:
            return None
        path = os.path.join(self._progress_dir, f"{task.split}-{task.shard_id:06d}")

        def report(done: int, total: int) -> None:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{done} {total}\n")
            os.replace(tmp, path)

        return report

    def process(self, element):
        task, refs, boxes = element
        result = write_shard(task, refs, self._options, self._layout, self._seed, self._reader,
                             self._heartbeat(task), _boxes_by_key(boxes), self._blacklist)
        if result.orphan_annotations:
            yield pvalue.TaggedOutput("orphans", (task.split, result.orphan_annotations))
        beam.metrics.Metrics.counter("samples", task.split).inc(len(result.rows))
        for reject in result.rejects:
            beam.metrics.Metrics.counter("rejects", reject.reason).inc()
            yield pvalue.TaggedOutput("rejects", reject)
        yield pvalue.TaggedOutput("index", result.index)
        for bucket in hash_buckets(result.rows, task.shard_id):
            yield pvalue.TaggedOutput("hashes", bucket)
        yield result.shard

    def teardown(self):
        self._reader.close()


class WriteShards(beam.PTransform):
    """(ShardTask, [MemberRef], [BoxesRef]) -> {"shards": ShardInfo, "index": IndexFile,
    "hashes": (bucket, ((sha256, key, split, shard_id), ...)) (index.hash_buckets), "rejects": Reject,
    "orphans": (split, annotations without an image)}."""

    def __init__(self, options: ImageOptions, out_root: str, seed: int, codecs: dict,
                 progress_dir: Optional[str] = None, blacklist: frozenset = frozenset()):
        super().__init__()
        self._fn = _WriteShardFn(options, out_root, seed, codecs, progress_dir, blacklist)

    def expand(self, tasks):
        out = tasks | "ProcessAndWrite" >> beam.ParDo(self._fn).with_outputs("index", "hashes", "rejects", "orphans",
                                                                              main="shards")
        return {"shards": out.shards, "index": out.index, "hashes": out.hashes, "rejects": out.rejects,
                "orphans": out.orphans}
