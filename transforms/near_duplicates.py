"""Near-duplicate pairs: 64-bit hashes within a Hamming distance, found without comparing all pairs.

Contracts (pure functions; no Beam):

    band_keys(phash, bands) -> [(band_index, band_value)], one per band
    pairs_in_bucket(entries, max_distance, band_index) -> BucketPairs(pairs, unlisted)
        entries: (key, split, phash) of the samples whose band `band_index` (of max_distance + 1
        bands) has one value; pairs: NearPair(key_a, split_a, key_b, split_b, distance), each with
        (key_a, split_a) < (key_b, split_b), distance <= max_distance
    nearest_other(pairs) -> {key: the key, sorting first, of the nearest other sample}
    find_near_pairs(entries, max_distance) -> BucketPairs: the whole search in one process
    search_indices(hashes, max_distance, part=(i, n)) -> IndexPairs: the same on an array (or the
        i-th of n parts of it, shared out over workers), positions for keys
    merge_parts([IndexPairs of each part]) -> IndexPairs: the parts as one search

The search (exact, not approximate):
  * Pigeonhole. The 64 bits are cut into B = max_distance + 1 bands of adjacent bits (widths
    differ by at most one; band 0 holds the most significant bits). Two hashes within distance d
    differ in at most d bits, so at least one of the d + 1 bands holds none of them: the pair
    shares that band's value exactly. Each sample is sent to B buckets, (band_index, band_value),
    and only samples in one bucket are compared.
  * Once. A pair that agrees on several bands meets in several buckets. It is reported only from
    the bucket of the lowest band on which it agrees. That band is a function of the two hashes
    alone, so each bucket decides on its own, and no global step removes duplicates.
  * Big buckets. With d = 8 there are 9 bands of 7 or 8 bits, so a bucket holds about a 128th of
    a band's samples (7,800 of a million), and comparing all its pairs would make 3.5e10
    comparisons over a million samples. Inside a bucket, the pigeonhole is applied again to the
    bits the bucket leaves free: members that agree on one of d + 1 sub-bands of those bits are
    grouped, and so on, until a group has at most LEAF_SIZE members (whose pairs are compared)
    or until splitting would not lower the number of comparisons (then the group's pairs are all
    compared, in blocks of bounded memory). This is exact for the same reason as the first
    level: a pair within d of each other in a group differs only in free bits, in at most d of
    them, so it agrees on one of the d + 1 sub-bands. Pairs found in several sub-bands are
    counted once (np.unique inside the bucket).
  * What it costs. A split costs far more per member than a comparison costs per pair: every
    member of a group that is split takes part in d + 1 sorts, and the groups it falls into are
    each small. A group's pairs are compared a distance apart at a time (the row k places after
    each row of the group, for k = 1, 2, ...), which costs 2 to 5 ns a pair. So LEAF_SIZE is 256:
    on a million phash-like random hashes at d = 8 (benchmarks/near_duplicates_bench.py, one
    core), a bucket's 9 sub-groups of about 120 are compared whole. Leaves of 48: 28 s, 1.1e9
    pairs compared; 96: 23 s, 1.8e9; 256: 11.8 s, 4.3e9; 400: 11.6 s, 4.7e9. At 4M samples the
    sub-groups hold about 480, and leaves of 256 (split once more) and 1,024 (not split) took
    132 s and 129 s. The buckets of a band are searched together, about 65,536 samples at a time:
    their nodes have the same free bits, so each numpy step covers many buckets (one bucket at a
    time: 29 s at a million).
  * Identical hashes (pathological buckets). Thousands of samples may share one hash: blank or
    flat images all hash to 0, exact copies hash alike. They are collapsed into one group before
    the search, so the search costs what the distinct hashes cost. A group's own pairs (distance
    0) are reported from band 0's bucket. A group of more than IDENTICAL_GROUP_LIMIT members is
    listed as a star: each member paired with the group's first key, and the group's pairs with
    other samples through that first key only; the pairs not listed are counted in `unlisted`.
    nearest_other stays exact under that rule: the first key of a group is the nearest key,
    sorting first, for every other member (at distance 0) and for every sample outside the group
    that is nearest to the group.

What a Beam wiring by buckets would cost (benchmarks/near_duplicates_bench.py measures it; the
build gathers every hash on one worker instead: transforms/near_duplicate_search.py): bands_for(d)
records a sample go through the shuffle, each a (key, split, phash) entry under its bucket
(band_index, band_value); pickled in one batch per shard and bucket, that is about 330 bytes a
sample for d = 8, so about 440 MB for ImageNet's 1.33M samples, which Beam's local runner
holds in memory. A worker holds one bucket at a time: its entries (about 10,000 for ImageNet
at d = 8, about 8,600 for a million samples), and about 650 bytes an entry while it searches them.

Long on purpose: this is one exact search. The bands, the rule that reports a pair once, the
splits inside a bucket and the groups of identical hashes are its parts, and each is only
correct with the others (the once rule must see every band, a split must leave the free bits
that the next one cuts): they are kept together so that the argument above can be checked
against them in one place.
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional

import numpy as np

__all__ = ["HASH_BITS", "LEAF_SIZE", "IDENTICAL_GROUP_LIMIT", "DEFAULT_MAX_DISTANCE", "NearPair", "BucketPairs",
           "IndexPairs", "bands_for", "band_layout", "band_keys", "band_values", "popcount64", "pairs_in_bucket",
           "bucket_pair_indices", "nearest_other", "find_near_pairs", "search_indices", "merge_parts"]

HASH_BITS = 64
# Distance <= 8 of 64 for transforms.phash: every re-encoded, resized, brightened and PNG copy of
# the bundled photos and all but the hardest crops are within it; no two different photographs
# are closer than 18 (tests/test_near_duplicates_core.py has the figures and the reasons).
DEFAULT_MAX_DISTANCE = 8
# A group of at most this many distinct hashes has all its pairs compared; a larger one is split.
LEAF_SIZE = 256
# Identical hashes shared by more samples than this are listed as a star (see the docstring).
IDENTICAL_GROUP_LIMIT = 64
# The all-pairs comparison of a group that cannot be split usefully works on blocks of rows x
# group size distances of at most this many, so that its memory stays bounded (about 40 MB).
_BLOCK_DISTANCES = 1 << 22
# A band whose values are all below this is sorted as uint16 (a radix sort, 2 bytes a value).
_NARROW_BAND = 1 << 16
# search_indices hands the buckets of a band to the search this many samples at a time, so that
# each numpy step works on arrays big enough to pay for its call and small enough for the caches.
_CHUNK_SAMPLES = 1 << 16

_UINT64 = np.uint64
_M1, _M2, _M4, _H01 = (_UINT64(0x5555555555555555), _UINT64(0x3333333333333333), _UINT64(0x0F0F0F0F0F0F0F0F),
                       _UINT64(0x0101010101010101))
_BITWISE_COUNT = getattr(np, "bitwise_count", None)  # numpy 2.0 and later


class NearPair(NamedTuple):
    """Two samples whose hashes are within the threshold; (key_a, split_a) sorts first."""

    key_a: str
    split_a: str
    key_b: str
    split_b: str
    distance: int


class BucketPairs(NamedTuple):
    """The pairs a bucket (or a whole search) reports, and how many pairs within the threshold
    were left out of the list by the star rule for big groups of identical hashes."""

    pairs: list
    unlisted: int


class IndexPairs(NamedTuple):
    """Pairs as positions in the array searched (first < second), and what the search did."""

    first: np.ndarray  # int64
    second: np.ndarray  # int64
    distance: np.ndarray  # int64
    unlisted: int  # pairs within the threshold left out of the list by the star rule
    compared: int  # the pairs of distinct hashes whose distance was computed


# --------------------------------------------------------------------------------------------------
# Bands


def bands_for(max_distance: int) -> int:
    """The number of bands that makes the search exact for `max_distance`: one more."""
    if not isinstance(max_distance, int) or not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be an integer in 0..{HASH_BITS - 1}, got {max_distance!r}")
    return max_distance + 1


def band_layout(bands: int) -> tuple[tuple[int, int], ...]:
    """(shift, width) of each band: adjacent bits, band 0 the most significant, widths that differ
    by at most one (the wider bands first)."""
    if not isinstance(bands, int) or not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be an integer in 1..{HASH_BITS}, got {bands!r}")
    narrow, wider = divmod(HASH_BITS, bands)
    layout, top = [], HASH_BITS
    for i in range(bands):
        width = narrow + (1 if i < wider else 0)
        top -= width
        layout.append((top, width))
    return tuple(layout)


def band_keys(phash: int, bands: int) -> list[tuple[int, int]]:
    """[(band_index, band_value)] of one hash: the buckets its sample is sent to."""
    if not 0 <= phash < 1 << HASH_BITS:
        raise ValueError(f"a hash must be in 0..2**64-1, got {phash}")
    return [(i, (phash >> shift) & ((1 << width) - 1)) for i, (shift, width) in enumerate(band_layout(bands))]


def band_values(hashes: np.ndarray, band_index: int, bands: int) -> np.ndarray:
    """The value of one band of every hash of a uint64 array."""
    shift, width = band_layout(bands)[band_index]
    return (hashes >> _UINT64(shift)) & _UINT64((1 << width) - 1)


def popcount64(values: np.ndarray) -> np.ndarray:
    """The number of bits set in each element of a uint64 array (int64)."""
    return _bit_counts(values).astype(np.int64)


def _bit_counts(values: np.ndarray) -> np.ndarray:
    """popcount64 in the narrowest type at hand (numpy's own count gives uint8)."""
    if _BITWISE_COUNT is not None:
        return _BITWISE_COUNT(values)
    x = values - ((values >> _UINT64(1)) & _M1)  # the classic SWAR count, for numpy before 2.0
    x = (x & _M2) + ((x >> _UINT64(2)) & _M2)
    x = (x + (x >> _UINT64(4))) & _M4
    return (x * _H01) >> _UINT64(56)


# --------------------------------------------------------------------------------------------------
# One bucket


def pairs_in_bucket(entries: Iterable, max_distance: int, band_index: int) -> BucketPairs:
    """The pairs of one bucket: `entries` are (key, split, phash) whose band `band_index` (of
    bands_for(max_distance)) has one value. A pair is reported only when this band is the lowest
    on which its two hashes agree, so that over all buckets each pair is reported once."""
    ordered = sorted((str(key), str(split), int(phash)) for key, split, phash in entries)
    hashes = np.fromiter((phash for _, _, phash in ordered), dtype=_UINT64, count=len(ordered))
    found = bucket_pair_indices(hashes, max_distance, band_index)
    pairs = [NearPair(ordered[a][0], ordered[a][1], ordered[b][0], ordered[b][1], d)
             for a, b, d in zip(found.first.tolist(), found.second.tolist(), found.distance.tolist())]
    return BucketPairs(pairs, found.unlisted)


def bucket_pair_indices(hashes: np.ndarray, max_distance: int, band_index: int,
                        group_limit: int = IDENTICAL_GROUP_LIMIT) -> IndexPairs:
    """pairs_in_bucket on positions: `hashes` (uint64) in the order of their samples' keys, all
    with one value of band `band_index`. first < second in every pair, sorted."""
    bands = bands_for(max_distance)
    if not 0 <= band_index < bands:
        raise ValueError(f"band_index must be in 0..{bands - 1}, got {band_index!r}")
    hashes = np.asarray(hashes, dtype=_UINT64)
    if len(hashes) and np.any(band_values(hashes, band_index, bands) != band_values(hashes[:1], band_index, bands)):
        raise ValueError(f"the hashes of a bucket must share the value of band {band_index}")
    return _buckets_pair_indices(hashes, max_distance, band_index, group_limit)


def _buckets_pair_indices(hashes: np.ndarray, max_distance: int, band_index: int, group_limit: int) -> IndexPairs:
    """bucket_pair_indices of several buckets of one band at once: `hashes` holds the samples of
    one or more values of band `band_index`, each bucket's samples in the order of their keys.
    Buckets never mix (their pairs are their own, and a bucket decides alone what it compares),
    so this is the buckets searched one by one, in fewer and larger numpy steps."""
    bands = bands_for(max_distance)
    layout = band_layout(bands)
    distinct, first_of, group_of, sizes = _identical_groups(hashes)
    shift, width = layout[band_index]
    free = [bit for bit in range(HASH_BITS) if not shift <= bit < shift + width]
    a, b, compared = _pairs_of_distinct(distinct, band_values(distinct, band_index, bands), free, max_distance)
    d = popcount64(distinct[a] ^ distinct[b])
    lowest = _lowest_agreeing_band(distinct[a] ^ distinct[b], layout)
    keep = (d <= max_distance) & (lowest == band_index)
    a, b, d = a[keep], b[keep], d[keep]
    first, second, distance, unlisted = _expand_groups(a, b, d, first_of, group_of, sizes, group_limit,
                                                       report_identical=band_index == 0)
    order = np.lexsort((second, first))
    return IndexPairs(first[order], second[order], distance[order], unlisted, compared)


def _identical_groups(hashes: np.ndarray):
    """The distinct hashes (sorted), the first position of each, each position's group, and the
    size of each group."""
    distinct, first_of, group_of, sizes = np.unique(hashes, return_index=True, return_inverse=True,
                                                    return_counts=True)
    return distinct, first_of.astype(np.int64), group_of.reshape(-1).astype(np.int64), sizes.astype(np.int64)


def _lowest_agreeing_band(xor: np.ndarray, layout) -> np.ndarray:
    """For each XOR of two hashes, the lowest band on which they agree (len(layout) if none)."""
    lowest = np.full(len(xor), len(layout), dtype=np.int64)
    for i in reversed(range(len(layout))):
        shift, width = layout[i]
        agree = ((xor >> _UINT64(shift)) & _UINT64((1 << width) - 1)) == 0
        lowest[agree] = i
    return lowest


def _pairs_of_distinct(hashes: np.ndarray, buckets: np.ndarray, free: list, max_distance: int):
    """Pairs (a < b, positions in `hashes`, distinct values) within max_distance of hashes in one
    bucket, given that the hashes of a bucket (one value of `buckets`) agree outside the `free`
    bits; each pair once. Returns (a, b, compared)."""
    found: list = []
    n = len(hashes)
    order = np.argsort(buckets, kind="stable")
    starts, counts = _runs(buckets[order])
    node = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    compared = _split_level_by_level(hashes, free, max_distance, node, order, found)
    if not found:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, compared
    a = np.concatenate([f[0] for f in found])
    b = np.concatenate([f[1] for f in found])
    packed = np.unique(a * n + b)  # a pair met in several sub-bands, once
    return packed // n, packed % n, compared


def _split_level_by_level(hashes: np.ndarray, free: list, max_distance: int, node: np.ndarray,
                          members: np.ndarray, found: list) -> int:
    """The pigeonhole applied again and again inside the buckets; return the pairs compared.

    A node is a group of members that agree on the bits outside its free bits (at first, a
    bucket). A node of at most LEAF_SIZE members is compared whole. Nodes reached by the same
    sub-bands have the same free bits, so they are split together, in a few numpy steps, whatever
    their number: `pending` holds (free bits, each row's node, each row's member), rows grouped
    by node, nodes numbered 0, 1, ... in order."""
    pending = [(free, node, members)]
    compared = 0
    while pending:
        free, node, members = pending.pop()
        if len(node) == 0:
            continue
        nodes = int(node[-1]) + 1
        sizes = np.bincount(node, minlength=nodes)
        node_starts = np.cumsum(sizes) - sizes
        if len(free) <= max_distance:  # no sub-band left to split on: compare each node whole
            compared += _compare_nodes(hashes, members, node_starts, sizes, np.ones(nodes, dtype=bool),
                                       max_distance, found)
            continue
        leaf = sizes <= LEAF_SIZE
        if leaf.any():  # compared whole, and left out of the sorts below
            compared += _compare_nodes(hashes, members, node_starts, sizes, leaf, max_distance, found)
            rest = ~leaf[node]
            if not rest.any():
                continue
            members = members[rest]
            node_starts, sizes = _runs(node[rest])  # the nodes left, numbered 0, 1, ... again
            nodes = len(sizes)
            node = np.repeat(np.arange(nodes, dtype=np.int64), sizes)
        splits = []
        pairs_after = np.zeros(nodes)
        for sub in _chunks(free, max_distance + 1):
            # (node, sub-band value) as one integer: max_distance >= 1 here, so a sub-band has at
            # most 32 bits, and a node number needs far fewer than 32. The order of rows with
            # one key does not matter (each pair is compared, then kept once), so numpy's
            # quicker unstable sort does.
            key = (node.astype(_UINT64) << _UINT64(len(sub))) | _gather_bits(hashes[members], sub)
            order = np.argsort(key)
            starts, counts = _runs(key[order])
            run_node = node[order][starts]
            pairs_after += np.bincount(run_node, weights=counts * (counts - 1) / 2, minlength=nodes)
            splits.append((sub, members[order], starts, counts, run_node))
        # A dense cluster (members all within a few bits of each other) is compared whole:
        # splitting would compare more pairs than it has.
        whole = pairs_after >= sizes * (sizes - 1) / 2
        compared += _compare_nodes(hashes, members, node_starts, sizes, whole, max_distance, found)
        for sub, sorted_members, starts, counts, run_node in splits:
            live = ~whole[run_node] & (counts >= 2)
            small = live & (counts <= LEAF_SIZE)
            compared += _compare_small_groups(hashes, sorted_members, starts[small], counts[small], max_distance, found)
            large = live & (counts > LEAF_SIZE)
            if large.any():
                rows = _ranges(starts[large], counts[large])
                new_node = np.repeat(np.arange(int(large.sum()), dtype=np.int64), counts[large])
                taken = set(sub)
                pending.append(([bit for bit in free if bit not in taken], new_node, sorted_members[rows]))
    return compared


def _compare_nodes(hashes, members, node_starts, sizes, chosen, max_distance, found) -> int:
    """Every pair inside each chosen node (a run of `members`): the small ones together, the
    others one by one."""
    small = chosen & (sizes <= LEAF_SIZE) & (sizes >= 2)
    compared = _compare_small_groups(hashes, members, node_starts[small], sizes[small], max_distance, found)
    big = chosen & (sizes > LEAF_SIZE)
    for start, size in zip(node_starts[big].tolist(), sizes[big].tolist()):
        compared += _compare_all(hashes, members[start:start + size], max_distance, found)
    return compared


def _gather_bits(values: np.ndarray, bits: list) -> np.ndarray:
    """The `bits` (ascending positions) of each value, packed side by side into the low bits."""
    out = np.zeros(len(values), dtype=_UINT64)
    offset, i = 0, 0
    while i < len(bits):
        j = i
        while j + 1 < len(bits) and bits[j + 1] == bits[j] + 1:
            j += 1
        width = j - i + 1
        piece = (values >> _UINT64(bits[i])) & _UINT64((1 << width) - 1)
        out |= piece << _UINT64(offset)
        offset += width
        i = j + 1
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The positions start, start + 1, ..., start + count - 1 of every run, concatenated."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (np.cumsum(counts) - counts), counts)


def _chunks(bits: list, parts: int) -> list:
    """`bits` cut into `parts` runs of adjacent entries whose lengths differ by at most one."""
    narrow, wider = divmod(len(bits), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + narrow + (1 if i < wider else 0)
        out.append(bits[start:end])
        start = end
    return out


def _runs(sorted_values: np.ndarray):
    """The start and the length of each run of equal values in a sorted array."""
    if len(sorted_values) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    counts = np.diff(np.append(starts, len(sorted_values)))
    return starts.astype(np.int64), counts.astype(np.int64)


def _compare_small_groups(hashes, sorted_members, starts, counts, max_distance, found) -> int:
    """Every pair inside each group (a run of `sorted_members`), compared in one vectorized step
    per distance apart: with the groups' rows side by side, each row is compared with the row k
    places after it, for k = 1, 2, ..., as long as that row is in its group. The rows are taken
    in the order of how many rows of their group follow them, so that the rows still in reach at
    step k are a prefix of that order: each step is a slice and one gather, and the steps are as
    many as the largest group has members."""
    if len(starts) == 0:
        return 0
    rows = _ranges(starts, counts)
    members = sorted_members[rows]
    values = hashes[members]
    # How many rows after each row are in its group.
    follow = np.repeat(counts, counts) - 1 - (np.arange(len(rows), dtype=np.int64)
                                             - np.repeat(np.cumsum(counts) - counts, counts))
    by_reach = np.argsort((-follow).astype(np.int16), kind="stable")  # follow < LEAF_SIZE: a radix sort
    ahead = values[by_reach]
    in_reach = np.cumsum(np.bincount(follow)[::-1])[::-1]  # in_reach[k]: the rows with follow >= k
    for k in range(1, len(in_reach)):
        reach = by_reach[:in_reach[k]]
        near = np.flatnonzero(_bit_counts(ahead[:len(reach)] ^ values[reach + k]) <= max_distance)
        if len(near):
            a, b = members[reach[near]], members[reach[near] + k]
            found.append((np.minimum(a, b), np.maximum(a, b)))
    return int((counts * (counts - 1) // 2).sum())


def _compare_all(hashes, members, max_distance, found) -> int:
    """Every pair of `members`, a block of rows at a time."""
    values = hashes[members]
    n = len(members)
    block = max(1, _BLOCK_DISTANCES // max(n, 1))
    for start in range(0, n - 1, block):
        rows = np.arange(start, min(start + block, n - 1), dtype=np.int64)
        distance = popcount64(values[rows, None] ^ values[None, :])
        i, j = np.nonzero((distance <= max_distance) & (np.arange(n)[None, :] > rows[:, None]))
        if len(i):
            a, b = members[rows[i]], members[j]
            found.append((np.minimum(a, b), np.maximum(a, b)))
    return n * (n - 1) // 2


def _expand_groups(a, b, d, first_of, group_of, sizes, group_limit, report_identical):
    """Pairs of distinct hashes (group numbers a, b) -> pairs of positions, and the pairs inside
    each group when `report_identical`; big groups as stars (see the module docstring)."""
    singles = (sizes[a] == 1) & (sizes[b] == 1)  # the usual case: no identical hash on either side
    listed_a, listed_b, listed_d = [first_of[a[singles]]], [first_of[b[singles]]], [d[singles]]
    unlisted = 0
    members = _members_of_groups(group_of, sizes)

    def listed(group):
        if sizes[group] == 1:
            return first_of[group:group + 1]
        return members[group] if sizes[group] <= group_limit else members[group][:1]

    for ga, gb, distance in zip(a[~singles].tolist(), b[~singles].tolist(), d[~singles].tolist()):
        left, right = listed(ga), listed(gb)
        unlisted += int(sizes[ga] * sizes[gb]) - len(left) * len(right)
        x, y = np.meshgrid(left, right, indexing="ij")
        listed_a.append(x.ravel())
        listed_b.append(y.ravel())
        listed_d.append(np.full(x.size, distance, dtype=np.int64))
    if report_identical:
        for own in members.values():
            size = len(own)
            if size <= group_limit:
                x, y = np.triu_indices(size, 1)
                listed_a.append(own[x])
                listed_b.append(own[y])
            else:
                listed_a.append(np.full(size - 1, own[0], dtype=np.int64))
                listed_b.append(own[1:])
                unlisted += size * (size - 1) // 2 - (size - 1)
            listed_d.append(np.zeros(len(listed_a[-1]), dtype=np.int64))
    first, second = np.concatenate(listed_a), np.concatenate(listed_b)
    return np.minimum(first, second), np.maximum(first, second), np.concatenate(listed_d), unlisted


def _members_of_groups(group_of: np.ndarray, sizes: np.ndarray) -> dict:
    """{group: its members' positions, ascending (the first is the key sorting first)} for the
    groups of two or more members; the others are found through first_of."""
    shared = np.flatnonzero(sizes[group_of] >= 2)
    if len(shared) == 0:
        return {}
    order = shared[np.argsort(group_of[shared], kind="stable")]
    starts, counts = _runs(group_of[order])
    return {int(group_of[order[start]]): order[start:start + count]
            for start, count in zip(starts.tolist(), counts.tolist())}


# --------------------------------------------------------------------------------------------------
# Results and whole searches


def nearest_other(pairs: Iterable[NearPair]) -> dict:
    """{key: the key of the nearest other sample, the one sorting first among the nearest}."""
    best: dict = {}
    for pair in pairs:
        for key, other in ((pair.key_a, pair.key_b), (pair.key_b, pair.key_a)):
            candidate = (pair.distance, other)
            if key not in best or candidate < best[key]:
                best[key] = candidate
    return {key: other for key, (_, other) in best.items()}


def find_near_pairs(entries: Iterable, max_distance: int = DEFAULT_MAX_DISTANCE) -> BucketPairs:
    """Every pair of (key, split, phash) entries within max_distance, found bucket by bucket as
    a Beam wiring would (each bucket on its own), in one process. Pairs sorted."""
    ordered = sorted((str(key), str(split), int(phash)) for key, split, phash in entries)
    hashes = np.fromiter((phash for _, _, phash in ordered), dtype=_UINT64, count=len(ordered))
    found = search_indices(hashes, max_distance)
    pairs = [NearPair(ordered[a][0], ordered[a][1], ordered[b][0], ordered[b][1], d)
             for a, b, d in zip(found.first.tolist(), found.second.tolist(), found.distance.tolist())]
    return BucketPairs(pairs, found.unlisted)


def search_indices(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE,
                   group_limit: int = IDENTICAL_GROUP_LIMIT,
                   on_bucket: Optional[Callable[[int], None]] = None, part: tuple[int, int] = (0, 1)) -> IndexPairs:
    """find_near_pairs on positions: `hashes` (uint64) in the order of their samples' keys. Every
    bucket (band_index, band_value) goes through bucket_pair_indices on its own. `on_bucket` is
    given the size of each bucket with two or more members (for the benchmark).

    part (i, n): only the buckets of two or more members whose number, counted in (band, value)
    order, is i modulo n: the search shared out over n workers. Each bucket decides alone which
    pairs it reports, so merge_parts of the n parts is the whole search, exactly."""
    index, count_of_parts = part
    if not 0 <= index < count_of_parts:
        raise ValueError(f"part must be (i, n) with 0 <= i < n, got {part!r}")
    hashes = np.asarray(hashes, dtype=_UINT64)
    bands = bands_for(max_distance)
    parts: list = []
    unlisted = compared = 0
    serial = 0  # the number of the next bucket of two or more members
    for band_index in range(bands):
        values = band_values(hashes, band_index, bands)
        if len(values) and int(values.max()) < _NARROW_BAND:
            values = values.astype(np.uint16)  # a band of d >= 3 fits: numpy sorts it by radix, in 2 bytes
        # stable: each bucket keeps the key order. int32 positions: half the memory of numpy's.
        order = np.argsort(values, kind="stable").astype(_position_type(len(hashes)))
        starts, counts = _runs(values[order])
        del values
        starts, counts = starts[counts >= 2], counts[counts >= 2]
        mine = (np.arange(serial, serial + len(starts)) % count_of_parts) == index
        serial += len(starts)
        starts, counts = starts[mine], counts[mine]
        if on_bucket is not None:
            for count in counts.tolist():
                on_bucket(count)
        # The buckets are searched together, as many at a time as make about _CHUNK_SAMPLES samples.
        chunk_of = np.cumsum(counts) // _CHUNK_SAMPLES
        for chunk_starts, chunk_counts in _split_by(chunk_of, starts, counts):
            positions = order[_ranges(chunk_starts, chunk_counts)]
            found = _buckets_pair_indices(hashes[positions], max_distance, band_index, group_limit)
            parts.append((positions[found.first], positions[found.second], found.distance))
            unlisted += found.unlisted
            compared += found.compared
    empty = np.empty(0, dtype=np.int64)
    return merge_parts([IndexPairs(p[0], p[1], p[2], 0, 0) for p in parts]
                       + [IndexPairs(empty, empty, empty, unlisted, compared)])


def _position_type(count: int):
    """The narrowest integer type that holds the positions of `count` samples (int32 up to 2**31)."""
    return np.int32 if count < 1 << 31 else np.int64


def _split_by(labels: np.ndarray, *columns: np.ndarray):
    """The rows of `columns` cut where the (ascending) `labels` change: one tuple of slices a label."""
    starts, counts = _runs(labels)
    for start, count in zip(starts.tolist(), counts.tolist()):
        yield tuple(column[start:start + count] for column in columns)


def merge_parts(parts: Iterable[IndexPairs]) -> IndexPairs:
    """The pairs of several parts of one search (search_indices' `part`) as one search's: sorted."""
    parts = list(parts)
    unlisted, compared = sum(p.unlisted for p in parts), sum(p.compared for p in parts)
    parts = [p for p in parts if len(p.first)]
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return IndexPairs(empty, empty, empty, unlisted, compared)
    first = np.concatenate([p.first for p in parts]).astype(np.int64, copy=False)
    second = np.concatenate([p.second for p in parts]).astype(np.int64, copy=False)
    distance = np.concatenate([p.distance for p in parts]).astype(np.int64, copy=False)
    order = np.lexsort((second, first))
    return IndexPairs(first[order], second[order], distance[order], unlisted, compared)
