"""Bounding boxes: from annotation XML (or Kaggle's CSV) to the shard that holds the image.

Contract:
  annotation sources (archives or folders of Pascal VOC XML)
    -> BoxesRef(key, split, boxes, ...)   small records, joined with the images in the shuffle
                                          that already groups samples into shards (no side input
                                          holding 544k annotations in every worker)
    -> Reject, stage "annotation" (a rejects table of its own; the image is kept without boxes)
An XML's split comes from its key: ILSVRC20xx_val_* -> val, ILSVRC20xx_test_* -> test, else
train (how every ImageNet release names its files).

The convention every reader must agree on is parse_voc_xml's (transforms/annotations.py):
x / W and y / H with W, H from <size> as given, min/max swapped when reversed, clipped to
[0, 1], zero-area boxes dropped. Resizing keeps the aspect ratio, so normalised boxes hold
in the stored image's frame unchanged. box_fields gives the index columns a sample takes from
its boxes, once the shard writer has them both.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from typing import Iterator, Optional, Union

import apache_beam as beam

from transforms.annotations import iter_annotation_archive, parse_voc_xml
from transforms.counting import reject_output
from transforms.keys import annotation_key, is_wnid, split_of_key
from transforms.records import AnnotationRejected, AnnotationSource, BoxesRef, MemberRef, Reject
from transforms.storage import open_input

__all__ = ["read_annotation_source", "merge_boxes", "orient_boxes", "normalise_pixel_boxes", "box_fields",
           "ReadAnnotations"]


def read_annotation_source(src: AnnotationSource) -> Iterator[Union[BoxesRef, Reject]]:
    """Every XML of an archive or folder (or row of a Kaggle CSV), parsed; broken ones become rejects."""
    if src.kind == "kaggle_csv":
        yield from _read_kaggle_csv(src)
        return
    for path, data in iter_annotation_archive(src.url):
        key = annotation_key(path)
        split = split_of_key(key)
        source = f"{src.name}/{path}"
        try:
            ann = parse_voc_xml(data, key)
        except AnnotationRejected as e:
            yield e.reject(key, split, source)
            continue
        yield BoxesRef(key, split, tuple((b.xmin, b.ymin, b.xmax, b.ymax) for b in ann.boxes),
                       tuple(b.name for b in ann.boxes), ann.dropped_boxes, source)


def _read_kaggle_csv(src: AnnotationSource) -> Iterator[Union[BoxesRef, Reject]]:
    """LOC_{train,val}_solution.csv: `ImageId,PredictionString` of repeated `wnid xmin ymin xmax ymax`."""
    with open_input(src.url) as f:
        for line, row in enumerate(csv.reader(io.TextIOWrapper(f, encoding="utf-8")), start=1):
            if line == 1 or not row:
                continue  # the header
            key, words = row[0], (row[1].split() if len(row) > 1 else [])
            split, source = split_of_key(key), f"{src.name}:{line}"
            if len(words) % 5:
                yield Reject(key, split, source, "bad_coordinates", "PredictionString is not groups of 5", "annotation")
                continue
            try:
                boxes = tuple(tuple(float(v) for v in words[i + 1:i + 5]) for i in range(0, len(words), 5))
            except ValueError as e:
                yield Reject(key, split, source, "bad_coordinates", str(e)[:200], "annotation")
                continue
            yield BoxesRef(key, split, boxes, tuple(words[0::5]), 0, source, from_xml=False, in_pixels=True)


def normalise_pixel_boxes(ref: BoxesRef, width: int, height: int) -> BoxesRef:
    """Pixel boxes -> the documented convention, by the decoded image's size: min/max swapped,
    x / W and y / H, clipped to [0, 1], zero-area boxes dropped (and counted)."""
    kept, names = [], []
    for (x0, y0, x1, y1), name in zip(ref.boxes, ref.names):
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        b = tuple(min(1.0, max(0.0, v)) for v in (x0 / width, y0 / height, x1 / width, y1 / height))
        if b[0] < b[2] and b[1] < b[3]:
            kept.append(b)
            names.append(name)
    return dataclasses.replace(ref, boxes=tuple(kept), names=tuple(names),
                               dropped=ref.dropped + len(ref.boxes) - len(kept), in_pixels=False)


# EXIF orientation -> where a normalised point (x, y) lands once the image is shown upright.
_ORIENT_POINT = {
    2: lambda x, y: (1 - x, y),
    3: lambda x, y: (1 - x, 1 - y),
    4: lambda x, y: (x, 1 - y),
    5: lambda x, y: (y, x),
    6: lambda x, y: (1 - y, x),
    7: lambda x, y: (1 - y, 1 - x),
    8: lambda x, y: (y, 1 - x),
}


def orient_boxes(boxes, orientation: Optional[int]) -> tuple:
    """Normalised boxes of the stored pixels -> the same boxes after --exif-transpose."""
    move = _ORIENT_POINT.get(orientation) if orientation is not None else None
    if move is None:
        return tuple(tuple(b) for b in boxes)
    out = []
    for x0, y0, x1, y1 in boxes:
        (ax, ay), (bx, by) = move(x0, y0), move(x1, y1)
        out.append((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))
    return tuple(out)


def merge_boxes(refs: list) -> Optional[BoxesRef]:
    """One image's boxes from several sources: the first XML wins (by source), else the first CSV."""
    if not refs:
        return None
    return sorted(refs, key=lambda r: (not r.from_xml, r.source))[0]


def box_fields(ref: MemberRef, boxes: Optional[BoxesRef], blacklist: frozenset,
               orientation: Optional[int] = None) -> dict:
    """The index fields a sample takes from its annotation (and from the devkit's blacklist).

    orientation: the EXIF orientation applied to the stored pixels (--exif-transpose), if any.
    """
    if boxes is None:
        return {"boxes": (), "has_boxes": False, "box_names": (), "loc_blacklisted": ref.key in blacklist,
                "label_disagrees": False}
    wnids = {n for n in boxes.names if is_wnid(n)}
    return {
        "boxes": tuple(list(b) for b in orient_boxes(boxes.boxes, orientation)),
        "has_boxes": bool(boxes.boxes),
        "box_names": boxes.names,
        "loc_blacklisted": ref.key in blacklist,
        "label_disagrees": bool(wnids) and ref.fine[1] is not None and ref.fine[1] not in wnids,
    }


# --- Beam wiring -------------------------------------------------------------------

class _ReadSourceFn(beam.DoFn):
    def process(self, src: AnnotationSource):
        for item in read_annotation_source(src):
            if isinstance(item, Reject):
                yield reject_output(item)
            else:
                beam.metrics.Metrics.counter("annotations", "read").inc()
                yield item


class ReadAnnotations(beam.PTransform):
    """PBegin -> {"boxes": BoxesRef, "rejects": Reject (stage "annotation")}. gz archives are
    streamed once."""

    def __init__(self, sources):
        super().__init__()
        self._sources = list(sources)

    def expand(self, pbegin):
        out = (
            pbegin
            | "ListSources" >> beam.Create(self._sources)
            | "SpreadSources" >> beam.Reshuffle()
            | "ParseXml" >> beam.ParDo(_ReadSourceFn()).with_outputs("rejects", main="boxes")
        )
        return {"boxes": out.boxes, "rejects": out.rejects}
