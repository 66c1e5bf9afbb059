"""The local runner's workers share the work in equal segments of the line of all members: every
member in exactly one segment, segments equal whatever the shards' sizes, few shards cut."""
import collections
import math
import random

import pytest

from transforms.segments import MIN_PIECE_SAMPLES, SEGMENT_MEMBERS, Segments


def _shard_sizes(rng, samples, shards):
    """Members drawn to shards by hash, as GroupIntoShards does."""
    counts = collections.Counter(rng.randrange(shards) for _ in range(samples))
    return [counts[i] for i in range(shards)]


def _sizes(shards_by_split):
    return [((split, i), n) for split, sizes in shards_by_split.items() for i, n in enumerate(sizes) if n]


def _deal(segments, shards_by_split):
    """Members of each segment, and the shards cut, when every shard is cut as `segments` says."""
    load, cut = collections.Counter(), []
    for split, sizes in shards_by_split.items():
        for shard_id, members in enumerate(sizes):
            starts = segments.cuts(split, shard_id, members)
            assert starts[0] == 0 and starts == sorted(set(starts)) and starts[-1] < max(1, members)
            ends = starts[1:] + [members]
            for begin, end in zip(starts, ends):
                assert end - begin >= MIN_PIECE_SAMPLES or len(starts) == 1
                load[segments.segment(split, shard_id, (begin + end) // 2)] += end - begin  # as WriteShards keys it
            if len(starts) > 1:
                cut.append((split, shard_id, len(starts)))
    return load, cut


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_segments_are_equal_and_cut_few_shards(workers):
    rng = random.Random(workers)
    shards = {"train": _shard_sizes(rng, 12_000, 31), "val": _shard_sizes(rng, 1_200, 4)}
    segments = Segments.from_sizes(_sizes(shards), workers)
    assert segments.count == workers  # 13,200 members: one segment per worker holds them all
    load, cut = _deal(segments, shards)
    assert sum(load.values()) == 13_200  # every member in exactly one segment
    assert set(load) == set(range(workers))
    # Shards dealt whole, a worker can get a whole shard (~380 members) more than another; here
    # the only difference left is a cut not made near a shard's end, at each end of a segment.
    assert max(load.values()) - min(load.values()) <= 2 * MIN_PIECE_SAMPLES, load
    assert len(cut) <= workers - 1 and all(pieces == 2 for *_, pieces in cut)


def test_more_segments_for_bigger_builds_each_within_the_memory_bound():
    rng = random.Random(0)
    # ImageNet-1k's ~1.33M members: one segment a worker, one shard cut
    shards = {"train": [4270 + rng.randint(-70, 70) for _ in range(300)],
              "val": [4166 + rng.randint(-70, 70) for _ in range(12)]}
    segments = Segments.from_sizes(_sizes(shards), workers=2)
    assert segments.count == 2 and segments.length <= SEGMENT_MEMBERS
    assert len(_deal(segments, shards)[1]) == 1
    # ImageNet-21k's ~14.2M members: more segments, each within the bound
    shards = {"train": [4730 + rng.randint(-70, 70) for _ in range(3000)]}
    segments = Segments.from_sizes(_sizes(shards), workers=2)
    assert segments.count % 2 == 0 and segments.length <= SEGMENT_MEMBERS
    assert segments.count == 2 * math.ceil(sum(shards["train"]) / (2 * SEGMENT_MEMBERS))
    load, cut = _deal(segments, shards)
    assert len(cut) <= segments.count - 1
    assert max(load.values()) - min(load.values()) <= 2 * MIN_PIECE_SAMPLES


def test_small_shards_and_cuts_near_a_shard_end_are_not_made():
    segments = Segments.from_sizes([(("val", 0), 100)], workers=2)  # one shard across both segments
    assert segments.cuts("val", 0, 100) == [0, 50]
    assert Segments.from_sizes([(("val", 0), 60)], 2).cuts("val", 0, 60) == [0]  # under 2 x MIN_PIECE_SAMPLES
    # the segments end 5 members into shard 1: moving 5 members is not worth staging the shard
    uneven = Segments.from_sizes([(("b", 0), 10), (("a", 1), 95), (("a", 0), 95)], workers=2)
    assert uneven.length == 100 and uneven.cuts("a", 1, 95) == [0]
    assert uneven.segment("a", 1, 4) == 0 and uneven.segment("a", 1, 5) == 1 and uneven.segment("a", 1, 47) == 1


def test_one_big_shard_is_shared_by_every_worker():
    """A val-only build of one shard still keeps every worker busy."""
    segments = Segments.from_sizes([(("val", 0), 50_000)], workers=4)
    starts = segments.cuts("val", 0, 50_000)
    assert starts == [0, 12_500, 25_000, 37_500]
    assert [segments.segment("val", 0, s) for s in starts] == [0, 1, 2, 3]


def test_an_empty_build_has_a_segment_a_worker():
    segments = Segments.from_sizes([], workers=2)
    assert segments.count == 2 and segments.cuts("train", 0, 0) == [0] and segments.segment("train", 0, 0) in (0, 1)


def _record_worker(folder):
    def record(element):
        import os

        key, _ = element
        with open(os.path.join(folder, f"{key}"), "w") as f:
            f.write(str(os.getpid()))
    return record


@pytest.mark.beam
def test_the_local_runner_deals_each_worker_the_same_number_of_keys(tmp_path):
    """What the segments rely on: the local runner hands a grouped stage's keys out evenly over
    its workers (in turn, in the order they arrived), whatever the keys are. If a Beam release
    changes that, the shards stay the same but this test says the balance is gone."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                               "--direct_num_workers=2"])
    with beam.Pipeline(options=options) as p:
        _ = (p | beam.Create([(key, None) for key in (3, 0, 2, 1, 5, 4)]) | beam.GroupByKey()
             | beam.Map(_record_worker(str(tmp_path))))
    pids = collections.Counter(path.read_text() for path in tmp_path.iterdir())
    assert sorted(pids.values()) == [3, 3], pids
