"""How the local runner's workers share the shards: equal segments of one line of every member.

The local runner (Beam's FnApiRunner) deals a stage's keys out once, in turn, over its workers,
and never moves work afterwards: the worker that drew the most work finishes last while the
others wait. Dealing whole shards, that is up to a shard of idle time a worker (35 shards over
2 workers: one gets 18, the other 17, a 6% longer build), and cutting every shard into pieces
balances the work but stages all of it (a write and a read of each re-encoded JPEG, a second
read of each kept one, and a stage that assembles the pieces: 5-15% of the work measured).

So the work is laid out end to end instead: every member of every split on one line, shard
after shard in (split, shard_id) order, and the line is cut into `count` segments of equal
length, `count` a multiple of the workers. Each segment is one key, so each worker draws the
same number of equal segments, whatever order the runner deals them in. A shard is cut only
where a segment ends inside it (at most count - 1 shards, each in two pieces, or more if it is
longer than a segment); a cut closer than MIN_PIECE_SAMPLES to a shard's end is dropped, and a
piece goes to the segment of its middle member.

Where a shard starts on the line comes from every shard's member count (GroupIntoShards'
`sizes`, counted as members are assigned to shards). Estimating it from the plan instead (a
split's samples / shards each, as drawing by key hash makes them on average) left segments 3%
apart on the bench's 13,200 images, a whole worker's 1.5% of the build; the count costs a
small combine. Every member is in exactly one piece whatever the counts say: they only decide
where the cuts fall, never what a shard contains (shards are byte-identical however cut).

Segments cost memory: the runner hands a worker a whole key's values at once, so a segment holds
at most SEGMENT_MEMBERS members, and bigger builds have more segments. A segment's values are its
pieces, pickled and compressed (records.to_shuffle: ~25 bytes a member), and a worker unpickles one
piece at a time, so a segment of a million members is ~25 MB. Fewer, longer segments cut fewer
shards: each cut shard is staged piece by piece and assembled again (a write and a read of its
samples, and a second read of each JPEG kept as it is), which took more than a third of the time of
a build of a million tiny images cut at segments of 100,000 (benchmarks/scale.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

__all__ = ["SEGMENT_MEMBERS", "MIN_PIECE_SAMPLES", "Segments"]

# Members a segment holds at most: ~25 MB of compressed pieces in a worker at once. ImageNet-1k on
# 2 workers: 2 segments, so 1 of its ~65 shards (shorter:256, 512 MB shards) in two pieces;
# ImageNet-21k: 16 segments.
SEGMENT_MEMBERS = 1_000_000

# A cut leaving fewer members than this at either end of a shard is not made: staging a shard to
# move a handful of images to another worker costs more than the imbalance it saves.
MIN_PIECE_SAMPLES = 32


@dataclasses.dataclass(frozen=True)
class Segments:
    """The line of all members cut in `count` equal segments of `length` members."""

    count: int
    length: float
    starts: dict  # (split, shard_id) -> the place of its first member on the line

    @classmethod
    def from_sizes(cls, sizes: Iterable[tuple[tuple[str, int], int]], workers: int,
                   segment_members: int = SEGMENT_MEMBERS) -> Segments:
        """sizes: ((split, shard_id), members) of every shard that has members (in any order);
        workers: how many the runner has."""
        starts, total = {}, 0
        for shard, members in sorted(sizes):
            starts[shard] = total
            total += members
        per_worker = math.ceil(total / (workers * segment_members)) if total else 1
        count = workers * max(1, per_worker)
        return cls(count, max(total, 1) / count, starts)

    def _start(self, split: str, shard_id: int) -> int:
        return self.starts.get((split, shard_id), 0)

    def segment(self, split: str, shard_id: int, member: int) -> int:
        """The segment of the shard's member number `member` (0-based, in shard order)."""
        place = self._start(split, shard_id) + member + 0.5
        return min(self.count - 1, max(0, math.floor(place / self.length)))

    def cuts(self, split: str, shard_id: int, members: int) -> list[int]:
        """Where the shard's pieces start (member numbers; [0]: the shard is one piece)."""
        if members < 2 * MIN_PIECE_SAMPLES:
            return [0]
        first, last = self.segment(split, shard_id, 0), self.segment(split, shard_id, members - 1)
        start = self._start(split, shard_id)
        # the first member whose place is at or past the segment's start
        starts = [0]
        for j in range(first + 1, last + 1):
            begin = math.ceil(j * self.length - start - 0.5)
            if begin - starts[-1] >= MIN_PIECE_SAMPLES and members - begin >= MIN_PIECE_SAMPLES:
                starts.append(begin)
        return starts
