"""Making a shard from its pieces: process a piece into a scratch file, then assemble the shard.

Contract (no Beam):
    write_whole_shard(piece, ...)  a shard that is one piece, processed straight into its tar
    process_piece(piece, ...)      the kernel loop on one piece of several; its index rows and
                                   JPEGs staged in OUT/_pieces/ -> PieceResult
    assemble_shard(task, pieces)   the staged pieces, in order, into the shard's tar and index;
                                   the pieces removed -> ShardResult
    write_shard(task, refs, ...)   all of it in one call (cut, process, assemble): the same files,
                                   byte for byte, however many pieces

A JPEG kept byte for byte is staged as its place in a local archive (the assembler reads it again:
a read of the input instead of a write and a read of a copy); a re-encoded one, or one from a
remote archive (where a read is a request), is staged as bytes. assemble_shard is idempotent:
run again after it finished (a runner's retry), it finds the pieces gone and reports the shard it
wrote from the shard's own files.
"""
from __future__ import annotations

import pickle
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import fsspec

from transforms.image import ImageOptions
from transforms.layout import OutputLayout
from transforms.pieces import Piece, cut_shard, even_cut
from transforms.previous import PreviousImages
from transforms.processing import process_members
from transforms.records import MemberRef, PieceResult, ShardTask
from transforms.schema import IndexRow
from transforms.shard_writer import ShardResult, ShardWriter, read_written_shard
from transforms.storage import ArchiveReader, atomic_write, is_local

__all__ = ["write_whole_shard", "process_piece", "assemble_shard", "write_shard"]

Progress = Optional[Callable[[int, int], None]]


class StagedSample(NamedTuple):
    """One processed sample in a piece's scratch file: a re-encoded JPEG (or one from a remote
    archive) as bytes, a kept one as its place in the local archive."""

    row: IndexRow
    jpeg: Optional[bytes]  # None when the source is stored as it is, from a local archive
    source: Optional[tuple[str, int, int]]  # (archive, offset, size) of a kept JPEG, else None


def write_whole_shard(piece: Piece, options: ImageOptions, layout: OutputLayout, reader: ArchiveReader,
                      on_progress: Progress = None, blacklist: frozenset = frozenset(),
                      previous: Optional[PreviousImages] = None) -> ShardResult:
    """A shard that is one piece: processed straight into its tar, nothing staged. previous: the
    previous version's images, in a rebuild (see transforms/previous.py)."""
    task = piece.task
    assert task.pieces == 1, task
    rejects: list = []
    with ShardWriter(layout, task.shard) as shard:
        for sample in process_members(piece.members, options, reader, layout.shard(task.split, task.shard_id),
                                      piece.boxes, blacklist, rejects, on_progress, previous):
            shard.add(sample.row, sample.jpeg)
    assert shard.result is not None
    shard.result.rejects = rejects
    return shard.result


def process_piece(piece: Piece, options: ImageOptions, layout: OutputLayout, reader: ArchiveReader,
                  on_progress: Progress = None, blacklist: frozenset = frozenset(),
                  previous: Optional[PreviousImages] = None) -> PieceResult:
    """Run the kernel loop on a piece's members (already in shard order); stage the index rows
    and the stored JPEGs in the piece's scratch file, for assemble_shard (archives do not change
    during a build, which every stage after IndexArchives already relies on).

    blacklist: keys in the devkit's localisation blacklist; previous: the previous version's
    images, in a rebuild (see transforms/previous.py).
    """
    task = piece.task
    relative = layout.piece(task.split, task.shard_id, task.piece)
    rejects: list = []
    samples = 0
    with atomic_write(layout.url(relative)) as f:
        for row, jpeg, ref in process_members(piece.members, options, reader, layout.shard(task.split, task.shard_id),
                                              piece.boxes, blacklist, rejects, on_progress, previous):
            if row.reencoded or not is_local(ref.archive):
                staged = StagedSample(row, jpeg, None)
            else:
                staged = StagedSample(row, None, (ref.archive, ref.offset, ref.size))
            pickle.dump(tuple(staged), f, protocol=pickle.HIGHEST_PROTOCOL)
            samples += 1
    return PieceResult(task, relative, samples, rejects, piece.shard_digest)


def _staged_samples(layout: OutputLayout, relative: str, reader: ArchiveReader) -> Iterator[tuple[IndexRow, bytes]]:
    with fsspec.open(layout.url(relative), "rb") as f:
        while True:
            try:
                staged = StagedSample(*pickle.load(f))
            except EOFError:
                return
            if staged.source is not None:
                yield staged.row, reader.read(*staged.source)
            else:
                assert staged.jpeg is not None
                yield staged.row, staged.jpeg


def assemble_shard(task: ShardTask, pieces: Iterable[PieceResult], layout: OutputLayout,
                   reader: ArchiveReader) -> ShardResult:
    """Write a shard's tar from its staged pieces, in piece order, then its Parquet index; remove
    the pieces. `reader` reads the JPEGs that were staged as their place in an archive."""
    pieces = sorted(pieces, key=lambda p: p.task.piece)
    expected = pieces[0].task.pieces if pieces else 0
    if [p.task.piece for p in pieces] != list(range(expected)) or expected == 0:
        raise RuntimeError(f"shard {task}: pieces {[p.task.piece for p in pieces]} of {expected} reached the writer")
    fs = fsspec.core.url_to_fs(layout.root)[0]
    paths = [fsspec.core.url_to_fs(layout.url(p.path))[1] for p in pieces]
    if not all(fs.exists(path) for path in paths):
        return read_written_shard(task, layout)
    with ShardWriter(layout, task) as shard:
        for piece in pieces:
            for row, jpeg in _staged_samples(layout, piece.path, reader):
                shard.add(row, jpeg)
    for path in paths:
        fs.rm(path)
    assert shard.result is not None
    return shard.result


def write_shard(task: ShardTask, refs: Iterable[MemberRef], options: ImageOptions, layout: OutputLayout, seed: int,
                reader: ArchiveReader, on_progress: Progress = None, boxes: Optional[dict] = None,
                blacklist: frozenset = frozenset(), pieces: int = 1) -> ShardResult:
    """One shard in one call, as the Beam stages make it (cut; then write it whole, or process
    its pieces and assemble them): the same files, byte for byte, whatever `pieces`.

    boxes: {key: BoxesRef} of the annotations that hash to this shard.
    """
    cut = cut_shard(task, refs, seed, boxes, even_cut(pieces))
    if len(cut.pieces) == 1:
        result = write_whole_shard(cut.pieces[0], options, layout, reader, on_progress, blacklist)
        kernel_rejects = result.rejects
    else:
        staged = [process_piece(piece, options, layout, reader, on_progress, blacklist) for piece in cut.pieces]
        result = assemble_shard(task, staged, layout, reader)
        kernel_rejects = [r for p in staged for r in p.rejects]
    result.rejects = cut.rejects + kernel_rejects
    result.orphan_annotations = cut.orphan_annotations
    return result
