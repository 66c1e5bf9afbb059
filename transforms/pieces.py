"""How a shard's members are ordered and cut into pieces, so that work spreads over every worker.

Contract:
    cut_shard(task, refs, seed, boxes, cut) -> ShardCut: the members in shard order (seeded key
      hash, then key), repeated keys set aside as rejects (stage "shard": the first by archive
      position wins), the rest cut into pieces where `cut` says, each piece with its members' boxes.

Where to cut is the caller's choice: even_cut(n) gives n equal pieces, small_pieces pieces of
PIECE_SAMPLES members (runners that scale out), and transforms/segments.py the local runner's
equal segments. However a shard is cut, the same members end up in it in the same order, so
its bytes do not depend on the cut.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Optional, Sequence

from transforms.keys import key_hash
from transforms.records import BoxesRef, MemberRef, PieceTask, Reject, ShardTask

__all__ = ["PIECE_SAMPLES", "Piece", "ShardCut", "order_members", "even_cut", "small_pieces", "cut_shard"]

# Members a piece on runners that scale out (a build may have more cores than shards): many more
# pieces than cores, while a piece's fixed costs (a scratch file, two shuffled records) stay under
# 1% of its images' (~0.4 s of kernel work a piece).
PIECE_SAMPLES = 128


@dataclasses.dataclass(frozen=True)
class Piece:
    """One piece of a shard: its members in shard order, and the boxes of those that have them."""

    task: PieceTask
    members: tuple  # MemberRef, in shard order
    boxes: dict  # {key: BoxesRef}
    shard_digest: str = ""  # the digest of the whole shard's members (transforms/checkpoints.py)


@dataclasses.dataclass
class ShardCut:
    pieces: list  # Piece, in shard order
    starts: list  # each piece's first member: its number in the shard
    rejects: list  # repeated keys
    orphan_annotations: int  # annotations whose image is not in this shard's split


def order_members(refs: Iterable[MemberRef], seed: int) -> tuple[list[MemberRef], list[Reject]]:
    """Order a shard's members by seeded key hash; split off repeated keys as rejects."""
    ranked = sorted(refs, key=lambda r: (key_hash(r.key, seed), r.key, r.archive, r.offset))
    kept: list[MemberRef] = []
    rejects = []
    for ref in ranked:
        if kept and kept[-1].key == ref.key:
            first = kept[-1]
            rejects.append(Reject(ref.key, ref.split, ref.source, "duplicate_key",
                                  f"key already taken by {first.source}", "shard"))
        else:
            kept.append(ref)
    return kept, rejects


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


def cut_shard(task: ShardTask, refs: Iterable[MemberRef], seed: int, boxes: Optional[dict[str, BoxesRef]] = None,
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
    pieces = [Piece(PieceTask(task.split, task.shard_id, i, len(starts)), tuple(members[begin:end]),
                    {r.key: boxes[r.key] for r in members[begin:end] if r.key in boxes})
              for i, (begin, end) in enumerate(zip(starts, ends))]
    orphans = len(set(boxes) - {r.key for r in refs})
    return ShardCut(pieces, starts, rejects, orphans)
