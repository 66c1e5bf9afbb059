"""The kernel loop: a shard's members in, index rows and the JPEGs to store out. No Beam.

Contract:
    process_members(members, options, reader, shard, boxes, blacklist, rejects, on_progress)
      -> ProcessedSample(row, jpeg, ref) for each member the image kernel keeps, in the order given
         (row.offset is still 0: the shard writer sets it); every other member becomes a Reject
         (stage "image"), appended to `rejects`.

Each member is one ranged read of its archive and one call of the image kernel
(transforms/image.py). ArchiveReader.read_ranges makes the reads: local archives are read as each
member comes, remote ones ahead of the kernel, in shard order (many requests in flight, members
next to each other in an archive in one request, at most 32 MiB held: transforms/readahead.py).
The row takes the member's label, the image's facts, the source's sha256, and the boxes of its
annotation (transforms/boxes.py). In a rebuild, a member whose source bytes the previous version
stored already is not given to the kernel: its image is the previous version's
(transforms/previous.py), which is what the kernel would make again.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

from transforms.boxes import box_fields, normalise_pixel_boxes
from transforms.image import ImageOptions, ProcessedImage, process_image
from transforms.phash import to_int64
from transforms.previous import PreviousImages
from transforms.records import BoxesRef, ImageRejected, MemberRef, Reject
from transforms.schema import IndexRow
from transforms.storage import ArchiveReader

__all__ = ["ProcessedSample", "process_members"]

log = logging.getLogger(__name__)

# How often a long loop reports its progress, in seconds.
_PROGRESS_EVERY = 1.0


class ProcessedSample(NamedTuple):
    row: IndexRow  # offset 0 until the shard writer places it
    jpeg: bytes  # the bytes to store
    ref: MemberRef  # where the source bytes came from


def _normalised(boxes: Optional[BoxesRef], image: ProcessedImage) -> Optional[BoxesRef]:
    """CSV boxes come in pixels of the decoded image (orientation not applied): normalise them."""
    if boxes is not None and boxes.in_pixels:
        return normalise_pixel_boxes(boxes, image.orig_width, image.orig_height)
    return boxes


def process_members(members: Sequence[MemberRef], options: ImageOptions, reader: ArchiveReader, shard: str,
                    boxes: dict, blacklist: frozenset, rejects: list,
                    on_progress: Optional[Callable[[int, int], None]] = None,
                    previous: Optional[PreviousImages] = None) -> Iterator[ProcessedSample]:
    """See the module docstring. shard: the shard's path relative to the manifest (the rows'
    `shard`); boxes: {key: BoxesRef}; blacklist: keys the devkit excludes from localisation;
    on_progress(done, total): called about once a second, and at the end; previous: the previous
    version's images, in a rebuild whose options decide images as the previous build's did."""
    last_report = time.monotonic()
    stored = previous.find(members) if previous is not None else {}
    sources = reader.read_ranges([(ref.archive, ref.offset, ref.size) for ref in members])
    for done, (ref, data) in enumerate(zip(members, sources), start=1):
        digest = hashlib.sha256(data).hexdigest()
        earlier = stored.get((ref.key, ref.split))
        if earlier is not None and earlier.sha256 == digest:
            assert previous is not None
            image = previous.image(earlier, data, reader)
        else:
            try:
                image = process_image(data, options)
            except ImageRejected as e:
                rejects.append(e.reject(ref.key, ref.split, ref.source))
                continue
            except Exception as e:  # a decoder bug on hostile bytes must not take the whole build down
                log.warning("unexpected %s on %s: %s", type(e).__name__, ref.source, e)
                rejects.append(Reject(ref.key, ref.split, ref.source, "corrupt", f"{type(e).__name__}: {e}", "image"))
                continue
        yield ProcessedSample(IndexRow(
            key=ref.key, split=ref.split, shard=shard, offset=0, size=len(image.jpeg),
            label=ref.label, wnid=ref.wnid, width=image.width, height=image.height,
            orig_width=image.orig_width, orig_height=image.orig_height,
            orig_format=image.orig_format, orig_mode=image.orig_mode, reencoded=image.reencoded,
            sha256=digest, duplicate_of=None, phash=to_int64(image.phash),
            exif_orientation=image.exif_orientation, source=ref.source, fine_label=ref.fine[0], fine_wnid=ref.fine[1],
            **box_fields(ref, _normalised(boxes.get(ref.key), image), blacklist,
                         image.exif_orientation if options.exif_transpose else None),
        ), image.jpeg, ref)
        if on_progress and time.monotonic() - last_report > _PROGRESS_EVERY:
            on_progress(done, len(members))
            last_report = time.monotonic()
    if on_progress:
        on_progress(len(members), len(members))
