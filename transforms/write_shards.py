"""WriteShards: the Beam stage that makes the shards, the only one that touches image bytes.

Contract: {"tasks": ShardMembers(task, members, boxes), "sizes": ((split, shard_id), members)}
  -> "shards":  ShardInfo            each shard's tar, written
     "index":   IndexFile            each shard's Parquet index, written beside it
     "rejects": Reject               stages "shard" (repeated keys) and "image" (the kernel's)
     "orphans": SplitCount           annotations whose image is in no shard

A shard is made in up to three steps, so that work spreads over every worker however few
shards there are (a 6.4 GB val tar is 13 shards at the default size; on Dataflow there can be
more cores than shards):
  CutIntoPieces    order the members and cut them into pieces (transforms/pieces.py) where the
                   runner needs it: the local runner with several workers only where its equal
                   segments end (transforms/segments.py), runners that scale out into pieces of
                   PIECE_SAMPLES, one local worker never
  ProcessPieces    the kernel loop on each piece (~all the CPU of a build): a shard that is one
                   piece straight into its tar, a piece of several into a scratch file
  AssembleShards   a shard's staged pieces, in order, into its tar (transforms/assembly.py)
Only member references cross the first shuffle and only PieceResults (a path and counts) the
second: image bytes and index rows (~1 KB per sample, which the local runner would hold in
memory) stay in the stage or in the scratch files.

Determinism: the same inputs and options give a byte-identical shard on any runner, with any
worker count or piece size, on any retry.

Resume: each shard, once written, is recorded with its kernel rejects (transforms/checkpoints.py).
CutIntoPieces reports a shard that an earlier run of the same build completed from that record,
its tar and its index, and sends none of its pieces on.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Optional

import apache_beam as beam
from apache_beam import pvalue

from transforms.assembly import assemble_shard, process_piece, write_whole_shard
from transforms.boxes import merge_boxes
from transforms.checkpoints import completed_shard, members_digest, record_completed
from transforms.counting import reject_output
from transforms.image import ImageOptions, check_codecs
from transforms.layout import OutputLayout
from transforms.pieces import ShardCut, cut_shard, even_cut, small_pieces
from transforms.previous import PreviousImages
from transforms.progress import heartbeat
from transforms.records import ShardTask, SplitCount, from_shuffle, to_shuffle
from transforms.segments import Segments
from transforms.shard_writer import ShardResult
from transforms.storage import ArchiveReader, local_copy

__all__ = ["WriteShards"]


def _segmented(local_workers: Optional[int]) -> bool:
    """Whether the work is shared out in segments: the local runner with several workers."""
    return local_workers is not None and local_workers > 1


def _boxes_by_key(boxes) -> dict:
    grouped: dict = {}
    for b in boxes:
        grouped.setdefault(b.key, []).append(b)
    return {key: merge_boxes(refs) for key, refs in grouped.items()}


def _shard_outputs(result: ShardResult):
    """A shard's rejects, index and ShardInfo, on their outputs. (The source digests and perceptual
    hashes are in the index file: the duplicate and near-duplicate searches read them there.)"""
    for reject in result.rejects:
        yield reject_output(reject)
    beam.metrics.Metrics.counter("samples", result.shard.split).inc(len(result.rows))
    yield pvalue.TaggedOutput("index", result.index)
    yield pvalue.TaggedOutput("shards", result.shard)


# Declared main output types: Beam would otherwise infer a union with the tagged outputs, which a
# GroupByKey refuses.
@beam.typehints.with_output_types(typing.Tuple[typing.Any, bytes])
class _CutShardFn(beam.DoFn):
    """ShardMembers -> (key, to_shuffle(Piece)) for each piece; repeated
    keys -> rejects; annotations without an image -> orphans.

    The key is what the runner spreads over its workers. Runners that scale out: each piece its
    own, pieces of PIECE_SAMPLES. The local runner with several workers: the piece's segment
    (transforms/segments.py), shards cut only where segments end. With one worker: the shard's,
    never cut."""

    def __init__(self, seed: int, local_workers: Optional[int], out_root: str):
        self._seed = seed
        self._local_workers = local_workers
        self._out_root = out_root
        self._segments: Optional[tuple] = None  # (sizes, Segments) of the last side input seen

    def setup(self):
        self._layout = OutputLayout(self._out_root)

    def _segments_of(self, sizes) -> Segments:
        if self._segments is None or self._segments[0] is not sizes:
            assert self._local_workers is not None
            self._segments = (sizes, Segments.from_sizes(sizes, self._local_workers))
        return self._segments[1]

    def _cut(self, task: ShardTask, refs, boxes, sizes) -> tuple[ShardCut, list]:
        """The shard's cut, and the key of each of its pieces."""
        if not _segmented(self._local_workers):
            cut = cut_shard(task, refs, self._seed, boxes,
                            small_pieces if self._local_workers is None else even_cut(1))
            return cut, [(task.split, task.shard_id, i) for i in range(len(cut.pieces))]
        segments = self._segments_of(sizes)
        cut = cut_shard(task, refs, self._seed, boxes,
                        lambda members: segments.cuts(task.split, task.shard_id, members))
        # a piece goes where its middle member is (a cut dropped near a shard's end moves the
        # few members before it to the next segment, not the whole shard to the previous one)
        keys = [segments.segment(task.split, task.shard_id, start + len(piece.members) // 2)
                for start, piece in zip(cut.starts, cut.pieces)]
        return cut, keys

    def process(self, element, sizes=()):
        task = element.task
        cut, keys = self._cut(task, element.members, _boxes_by_key(element.boxes), sizes)
        if cut.orphan_annotations:
            yield pvalue.TaggedOutput("orphans", SplitCount(task.split, cut.orphan_annotations))
        for reject in cut.rejects:
            yield reject_output(reject)
        digest = members_digest(element.members, element.boxes)
        completed = completed_shard(self._layout, task, digest)
        if completed is not None:  # an earlier run of this build made it: reported, not made again
            beam.metrics.Metrics.counter("resumed_shards", task.split).inc()
            yield from _shard_outputs(completed)
            return
        for key, piece in zip(keys, cut.pieces):
            yield key, to_shuffle(dataclasses.replace(piece, shard_digest=digest))


@beam.typehints.with_output_types(typing.Tuple[typing.Tuple[str, int], typing.Any])
class _ProcessPieceFn(beam.DoFn):
    """(key, [to_shuffle(Piece), ...]: a piece's own, or a segment's) -> for a shard that is one
    piece: written, its ShardInfo / IndexFile / kernel rejects out; for a piece of
    several: staged, ((split, shard_id), PieceResult) out. `previous`: (the lookup's path or URL,
    the previous version's folder) in a rebuild that takes unchanged images from it."""

    def __init__(self, options: ImageOptions, out_root: str, codecs: dict, progress_dir: Optional[str],
                 blacklist: frozenset, previous: Optional[tuple[str, str]] = None):
        self._blacklist = blacklist
        self._options = options
        self._out_root = out_root
        self._codecs = codecs
        self._progress_dir = progress_dir
        self._previous_paths = previous
        self._reused = beam.metrics.Metrics.counter("images", "reused_from_previous_version")

    def setup(self):
        check_codecs(self._codecs)
        self._layout = OutputLayout(self._out_root)
        self._reader = ArchiveReader()
        self._previous: Optional[PreviousImages] = None
        if self._previous_paths is not None:
            lookup, previous_root = self._previous_paths
            self._previous = PreviousImages(local_copy(lookup), previous_root)

    def process(self, element):
        _, values = element
        for value in values:
            piece = from_shuffle(value)
            task = piece.task
            on_progress = heartbeat(self._progress_dir, task.split, task.shard_id, task.piece)
            reused = self._previous.reused if self._previous is not None else 0
            if task.pieces == 1:
                result = write_whole_shard(piece, self._options, self._layout, self._reader, on_progress,
                                           self._blacklist, self._previous)
                record_completed(self._layout, result, piece.shard_digest)
                yield from _shard_outputs(result)
            else:  # its kernel rejects travel with it (a few), reported with the shard
                yield (task.split, task.shard_id), process_piece(piece, self._options, self._layout, self._reader,
                                                                 on_progress, self._blacklist, self._previous)
            if self._previous is not None:
                self._reused.inc(self._previous.reused - reused)

    def teardown(self):
        self._reader.close()
        if self._previous is not None:
            self._previous.close()


class _AssembleShardFn(beam.DoFn):
    """((split, shard_id), [PieceResult]) -> ShardInfo; index -> IndexFile."""

    def __init__(self, out_root: str):
        self._out_root = out_root

    def setup(self):
        self._layout = OutputLayout(self._out_root)
        self._reader = ArchiveReader()

    def process(self, element):
        (split, shard_id), pieces = element
        pieces = list(pieces)
        result = assemble_shard(ShardTask(split, shard_id), pieces, self._layout, self._reader)
        result.rejects = sorted((r for p in pieces for r in p.rejects), key=lambda r: r.key)
        record_completed(self._layout, result, pieces[0].shard_digest)
        yield from _shard_outputs(result)

    def teardown(self):
        self._reader.close()


class WriteShards(beam.PTransform):
    """See the module docstring. local_workers: the local runner's worker count; None for runners
    that scale out. Several local workers need the "sizes" input to lay out the segments.
    previous: (the lookup's path or URL, the previous version's folder) in a rebuild that takes
    unchanged images from the previous version (transforms/previous.py)."""

    def __init__(self, options: ImageOptions, out_root: str, seed: int, codecs: dict,
                 progress_dir: Optional[str] = None, blacklist: frozenset = frozenset(),
                 local_workers: Optional[int] = None, previous: Optional[tuple[str, str]] = None):
        super().__init__()
        self._segmented = _segmented(local_workers)
        self._cut = _CutShardFn(seed, local_workers, out_root)
        self._process = _ProcessPieceFn(options, out_root, codecs, progress_dir, blacklist, previous)
        self._assemble = _AssembleShardFn(out_root)

    def expand(self, inputs):
        side = {}
        if self._segmented:
            if inputs.get("sizes") is None:
                raise ValueError("several local workers need the shards' sizes: where each lies on the line of members")
            side = {"sizes": beam.pvalue.AsList(inputs["sizes"])}
        cut = inputs["tasks"] | "CutIntoPieces" >> beam.ParDo(self._cut, **side).with_outputs(
            "rejects", "orphans", "shards", "index", main="pieces")
        processed = (
            cut.pieces
            | "SpreadPieces" >> beam.GroupByKey()
            | "ProcessPieces" >> beam.ParDo(self._process).with_outputs(
                "rejects", "shards", "index", main="pieces")
        )
        assembled = (
            processed.pieces
            | "GatherPieces" >> beam.GroupByKey()
            | "AssembleShards" >> beam.ParDo(self._assemble).with_outputs("rejects", "index", "shards")
        )
        # cut: the shards an earlier run of this build completed (transforms/checkpoints.py)
        out = {name: (cut[name], processed[name], assembled[name]) | f"All{name.title()}" >> beam.Flatten()
               for name in ("shards", "index", "rejects")}
        out["orphans"] = cut.orphans
        return out
