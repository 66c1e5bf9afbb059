"""The training stream of a split: `stream(shards, ...)`, a webdataset pipeline for PyTorch.

    s = stream(shards, seed=0, batch_size=256, decode="torch", transform=crop)
    loader = s.loader(num_workers=8)        # DataLoader(s, batch_size=None, num_workers=8)
    for epoch in range(first_epoch, epochs):
        s.set_epoch(epoch, first_step if epoch == first_epoch else 0)   # (epoch, step) of a checkpoint
        for images, labels in loader:       # s.steps_per_epoch batches, len(s) samples in all
            ...

`shards` is the split's shards in manifest order, each a `StreamShard(url, samples)` (or any object
with `.url` and `.samples`, or a `(url, samples)` pair). The counts come from the manifest; the
stream checks them against the tars as it reads them and raises `ShardCountMismatch` where they
differ. Every rank must be given the same shards, seed and epoch.

Equal epochs on every rank. Each epoch has one order of the split's N samples, the same on every
rank: the shards in webdataset's seeded shard shuffle (seed + epoch), each shard's samples in tar
order. Rank r of W yields the contiguous range [r * L, (r + 1) * L) of that order, L = ceil(N / W);
the positions past N wrap around to the start of the order. So every rank yields exactly L samples,
no sample is left out, and the W * L - N samples (fewer than W) that make the ranks equal are the
first samples of the epoch's order, repeated by the last rank(s) (each once, unless the split has
fewer samples than there are ranks); samples of `output="sample"` mark them (`padding`), so that an
evaluation can count them out. With `drop_last=True` every rank
yields floor(N / W) samples instead, and the N - W * floor(N / W) samples at the end of the order are
left out of each epoch: `dropped` says how many, and so does a warning.
Why ranges of one order, not whole shards per rank (webdataset's own split by node): shards hold
unequal counts (the last shard of a split, and the smaller shards of a build), so whole shards
give unequal epochs, which stall a distributed step, or need padding as large as a shard. Why
contiguous ranges, not every W-th sample: a rank then reads only its own shards, and at most the
part of a shard it shares with a neighbour (read through to its first sample, never decoded).

Workers and steps. Within a rank, DataLoader workers share the rank's range the same way: the range
is cut into batches of `batch_size` samples (1 when the stream does not batch), and each worker
takes a contiguous run of them (the first `batches % workers` workers one more; the run that ends
with the rank's last batch, which may be partial, goes to the worker that yields last), reads those
samples through a shuffle buffer seeded by (seed, epoch, rank, worker) and batches them. PyTorch's
DataLoader (with batch_size=None and in_order=True, its default) takes one item from each worker in
turn, worker 0 first, and passes over the workers that are done: that is the rank's order, the same
every time for the same shards, seed, epoch, world size, workers, batch size and shuffle buffer.
A step is one item the stream yields: a batch when `batch_size` is set, a sample when it is not.
Resuming at (epoch, step k) yields exactly the rest of that order: a new DataLoader starts its
turns at worker 0 again, so its worker j plays the part of worker (j + k) mod workers of the whole
epoch (whose turn came next), knows from the arithmetic how many items of that part were yielded,
skips their samples after the shuffle buffer and before decoding, and goes on. Batch in the stream,
not in the DataLoader, when there are workers: `Stream.loader` makes the DataLoader that keeps this
order. A DataLoader copies the stream into its workers at each iteration, so `set_epoch` reaches
them; with `persistent_workers=True` they would keep their first copy (`loader` never sets it).
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import math
import os
import random
import sys
from importlib.util import find_spec
from typing import Any, Callable, Collection, Generator, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import webdataset as wds
from webdataset.pytorch import IterableDataset

from transforms.storage import open_input
from transforms.tar_headers import iter_tar_entries

__all__ = ["StreamShard", "Stream", "stream", "ShardCountMismatch", "Piece", "rank_and_world_size",
           "epoch_shard_order", "pieces_of", "worker_batches", "taken_from", "read_pieces", "DECODES", "OUTPUTS",
           "DEFAULT_SHUFFLE_BUFFER"]

log = logging.getLogger(__name__)

# decode= -> webdataset's image spec: PIL RGB images, HxWx3 uint8 arrays, 3xHxW uint8 tensors; None
# leaves the JPEG bytes as they are in the tar (for decoding on the GPU: pipeline/reading/gpu.py).
DECODES = {"pil": "pil", "numpy": "rgb8", "torch": "torchrgb8", None: None}
OUTPUTS = ("pair", "sample")
DEFAULT_SHUFFLE_BUFFER = 1000


class StreamShard(NamedTuple):
    """One shard of a split: where its tar is (a local path or an fsspec URL) and how many samples it
    holds (from the manifest)."""
    url: str
    samples: int


class Piece(NamedTuple):
    """Samples [start, stop) of the shard at `shard` in the shard list; `padding` when they repeat
    samples of the epoch to make the ranks equal."""
    shard: int
    start: int
    stop: int
    padding: bool


class ShardCountMismatch(ValueError):
    """A shard holds another number of samples than its entry (the manifest) says."""


def _entry(shard: Any) -> StreamShard:
    if hasattr(shard, "url") and hasattr(shard, "samples"):
        return StreamShard(str(shard.url), int(shard.samples))
    url, samples = shard
    return StreamShard(str(url), int(samples))


def rank_and_world_size(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """This process's (rank, world size): as given, else torch.distributed's when it is initialised,
    else the RANK and WORLD_SIZE environment variables, else (0, 1)."""
    if rank is None and world_size is None:
        # torch.distributed cannot be initialised unless it was imported: never import torch here.
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if rank is None or world_size is None:
        raise ValueError("give both rank and world_size, or neither")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: a rank is in [0, world_size)")
    return rank, world_size


def epoch_shard_order(count: int, seed: int, epoch: int, shuffle: bool = True) -> List[int]:
    """The positions of `count` shards in an epoch's order: webdataset's seeded shard shuffle with
    the seed `seed + epoch`, or the manifest order."""
    if not shuffle or count == 0:
        return list(range(count))
    return [int(shard["url"]) for shard in wds.SimpleShardList([str(i) for i in range(count)], seed=seed + epoch)]


def pieces_of(counts: Sequence[int], order: Sequence[int], start: int, stop: int) -> List[Piece]:
    """The pieces of shards that hold positions [start, stop) of an epoch's order: `counts[i]` samples
    in shard i, the shards in `order`; positions past the total wrap around to the start."""
    bounds = list(itertools.accumulate((counts[i] for i in order), initial=0))
    total, out, position = bounds[-1], [], start
    while position < stop:
        base = position % total
        at = bisect.bisect_right(bounds, base) - 1  # the shard holding `base` (empty shards have no position)
        take = min(bounds[at + 1] - base, stop - position)
        out.append(Piece(order[at], base - bounds[at], base - bounds[at] + take, position >= total))
        position += take
    return out


def worker_batches(batches: int, worker: int, workers: int) -> Tuple[int, int]:
    """Worker w's contiguous run [first, first + count) of a rank's batches: `batches // workers`
    each, one more for the first `extra = batches % workers` workers. The runs follow one another in
    the worker order extra, extra + 1, ..., workers - 1, 0, ..., extra - 1, so that the run with the
    rank's last (maybe partial) batch is that of the worker the DataLoader takes the last item from."""
    share, extra = divmod(batches, workers)
    if worker >= extra:
        return (worker - extra) * share, share
    return (workers - extra) * share + worker * (share + 1), share + 1


def taken_from(worker: int, workers: int, own: int, steps: int) -> int:
    """How many of worker w's `own` items a DataLoader has yielded after `steps` items in all: it takes
    one from each worker in turn and passes over the workers that are done. Workers' counts differ by
    at most one, the larger first (worker_batches), so every round but the last is whole."""
    return min(own, steps // workers + (worker < steps % workers))


def shard_samples(url: str, wanted: Optional[Collection[str]] = None) -> Generator[dict, None, None]:
    """The samples of one shard in tar order, as webdataset's tar reader gives them: a dict of
    `__key__`, `__url__` and each member's bytes by its extension (the name up to its first dot is
    the key, the rest the extension, lowercased; a name without a dot and anything but a regular
    file are passed over). The headers are read by transforms/tar_headers.py (~5 us a member,
    where tarfile, which webdataset uses, takes ~30: a tenth of a training loader's time per image
    went there). Members whose extension is not in `wanted` (None: all) are passed over unread."""
    with open_input(url) as tar:
        sample: Optional[dict] = None
        for entry in iter_tar_entries(tar, where=url):
            if entry.kind != "file":
                continue
            folder, slash, name = entry.name.rpartition("/")
            stem, dot, extension = name.partition(".")
            if not dot or not stem:
                continue
            key, extension = folder + slash + stem, extension.lower()
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            elif extension in sample:
                raise ValueError(f"{url}: the member {entry.name} comes twice in the sample {key}")
            if wanted is not None and extension not in wanted:
                continue
            tar.seek(entry.offset)
            data = tar.read(entry.size)
            if len(data) != entry.size:
                raise ShardCountMismatch(f"{url} ends inside its member {entry.name} ({len(data):,} of "
                                         f"{entry.size:,} bytes)")
            sample[extension] = data
        if sample is not None:
            yield sample


def read_pieces(shards: Sequence[StreamShard], pieces: Iterable[Piece],
                wanted: Optional[Collection[str]] = None) -> Iterator[dict]:
    """The raw samples (webdataset's dicts of bytes) of each piece in turn, `__padding__` added. A
    piece that starts inside a shard reads through the samples before it; a shard with fewer
    samples than its entry says, or more (seen where a piece reaches the shard's end), raises.
    wanted: the extensions to read (None: all; see shard_samples)."""
    for piece in pieces:
        entry = shards[piece.shard]
        with contextlib.closing(shard_samples(entry.url, wanted)) as samples:  # the shard closed at once
            seen = 0
            for sample in itertools.islice(samples, piece.stop):
                if seen >= piece.start:
                    sample["__padding__"] = piece.padding
                    yield sample
                seen += 1
            if seen < piece.stop or (piece.stop == entry.samples and next(samples, None) is not None):
                found = seen if seen < piece.stop else f"more than {seen}"
                raise ShardCountMismatch(f"{entry.url} holds {found} samples where its entry (the manifest) "
                                         f"says {entry.samples}")


class Stream(IterableDataset):
    """A split's samples for training, split by rank and by DataLoader worker (see the module's
    docstring); `stream()` makes one. `len()` is the samples this rank yields per epoch."""

    def __init__(self, shards: Iterable[Any], *, seed: int = 0, shuffle_shards: bool = True,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, rank: Optional[int] = None,
                 world_size: Optional[int] = None, decode: Optional[str] = "pil", output: str = "pair",
                 epoch: int = 0, start_step: int = 0, batch_size: Optional[int] = None, drop_last: bool = False,
                 transform: Optional[Callable[[Any], Any]] = None):
        super().__init__()
        if decode not in DECODES:
            raise ValueError(f"decode={decode!r}: one of {', '.join(map(repr, DECODES))}")
        if decode == "torch" and find_spec("torch") is None:
            raise ImportError("decode='torch' needs PyTorch, which is not installed (pip install torch); "
                              "decode='numpy' gives arrays without it")
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: one of {', '.join(map(repr, OUTPUTS))}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: at least 1, or None for samples one by one")
        self.shards = [_entry(shard) for shard in shards]
        self.seed, self.shuffle_shards, self.shuffle_buffer = seed, shuffle_shards, shuffle_buffer
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.decode, self.output, self.batch_size, self.drop_last = decode, output, batch_size, drop_last
        self.transform = transform
        spec = DECODES[decode]
        # .jpg to the image asked for (left as bytes when decode is None), .cls to an int, .json to a dict.
        self.decoder = wds.Decoder([wds.imagehandler(spec)] if spec else [],
                                   only=["jpg", "cls"] if output == "pair" else None)
        self.total = sum(shard.samples for shard in self.shards)
        if drop_last:
            self.samples_per_epoch = self.total // self.world_size
        else:
            self.samples_per_epoch = -(-self.total // self.world_size)
        # Over all ranks: the samples left out (drop_last) or repeated at the end of each epoch.
        self.dropped = max(0, self.total - self.samples_per_epoch * self.world_size)
        self.padding = max(0, self.samples_per_epoch * self.world_size - self.total)
        if self.dropped and self.rank == 0:
            log.warning("drop_last: %d of the %d samples (the end of each epoch's order) are left out of every "
                        "epoch, so that each of the %d ranks yields %d", self.dropped, self.total, self.world_size,
                        self.samples_per_epoch)
        self.epoch, self.start_step = 0, 0
        self.set_epoch(epoch, start_step)

    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        """The items this rank yields per epoch: batches (the last may be partial) or samples."""
        return math.ceil(self.samples_per_epoch / (self.batch_size or 1))

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Yield epoch `epoch` from step `start_step` on (a step: an item yielded, see the module's
        docstring) at the next iteration; call it before each epoch."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step={start_step}: an epoch of this rank has {self.steps_per_epoch} steps")
        self.epoch, self.start_step = epoch, start_step

    def plan(self, worker: int = 0, workers: int = 1) -> Tuple[int, List[Piece], int]:
        """(role, pieces, skip) of a DataLoader worker: the worker of the whole epoch whose part it
        plays (the one whose turn came after the steps before `start_step`: the DataLoader starts
        again at worker 0), that part's pieces in reading order, and how many of its samples the
        steps before `start_step` had."""
        per_batch = self.batch_size or 1
        role = (worker + self.start_step) % workers
        first, count = worker_batches(self.steps_per_epoch, role, workers)
        rank_start = self.rank * self.samples_per_epoch
        start = rank_start + min(first * per_batch, self.samples_per_epoch)
        stop = rank_start + min((first + count) * per_batch, self.samples_per_epoch)
        order = epoch_shard_order(len(self.shards), self.seed, self.epoch, self.shuffle_shards)
        pieces = pieces_of([shard.samples for shard in self.shards], order, start, stop)
        return role, pieces, taken_from(role, workers, count, self.start_step) * per_batch

    def __iter__(self) -> Iterator[Any]:
        _, _, worker, workers = wds.utils.pytorch_worker_info()
        role, pieces, skip = self.plan(worker, workers)
        # (image, label) pairs need two of a sample's members: the others are passed over unread.
        samples: Iterator[dict] = read_pieces(self.shards, pieces, ("jpg", "cls") if self.output == "pair" else None)
        if self.shuffle_buffer > 1:
            rng = random.Random(wds.utils.make_seed(self.seed, self.epoch, self.rank, role))
            samples = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(samples)
        items: Iterator[Any] = map(self.finish, itertools.islice(samples, skip, None))
        if self.batch_size:
            items = wds.batched(self.batch_size, collation_fn=self.collate, partial=True)(items)
        return items

    def finish(self, sample: dict) -> Any:
        """A raw sample decoded, transformed and shaped as `output` says: (image, label), or a dict
        with the key, url, image, label, meta (the sample's .json), boxes and padding."""
        if self.decode is None and self.output == "pair":
            # What the decoder does with these two members (the JPEG's bytes as they are, and
            # webdataset's int() of .cls), without its per-member dispatch: about 6 us a sample, a
            # hundredth of a 224 x 224 decode, on the loader's critical path.
            image = sample["jpg"] if self.transform is None else self.transform(sample["jpg"])
            return image, int(sample["cls"])
        decoded = self.decoder(sample)
        image = decoded["jpg"] if self.transform is None else self.transform(decoded["jpg"])
        if self.output == "pair":
            return image, decoded["cls"]
        meta = decoded["json"]
        return {"key": decoded["__key__"], "url": decoded["__url__"], "image": image, "label": decoded["cls"],
                "meta": meta, "boxes": np.asarray(meta["boxes"], dtype=np.float32).reshape(-1, 4),
                "padding": decoded["__padding__"]}

    def collate(self, items: List[Any]) -> Any:
        """A batch: (images, labels) with the labels an int64 array and the images stacked where they
        are arrays or tensors of one shape (a list otherwise); a list of sample dicts."""
        if self.output == "sample":
            return items
        images, labels = [image for image, _ in items], np.asarray([label for _, label in items], dtype=np.int64)
        shapes = {getattr(image, "shape", None) for image in images}
        if len(shapes) != 1 or None in shapes:
            return images, labels
        if isinstance(images[0], np.ndarray):
            return np.stack(images), labels
        import torch  # an optional dependency: only tensors (decode="torch" or a transform's) come here
        return torch.stack(images), labels

    def loader(self, num_workers: int = 0, **options: Any) -> Any:
        """A torch DataLoader over this stream that keeps its documented order (batch_size=None: the
        stream batches; no persistent workers). `options` go to the DataLoader."""
        from torch.utils.data import DataLoader  # an optional dependency

        return DataLoader(self, batch_size=None, num_workers=num_workers, persistent_workers=False, **options)


def stream(shards: Iterable[Any], *, seed: int = 0, shuffle_shards: bool = True,
           shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, rank: Optional[int] = None, world_size: Optional[int] = None,
           decode: Optional[str] = "pil", output: str = "pair", epoch: int = 0, start_step: int = 0,
           batch_size: Optional[int] = None, drop_last: bool = False,
           transform: Optional[Callable[[Any], Any]] = None) -> Stream:
    """The training stream of a split's shards (see the module's docstring for the order, the equal
    epochs and resuming).

    shards: the split's shards in manifest order (`StreamShard`, anything with .url and .samples, or
      (url, samples) pairs); every rank must pass the same.
    seed, epoch: the order of an epoch depends on both (set later epochs with `Stream.set_epoch`).
    shuffle_shards: shuffle the shard order each epoch (seed + epoch); False keeps the manifest order.
    shuffle_buffer: the samples a worker shuffles among; 0 or 1 for no sample shuffle.
    rank, world_size: this process's place, by default from torch.distributed or RANK / WORLD_SIZE.
    decode: "pil" (RGB images), "numpy" (HxWx3 uint8), "torch" (3xHxW uint8 tensors, needs torch) or
      None (the JPEG bytes, for `pipeline.reading.gpu.decode_jpegs`).
    output: "pair" for (image, label), "sample" for a dict with the metadata (.json) and boxes.
    start_step: the first step of `epoch` to yield (a batch when batch_size is set, else a sample).
    batch_size: batch in the stream (then use DataLoader(batch_size=None), or `Stream.loader`).
    drop_last: every rank floor(N / W) samples instead of ceil(N / W), the rest left out (it says so).
    transform: a function applied to each decoded image, in the worker, before batching.
    """
    return Stream(shards, seed=seed, shuffle_shards=shuffle_shards, shuffle_buffer=shuffle_buffer, rank=rank,
                  world_size=world_size, decode=decode, output=output, epoch=epoch, start_step=start_step,
                  batch_size=batch_size, drop_last=drop_last, transform=transform)
