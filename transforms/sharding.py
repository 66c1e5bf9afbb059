"""Which shard each sample goes to, and how many shards a split gets.

Contract: MemberRefs -> ((split, shard_id), [MemberRef, ...]) for every shard id of
every split, empty shards included (so shard files are numbered without gaps).

- The shard count is decided from the inputs and options alone, before any image is
  processed: the estimated output bytes of the split over --shard-size.
- A sample's shard is a seeded hash of its key modulo the count: shards mix classes,
  and the assignment does not depend on the runner, the worker count or input order.
  Inside a shard, samples are ordered by the same hash (then key).
"""
from __future__ import annotations

import math
import typing

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.keys import shard_of
from transforms.records import BoxesRef, ShardMembers, ShardTask, SplitCount, SplitPlan, from_shuffle, to_shuffle

__all__ = ["estimate_sample_bytes", "plan_num_shards", "split_estimates", "assign_batch", "GroupIntoShards"]

# Per-sample bytes in a shard besides the image: three tar headers (.jpg, .cls, .json),
# the .cls and .json payloads padded to 512-byte blocks, and the image's average padding.
_TAR_OVERHEAD = 3 * 512 + 2 * 512 + 256


def _bytes_per_pixel(quality: int) -> float:
    # Rough size of a re-encoded 4:2:0 photo: ~0.28 B/px at q75, ~0.45 at q90, ~0.62 at q100.
    return 0.12 + 0.5 * (quality / 100) ** 4


def estimate_sample_bytes(source_size: int, resize_mode: str, resize_size, quality: int) -> int:
    """Expected bytes of one sample in its shard, from its source size and the options.

    Only an estimate (the shard count needs totals before images are decoded): a resize
    caps the stored image at about N x 0.75N (longer:N) or N x 1.33N (shorter:N) pixels.
    """
    stored = source_size
    if resize_mode != "none":
        area = resize_size * resize_size * (0.75 if resize_mode == "longer" else 4 / 3)
        stored = min(source_size, int(area * _bytes_per_pixel(quality)))
    return stored + _TAR_OVERHEAD


def plan_num_shards(num_samples: int, estimated_bytes: int, shard_size: int) -> int:
    if num_samples <= 0:
        return 0
    return max(1, min(num_samples, math.ceil(estimated_bytes / shard_size)))


def _add_pairs(pairs):
    count = total = 0
    for c, t in pairs:
        count += c
        total += t
    return count, total


# --- Beam wiring -------------------------------------------------------------------

def split_estimates(batch, mode: str, size, quality: int) -> list:
    """[(split, (samples, estimated bytes))] of one batch of MemberRefs."""
    totals: dict[str, tuple[int, int]] = {}
    for ref in batch:
        count, total = totals.get(ref.split, (0, 0))
        totals[ref.split] = (count + 1, total + estimate_sample_bytes(ref.size, mode, size, quality))
    return sorted(totals.items())


def assign_batch(batch, seed: int, counts: dict) -> list:
    """[((split, shard_id), (MemberRef, ...))]: a batch of members cut by the shard they go to."""
    by_shard: dict[tuple[str, int], list] = {}
    for ref in batch:
        by_shard.setdefault((ref.split, shard_of(ref.key, seed, counts[ref.split])), []).append(ref)
    return [(shard, tuple(refs)) for shard, refs in sorted(by_shard.items())]


# Members an assigning worker holds, cut by shard, before it sends them on: a batch of members is
# one class tar, whose members go to hundreds of shards (ImageNet-21k: ~650 members to ~550 of its
# ~3,000 shards), so sent batch by batch each would be a record of one or two members, and the
# local runner would hold ~150 bytes a member in the driver (a compressed pickle of one member and
# a key); gathered over many batches, a shard's record holds dozens of members (~25 bytes each).
# ~40 MB of MemberRefs in the worker at most.
ASSIGN_BUFFER_MEMBERS = 100_000


@beam.typehints.with_output_types(typing.Tuple[typing.Tuple[str, int], typing.Any])
class _AssignShardFn(beam.DoFn):
    """to_shuffle((MemberRef, ...)) | BoxesRef -> ((split, shard_id), record): members gathered by
    shard over the batches of a bundle (at most ASSIGN_BUFFER_MEMBERS at once), sent as
    to_shuffle((MemberRef, ...)); sizes -> ((split, shard_id), members sent); annotations of a split
    without samples -> orphans (SplitCount)."""

    def __init__(self, seed: int):
        self._seed = seed

    def start_bundle(self):
        self._by_shard: dict = {}
        self._held = 0

    def process(self, item, counts):
        if isinstance(item, bytes):  # a batch of members: every split in it has samples
            for shard, refs in assign_batch(from_shuffle(item), self._seed, counts):
                self._by_shard.setdefault(shard, []).extend(refs)
                self._held += len(refs)
            if self._held >= ASSIGN_BUFFER_MEMBERS:
                yield from self._flush(lambda value: value)
            return
        n = counts.get(item.split)
        if n:
            yield (item.split, shard_of(item.key, self._seed, n)), to_shuffle(item)
        else:  # an annotation for a split with no samples at all: nothing to join with
            yield beam.pvalue.TaggedOutput("orphans", SplitCount(item.split, 1))

    def finish_bundle(self):
        yield from self._flush(lambda value: WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),)))

    def _flush(self, wrap):
        """The members held, one record a shard, in shard order; and their counts."""
        for shard, refs in sorted(self._by_shard.items()):
            yield wrap((shard, to_shuffle(tuple(refs))))
            yield beam.pvalue.TaggedOutput("sizes", wrap((shard, len(refs))))
        self._by_shard, self._held = {}, 0


class GroupIntoShards(beam.PTransform):
    """{"members": to_shuffle((MemberRef, ...)) batches, "boxes": BoxesRef} ->
      "tasks":   ShardMembers(task, members, boxes) for every shard of every split (empty ones too);
      "plan":    (split, SplitPlan(samples, shards)), decided before any image is decoded;
      "sizes":   ((split, shard_id), members) of every shard with members (repeated keys counted);
      "orphans": SplitCount(split, 1) for each annotation of a split that has no samples.

    Only small records cross this shuffle (batches of MemberRefs, pickled and compressed, gathered
    by shard over many class tars: ~25 bytes per member; boxes), never image bytes. Annotations go
    to the shard their key hashes to, so they meet their image there.
    """

    def __init__(self, seed: int, shard_size: int, resize_mode: str, resize_size, quality: int):
        super().__init__()
        self._seed = seed
        self._shard_size = shard_size
        self._estimate = (resize_mode, resize_size, quality)

    def expand(self, inputs):
        members, boxes = inputs["members"], inputs["boxes"]
        seed, shard_size, (mode, size, quality) = self._seed, self._shard_size, self._estimate
        totals = (
            members
            | "EstimateBytes" >> beam.FlatMap(lambda packed: split_estimates(from_shuffle(packed), mode, size, quality))
            | "SumPerSplit" >> beam.CombinePerKey(_add_pairs)
        )
        plan = totals | "CountShards" >> beam.MapTuple(
            lambda split, t: (split, SplitPlan(t[0], plan_num_shards(t[0], t[1], shard_size))))
        shard_counts = beam.pvalue.AsDict(plan | "ShardsPerSplit" >> beam.MapTuple(lambda s, p: (s, p.shards)))

        routed = (members, boxes) | "AllRecords" >> beam.Flatten() | "AssignShard" >> beam.ParDo(
            _AssignShardFn(seed), counts=shard_counts).with_outputs("orphans", "sizes", main="assigned")
        every_shard = plan | "EveryShardId" >> beam.FlatMapTuple(
            lambda split, p: [((split, i), None) for i in range(p.shards)])
        tasks = (
            (routed.assigned, every_shard)
            | "WithEmptyShards" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "ToShardTask" >> beam.MapTuple(_to_shard_task)
        )
        sizes = routed.sizes | "MembersPerShard" >> beam.CombinePerKey(sum)
        return {"tasks": tasks, "plan": plan, "sizes": sizes, "orphans": routed.orphans}


def _to_shard_task(key, records) -> ShardMembers:
    refs, boxes = [], []
    for r in records:
        if r is None:  # the marker that makes an empty shard exist
            continue
        r = from_shuffle(r)
        if isinstance(r, BoxesRef):
            boxes.append(r)
        else:  # a batch of members
            refs.extend(r)
    return ShardMembers(ShardTask(key[0], key[1]), refs, boxes)
