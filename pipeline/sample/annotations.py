"""The bounding-box archives of a sample release, and the boxes a converter must join from them.

The train archive holds Pascal VOC XML for about half the kept train photos, the val archive for every
kept validation image. With plant_faults, the oddities of the real archives are planted once each.
"""
from __future__ import annotations

import os
import random
from dataclasses import replace
from typing import Optional

from pipeline.sample.archives import Member, gzip_bytes, tar_bytes
from pipeline.sample.bundle import blacklisted_val_indices
from pipeline.sample.expected import SampleRelease
from transforms.storage import atomic_write

__all__ = ["BBOX_TRAIN", "BBOX_VAL", "voc_xml", "expected_box", "plant_annotations"]

BBOX_TRAIN = "ILSVRC2012_bbox_train_v2.tar.gz"
BBOX_VAL = "ILSVRC2012_bbox_val_v3.tgz"

# The hostile or broken XML files a converter must set aside, and the reason it must give.
_HOSTILE_XML = {
    "billion_laughs": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                       b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
                       b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
                       b"<annotation><name>&lol3;</name></annotation>", "forbidden_xml"),
    "external_entity": (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                        b"<annotation><filename>&xxe;</filename></annotation>", "forbidden_xml"),
    "malformed": (b"<annotation><size><width>500</width><height>375</height></size><object>", "malformed_xml"),
}


def voc_xml(folder: str, filename: str, size: tuple, objects: list) -> bytes:
    """A Pascal VOC annotation as ImageNet writes it (with tabs and without an XML declaration)."""
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{filename}</filename>\n"
             "\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n"
             "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                     "\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n"
                     f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts).encode()


def expected_box(box: tuple, size: tuple) -> Optional[tuple]:
    """A box by the documented convention: x / W and y / H by <size>, min and max swapped where they
    are reversed, clipped to [0, 1]; None when the box has no area left."""
    (x0, y0, x1, y1), (w, h) = [float(v) for v in box], size
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    b = (clip(x0 / w), clip(y0 / h), clip(x1 / w), clip(y1 / h))
    return b if b[0] < b[2] and b[1] < b[3] else None


def _write_gz_tar(path: str, files: list[tuple[str, bytes]]) -> None:
    raw = tar_bytes([Member(name, "", "", data) for name, data in files])
    payload = gzip_bytes(raw, os.path.basename(path).rsplit(".", 1)[0])
    with atomic_write(path) as f:
        f.write(payload)


def plant_annotations(release: SampleRelease, seed: int, plant_faults: bool) -> SampleRelease:
    """Write the two bbox archives for about half the train photos and every val image (with the
    oddities of the real ones planted when plant_faults), and return the release expecting their boxes."""
    rng = random.Random(f"boxes-{seed}")
    blacklist = blacklisted_val_indices()
    oddities = {  # Each is planted once, on the first annotated images of its split.
        "train": ["float_coords", "swapped", "outside", "zero_area", "percent_s_filename", "breed_name",
                  "size_differs", "billion_laughs", "external_entity"],
        "val": ["val_disagrees", "malformed"],
    } if plant_faults else {"train": [], "val": []}
    expected = {split: dict(es) for split, es in release.expected.items()}
    files: dict[str, list[tuple[str, bytes]]] = {"train": [], "val": []}
    annotation_rejects = {}
    for split in ("train", "val"):
        for key, e in sorted(expected[split].items()):
            if split == "val" and e.wnid:
                index = int(key.rsplit("_", 1)[1])
                expected[split][key] = e = replace(e, loc_blacklisted=index in blacklist)
            if e.outcome != "kept" or e.case == "duplicate" or (split == "train" and rng.random() < 0.5):
                continue
            # A kept sample of train or val has a class and a size.
            assert e.wnid is not None and e.orig_width is not None and e.orig_height is not None
            w, h = e.orig_width, e.orig_height
            case = oddities[split].pop(0) if oddities[split] else "plain"
            size, name, filename = (w, h), e.wnid, key
            box = (rng.randint(0, w // 3), rng.randint(0, h // 3),
                   rng.randint(w // 2, w - 1), rng.randint(h // 2, h - 1))
            objects: list[tuple[str, tuple]] = [(name, box)]
            if case == "float_coords":
                objects = [(name, tuple(f"{v}.0" for v in box))]
            elif case == "swapped":
                objects = [(name, (box[2], box[3], box[0], box[1]))]
            elif case == "outside":
                objects = [(name, (-20, box[1], w + 40, box[3]))]
            elif case == "zero_area":
                objects = [(name, box), (name, (box[0], box[1], box[0], box[3]))]
            elif case == "percent_s_filename":
                filename = "%s"
            elif case == "breed_name":
                objects = [("Scottish_deerhound", box)]
            elif case == "size_differs":
                size = (w * 2, h * 2)  # The annotator saw a larger image: the boxes are normalised by <size>.
                objects = [(name, (box[0] * 2, box[1] * 2, box[2] * 2, box[3] * 2))]
            elif case == "val_disagrees":
                objects = [("n01440764" if e.wnid != "n01440764" else "n01443537", box)]
            member = f"{e.wnid}/{key}.xml" if split == "train" else f"val/{key}.xml"
            if case in _HOSTILE_XML:
                data, reason = _HOSTILE_XML[case]
                annotation_rejects[(split, key)] = reason
            else:
                data = voc_xml(e.wnid, filename, size, objects)
                kept = [(n, b) for n, b in ((n, expected_box(b, size)) for n, b in objects) if b]
                expected[split][key] = replace(
                    e, boxes=tuple(b for _, b in kept), box_names=tuple(n for n, _ in kept),
                    label_disagrees=case == "val_disagrees")
            files[split].append((member, data))
    orphans = 0
    if plant_faults:  # an annotation whose image is not in the release
        files["train"].append((f"{release.classes[0]}/{release.classes[0]}_999999999.xml",
                               voc_xml(release.classes[0], "x", (10, 10), [(release.classes[0], (1, 1, 5, 5))])))
        orphans = 1
    _write_gz_tar(os.path.join(release.root, BBOX_TRAIN), files["train"])
    _write_gz_tar(os.path.join(release.root, BBOX_VAL), files["val"])
    archives = {**release.archives, "bbox_train": os.path.join(release.root, BBOX_TRAIN),
                "bbox_val": os.path.join(release.root, BBOX_VAL)}
    return replace(release, archives=archives, expected=expected, annotation_rejects=annotation_rejects,
                   orphan_annotations=orphans)
