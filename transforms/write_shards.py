"""Write the shards: read members by byte range, run the image kernel, append to tars.

Contract: (ShardTask, [MemberRef], [BoxesRef]) -> the shard's tar and its Parquet index, plus
ShardInfo, IndexFile, the (sha256, key) records for the duplicate search, and Reject.

A shard is made in up to three steps, so that work can spread over every worker however few
shards there are (a 6.4 GB val tar is 13 shards at the default size; on Dataflow there can be
more cores than shards):
  cut_shard        order the members, set repeated keys aside, cut into pieces (on the local
                   runner only where its workers' segments end: transforms/segments.py; on
                   runners that scale out, pieces of PIECE_SAMPLES)
  process_piece    the image kernel on one piece (~all the CPU of a build); stores the index
                   rows and the JPEGs (a kept one as its place in the archive) in a scratch file
  assemble_shard   concatenate a shard's pieces, in order, into its tar (.jpg, .cls, .json a
                   sample), write its Parquet index, delete the pieces
A shard that is one piece skips the staging: write_whole_shard processes it straight into its
tar. write_shard does it all in one call. Image bytes and index rows (~1 KB a sample: shuffled,
the local runner would hold them all in memory) never cross a shuffle: they stay in the stage,
or travel in the scratch files. Rejects: every reason of the image kernel, plus `duplicate_key`
(a second member with the same key in the same split: the first by archive position wins).

Determinism: the members' order is the seeded key hash, tar headers are fixed (mtime,
owner, mode, format), and the kernel is deterministic, so the same inputs and options
give a byte-identical shard on any runner, with any worker count or piece size, on any retry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import pickle
import re
import tarfile
import time
from typing import IO, Callable, Iterable, Iterator, Optional, Sequence

import fsspec
import pyarrow.parquet as pq

from transforms.boxes import normalise_pixel_boxes, orient_boxes
from transforms.image import ImageOptions, process_image
from transforms.index import IndexFile, hash_buckets, index_file_of, write_index_file
from transforms.layout import OutputLayout
from transforms.records import ImageRejected, MemberRef, Reject, from_shuffle, to_shuffle
from transforms.schema import INDEX_SCHEMA, IndexRow, as_dict
from transforms.segments import Segments
from transforms.sharding import key_hash
from transforms.storage import ArchiveReader, atomic_write

__all__ = ["PIECE_SAMPLES", "ShardTask", "PieceTask", "ShardCut", "PieceResult", "ShardInfo", "ShardResult",
           "ShardTarWriter", "order_members", "even_cut", "small_pieces", "cut_shard", "write_whole_shard",
           "process_piece", "assemble_shard", "write_shard"]

log = logging.getLogger(__name__)

# Fixed tar header fields: any wall-clock or user-dependent value would make shards differ.
TAR_MTIME = 0
TAR_MODE = 0o644

# Members a piece on runners that scale out (a build may have more cores than shards): many more
# pieces than cores, while a piece's fixed costs (a scratch file, two shuffled records) stay under
# 1% of its images' (~0.4 s of kernel work a piece).
PIECE_SAMPLES = 128


@dataclasses.dataclass(frozen=True, order=True)
class ShardTask:
    split: str
    shard_id: int


@dataclasses.dataclass(frozen=True, order=True)
class PieceTask:
    split: str
    shard_id: int
    piece: int  # 0 .. pieces - 1, in shard order
    pieces: int  # how many the shard has


@dataclasses.dataclass
class ShardCut:
    pieces: list  # [(PieceTask, [MemberRef] in shard order, {key: BoxesRef})]
    starts: list  # each piece's first member: its number in the shard
    rejects: list  # repeated keys
    orphan_annotations: int  # annotations whose image is not in this shard's split


@dataclasses.dataclass
class PieceResult:
    task: PieceTask
    path: str  # the piece's scratch file, relative to the manifest
    samples: int
    rejects: list


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


def even_cut(pieces: int) -> Callable[[int], list[int]]:
    """A cut (members -> where each piece starts) into `pieces` pieces as equal as can be, never
    an empty one."""
    def starts(members: int) -> list[int]:
        count = max(1, min(pieces, members))
        return [i * members // count for i in range(count)]
    return starts


def small_pieces(members: int) -> list[int]:
    """The cut for runners that scale out: pieces of at most PIECE_SAMPLES members."""
    return even_cut(math.ceil(members / PIECE_SAMPLES))(members)


def cut_shard(task: ShardTask, refs: Iterable[MemberRef], seed: int, boxes: Optional[dict] = None,
              cut: Callable[[int], Sequence[int]] = small_pieces) -> ShardCut:
    """Order a shard's members, set repeated keys aside, and cut the rest into pieces where `cut`
    (kept members -> each piece's first member, 0 first, increasing) says, each piece with its
    members' boxes. An empty shard is one empty piece."""
    boxes = boxes or {}
    refs = list(refs)
    members, rejects = order_members(refs, seed)
    starts = list(cut(len(members)))
    if starts[:1] != [0] or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= max(1, len(members)):
        raise ValueError(f"shard {task}: cannot cut {len(members)} members at {starts}")
    ends = starts[1:] + [len(members)]
    pieces = [(PieceTask(task.split, task.shard_id, i, len(starts)), members[begin:end],
               {r.key: boxes[r.key] for r in members[begin:end] if r.key in boxes})
              for i, (begin, end) in enumerate(zip(starts, ends))]
    orphans = len(set(boxes) - {r.key for r in refs})
    return ShardCut(pieces, starts, rejects, orphans)


def _kept_samples(piece: PieceTask, members: Sequence[MemberRef], options: ImageOptions, layout: OutputLayout,
                  reader: ArchiveReader, boxes: dict, blacklist: frozenset, rejects: list,
                  on_progress: Optional[Callable[[int, int], None]]
                  ) -> Iterator[tuple[IndexRow, bytes, MemberRef]]:
    """The image kernel over members in shard order: (index row, stored JPEG, member) for each
    kept one, its offset in the tar still 0 (not known until it is written); rejects appended to
    `rejects`."""
    shard = layout.shard(piece.split, piece.shard_id)
    last_report = time.monotonic()
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
        yield IndexRow(
            key=ref.key, split=ref.split, shard=shard, offset=0, size=len(image.jpeg),
            label=ref.label, wnid=ref.wnid, width=image.width, height=image.height,
            orig_width=image.orig_width, orig_height=image.orig_height,
            orig_format=image.orig_format, orig_mode=image.orig_mode, reencoded=image.reencoded,
            sha256=hashlib.sha256(data).hexdigest(), duplicate_of=None,
            exif_orientation=image.exif_orientation, source=ref.source,
            **_box_fields(ref, _normalised(boxes.get(ref.key), image), blacklist,
                          image.exif_orientation if options.exif_transpose else None),
        ), image.jpeg, ref
        if on_progress and time.monotonic() - last_report > 1.0:
            on_progress(done, len(members))
            last_report = time.monotonic()
    if on_progress:
        on_progress(len(members), len(members))


def _write_tar_and_index(task: ShardTask, samples: Iterable[tuple[IndexRow, bytes]], layout: OutputLayout
                         ) -> ShardResult:
    """The shard's tar (.jpg, .cls, .json a sample, in the order given; each row gets its offset),
    then its Parquet index. Both appear only when complete."""
    relative = layout.shard(task.split, task.shard_id)
    rows = []
    with atomic_write(layout.url(relative)) as f:
        tar = ShardTarWriter(f)
        for row, jpeg in samples:
            row = dataclasses.replace(row, offset=tar.payload_offset(f"{row.key}.jpg"))  # the .json carries it
            written = tar.add_sample([(f"{row.key}.jpg", jpeg), (f"{row.key}.cls", str(row.label).encode()),
                                      (f"{row.key}.json", _json_bytes(row))])
            assert written[0] == row.offset, (written[0], row.offset)
            rows.append(row)
        size, digest = tar.close()
    index = write_index_file(layout, task.split, task.shard_id, rows, {})  # after the tar: it indexes that file
    return ShardResult(ShardInfo(task.split, task.shard_id, relative, len(rows), size, digest), index, rows, [])


def write_whole_shard(piece: PieceTask, members: Sequence[MemberRef], options: ImageOptions, layout: OutputLayout,
                      reader: ArchiveReader, on_progress: Optional[Callable[[int, int], None]] = None,
                      boxes: Optional[dict] = None, blacklist: frozenset = frozenset()) -> ShardResult:
    """A shard that is one piece: processed straight into its tar, nothing staged."""
    assert piece.pieces == 1, piece
    rejects = []
    result = _write_tar_and_index(
        ShardTask(piece.split, piece.shard_id),
        ((row, jpeg) for row, jpeg, _ in
         _kept_samples(piece, members, options, layout, reader, boxes or {}, blacklist, rejects, on_progress)),
        layout)
    result.rejects = rejects
    return result


def process_piece(
    piece: PieceTask,
    members: Sequence[MemberRef],
    options: ImageOptions,
    layout: OutputLayout,
    reader: ArchiveReader,
    on_progress: Optional[Callable[[int, int], None]] = None,
    boxes: Optional[dict] = None,
    blacklist: frozenset = frozenset(),
) -> PieceResult:
    """Run the image kernel on a piece's members (already in shard order); stage the index rows
    and the stored JPEGs in the piece's scratch file, for assemble_shard. A JPEG kept byte for
    byte is staged as where it is in its archive (the assembler reads it again: a read of the
    input instead of a write and a read of a copy; archives do not change during a build, which
    every stage after IndexArchives already relies on).

    boxes: {key: BoxesRef} of the piece's members that have annotations.
    blacklist: keys in the devkit's localisation blacklist.
    """
    relative = layout.piece(piece.split, piece.shard_id, piece.piece)
    rejects, samples = [], 0
    with atomic_write(layout.url(relative)) as f:
        for row, jpeg, ref in _kept_samples(piece, members, options, layout, reader, boxes or {}, blacklist,
                                            rejects, on_progress):
            staged = (row, None, (ref.archive, ref.offset, ref.size)) if not row.reencoded else (row, jpeg, None)
            pickle.dump(staged, f, protocol=pickle.HIGHEST_PROTOCOL)
            samples += 1
    return PieceResult(piece, relative, samples, rejects)


def _staged_samples(layout: OutputLayout, relative: str, reader: ArchiveReader) -> Iterator[tuple[IndexRow, bytes]]:
    with fsspec.open(layout.url(relative), "rb") as f:
        while True:
            try:
                row, jpeg, source = pickle.load(f)
            except EOFError:
                return
            yield row, jpeg if source is None else reader.read(*source)


def assemble_shard(task: ShardTask, pieces: Iterable[PieceResult], layout: OutputLayout,
                   reader: ArchiveReader) -> ShardResult:
    """Write a shard's tar from its staged pieces, in piece order, then its Parquet index; remove
    the pieces. `reader` reads the JPEGs that were staged as their place in an archive.

    Idempotent: run again after it finished (a runner's retry), it finds the pieces gone and
    reports the shard it wrote from the shard's own files."""
    pieces = sorted(pieces, key=lambda p: p.task.piece)
    expected = pieces[0].task.pieces if pieces else 0
    if [p.task.piece for p in pieces] != list(range(expected)) or expected == 0:
        raise RuntimeError(f"shard {task}: pieces {[p.task.piece for p in pieces]} of {expected} reached the writer")
    fs = fsspec.core.url_to_fs(layout.root)[0]
    paths = [fsspec.core.url_to_fs(layout.url(p.path))[1] for p in pieces]
    if not all(fs.exists(path) for path in paths):
        return _written_shard(task, layout)
    result = _write_tar_and_index(
        task, (sample for piece in pieces for sample in _staged_samples(layout, piece.path, reader)), layout)
    for path in paths:
        fs.rm(path)
    return result


def _written_shard(task: ShardTask, layout: OutputLayout) -> ShardResult:
    """What assemble_shard returned for a shard it already wrote, read back from the tar and index."""
    relative, index_path = layout.shard(task.split, task.shard_id), layout.index(task.split, task.shard_id)
    try:
        with fsspec.open(layout.url(index_path), "rb") as f:
            table = pq.read_table(f, schema=INDEX_SCHEMA)
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
    return ShardResult(info, index_file_of(task.split, task.shard_id, index_path, rows), rows, [])


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
    pieces: int = 1,
) -> ShardResult:
    """One shard in one call, as the Beam stages make it (cut; then write it whole, or process
    its pieces and assemble them): the same files, byte for byte, whatever `pieces`.

    boxes: {key: BoxesRef} of the annotations that hash to this shard.
    """
    cut = cut_shard(task, refs, seed, boxes, even_cut(pieces))
    if len(cut.pieces) == 1:
        piece, members, piece_boxes = cut.pieces[0]
        result = write_whole_shard(piece, members, options, layout, reader, on_progress, piece_boxes, blacklist)
        kernel_rejects = result.rejects
    else:
        staged = [process_piece(piece, members, options, layout, reader, on_progress, piece_boxes, blacklist)
                  for piece, members, piece_boxes in cut.pieces]
        result = assemble_shard(task, staged, layout, reader)
        kernel_rejects = [r for p in staged for r in p.rejects]
    result.rejects = cut.rejects + kernel_rejects
    result.orphan_annotations = cut.orphan_annotations
    return result


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


class _CutShardFn(beam.DoFn):
    """(ShardTask, [MemberRef], [BoxesRef]) -> (key, (PieceTask, members, boxes)) a piece; repeated
    keys -> rejects; annotations without an image -> orphans.

    The key is what the runner spreads over its workers. Runners that scale out: each piece its
    own, pieces of PIECE_SAMPLES. The local runner with several workers: the piece's segment
    (transforms/segments.py), shards cut only where segments end. With one worker: the shard's,
    never cut."""

    def __init__(self, seed: int, local_workers: Optional[int]):
        self._seed = seed
        self._local_workers = local_workers
        self._segments = None  # (sizes, Segments) of the last side input seen

    def _segments_of(self, sizes) -> Segments:
        if self._segments is None or self._segments[0] is not sizes:
            self._segments = (sizes, Segments.from_sizes(sizes, self._local_workers))
        return self._segments[1]

    def process(self, element, sizes=()):
        task, refs, boxes = element
        if not _segmented(self._local_workers):
            cut = cut_shard(task, refs, self._seed, _boxes_by_key(boxes),
                            small_pieces if self._local_workers is None else even_cut(1))
            keys = [(task.split, task.shard_id, i) for i in range(len(cut.pieces))]
        else:
            segments = self._segments_of(sizes)
            cut = cut_shard(task, refs, self._seed, _boxes_by_key(boxes),
                            lambda members: segments.cuts(task.split, task.shard_id, members))
            # a piece goes where its middle member is (a cut dropped near a shard's end moves the
            # few members before it to the next segment, not the whole shard to the previous one)
            keys = [segments.segment(task.split, task.shard_id, start + len(members) // 2)
                    for start, (_, members, _) in zip(cut.starts, cut.pieces)]
        if cut.orphan_annotations:
            yield pvalue.TaggedOutput("orphans", (task.split, cut.orphan_annotations))
        yield from _rejects(cut.rejects)
        for key, (piece, members, piece_boxes) in zip(keys, cut.pieces):
            yield key, to_shuffle((piece, tuple(members), piece_boxes))


def _segmented(local_workers: Optional[int]) -> bool:
    """Whether the work is shared out in segments: the local runner with several workers."""
    return local_workers is not None and local_workers > 1


def _rejects(rejects):
    for reject in rejects:
        beam.metrics.Metrics.counter("rejects", reject.reason).inc()
        yield pvalue.TaggedOutput("rejects", reject)


def _shard_outputs(result: ShardResult):
    beam.metrics.Metrics.counter("samples", result.shard.split).inc(len(result.rows))
    yield pvalue.TaggedOutput("index", result.index)
    for bucket in hash_buckets(result.rows, result.shard.shard_id):
        yield pvalue.TaggedOutput("hashes", bucket)
    yield pvalue.TaggedOutput("shards", result.shard)


class _ProcessPieceFn(beam.DoFn):
    """(key, [(PieceTask, members, boxes), ...]: a piece's own, or a segment's) -> a shard that is
    one piece: written,
    its ShardInfo / IndexFile / hash buckets out; a piece of several: staged,
    ((split, shard_id), PieceResult less its rejects) out. Kernel rejects -> rejects."""

    def __init__(self, options: ImageOptions, out_root: str, codecs: dict, progress_dir: Optional[str],
                 blacklist: frozenset):
        self._blacklist = blacklist
        self._options = options
        self._out_root = out_root
        self._codecs = codecs
        self._progress_dir = progress_dir

    def setup(self):
        check_codecs(self._codecs)
        self._layout = OutputLayout(self._out_root)
        self._reader = ArchiveReader()

    def _heartbeat(self, piece: PieceTask):
        if not self._progress_dir:
            return None
        path = os.path.join(self._progress_dir, f"{piece.split}-{piece.shard_id:06d}-{piece.piece:05d}")

        def report(done: int, total: int) -> None:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{done} {total}\n")
            os.replace(tmp, path)

        return report

    def process(self, element):
        _, values = element
        for value in values:
            piece, members, boxes = from_shuffle(value)
            args = (piece, members, self._options, self._layout, self._reader, self._heartbeat(piece), boxes,
                    self._blacklist)
            if piece.pieces == 1:
                result = write_whole_shard(*args)
                yield from _rejects(result.rejects)
                yield from _shard_outputs(result)
            else:
                staged = process_piece(*args)
                yield from _rejects(staged.rejects)
                yield (piece.split, piece.shard_id), PieceResult(piece, staged.path, staged.samples, [])

    def teardown(self):
        self._reader.close()


class _AssembleShardFn(beam.DoFn):
    """((split, shard_id), [PieceResult]) -> ShardInfo; index -> IndexFile; hashes -> hash buckets."""

    def __init__(self, out_root: str):
        self._out_root = out_root

    def setup(self):
        self._layout = OutputLayout(self._out_root)
        self._reader = ArchiveReader()

    def process(self, element):
        (split, shard_id), pieces = element
        yield from _shard_outputs(assemble_shard(ShardTask(split, shard_id), pieces, self._layout, self._reader))

    def teardown(self):
        self._reader.close()


class WriteShards(beam.PTransform):
    """(ShardTask, [MemberRef], [BoxesRef]) -> {"shards": ShardInfo, "index": IndexFile,
    "hashes": (bucket, ((sha256, key, split, shard_id), ...)) (index.hash_buckets), "rejects": Reject,
    "orphans": (split, annotations without an image)}.

    Pieces are keyed and grouped, so that the runner spreads them over its workers (see
    _CutShardFn); only their MemberRefs cross that shuffle, and only PieceResults (a path and
    counts) the one that gathers a shard's pieces.
    local_workers: the local runner's worker count; None for runners that scale out. Several
    workers need `sizes`, GroupIntoShards' ((split, shard_id), members), to lay out the segments."""

    def __init__(self, options: ImageOptions, out_root: str, seed: int, codecs: dict,
                 progress_dir: Optional[str] = None, blacklist: frozenset = frozenset(),
                 local_workers: Optional[int] = None, sizes=None):
        super().__init__()
        if _segmented(local_workers) and sizes is None:
            raise ValueError("several local workers need the shards' sizes: where each lies on the line of members")
        self._sizes = sizes if _segmented(local_workers) else None
        self._cut = _CutShardFn(seed, local_workers)
        self._process = _ProcessPieceFn(options, out_root, codecs, progress_dir, blacklist)
        self._assemble = _AssembleShardFn(out_root)

    def expand(self, tasks):
        side = {"sizes": beam.pvalue.AsList(self._sizes)} if self._sizes is not None else {}
        cut = tasks | "CutIntoPieces" >> beam.ParDo(self._cut, **side).with_outputs("rejects", "orphans", main="pieces")
        processed = (
            cut.pieces
            | "SpreadPieces" >> beam.GroupByKey()
            | "ProcessPieces" >> beam.ParDo(self._process).with_outputs(
                "rejects", "shards", "index", "hashes", main="pieces")
        )
        assembled = (
            processed.pieces
            | "GatherPieces" >> beam.GroupByKey()
            | "AssembleShards" >> beam.ParDo(self._assemble).with_outputs("index", "hashes", "shards")
        )
        out = {name: (processed[name], assembled[name]) | f"All{name.title()}" >> beam.Flatten()
               for name in ("shards", "index", "hashes")}
        out["rejects"] = (cut.rejects, processed.rejects) | "AllShardRejects" >> beam.Flatten()
        out["orphans"] = cut.orphans
        return out
