"""One TestPipeline test per composite transform, asserting each of its outputs exactly."""
import dataclasses
import hashlib
import io
import json
import tarfile

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from transforms.archives import IndexArchives
from transforms.boxes import ReadAnnotations
from transforms.image import ImageOptions, ResizeSpec, codec_versions
from transforms.index import FlagDuplicates, WriteRejects, write_index_file
from transforms.keys import shard_of
from transforms.labels import Labeler, imagenet_classes
from transforms.layout import OutputLayout
from transforms.manifest import WriteManifest
from transforms.records import (
    AnnotationSource,
    BoxesRef,
    IndexFile,
    MemberRef,
    Reject,
    RejectsFile,
    ShardDuplicates,
    ShardInfo,
    ShardMembers,
    ShardTask,
    SplitCount,
    from_shuffle,
    to_shuffle,
)
from transforms.schema import INDEX_SCHEMA, IndexRow
from transforms.sharding import GroupIntoShards
from transforms.sources import ArchiveSpec
from transforms.storage import changed_since, fingerprint
from transforms.write_shards import WriteShards

pytestmark = pytest.mark.beam  # every test runs a Beam pipeline


def jpeg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def tar_of(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.SYMTYPE
                info.linkname = "elsewhere"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_index_archives(tmp_path):
    train = tmp_path / "ILSVRC2012_img_train.tar"
    train.write_bytes(tar_of([
        ("n01440764.tar", tar_of([("n01440764_1.JPEG", b"a" * 10), ("n01440764_2.JPEG", None)])),
        ("n01443537.tar", tar_of([("n01443537_7.JPEG", b"b" * 20)])),
    ]))
    val = tmp_path / "ILSVRC2012_img_val.tar"
    val.write_bytes(tar_of([("ILSVRC2012_val_00000002.JPEG", b"c"), ("ILSVRC2012_val_00000001.JPEG", b"dd")]))
    archives = [
        ArchiveSpec("train", str(train), train.name, train.stat().st_size, "nested_tar", labelled=True),
        ArchiveSpec("val", str(val), val.name, val.stat().st_size, "tar", labelled=True),
    ]
    classes = {c.wnid: c.label for c in imagenet_classes()}
    labeler = Labeler(classes, {"val": {"ILSVRC2012_val_00000001": "n01751748"}}, frozenset({"train", "val"}))
    with TestPipeline() as p:
        out = p | IndexArchives(archives, labeler)
        batches = out["members"] | "BatchShape" >> beam.Map(lambda batch: sorted(r.key for r in from_shuffle(batch)))
        assert_that(batches, equal_to([["n01440764_1"], ["n01443537_7"], ["ILSVRC2012_val_00000001"]]),
                    label="one batch per unit")
        members = out["members"] | beam.FlatMap(from_shuffle) | beam.Map(lambda r: (r.key, r.split, r.label, r.size))
        rejects = out["rejects"] | beam.Map(lambda r: (r.key, r.reason))
        assert_that(members, equal_to([("n01440764_1", "train", 0, 10), ("n01443537_7", "train", 1, 20),
                                       ("ILSVRC2012_val_00000001", "val", 65, 2)]), label="members")
        assert_that(rejects, equal_to([("n01440764_2", "not_a_file"), ("ILSVRC2012_val_00000002", "unlabeled")]),
                    label="rejects")


def _refs(n, split="train"):
    return [MemberRef(f"k{i}", split, "a.tar", i * 512, 10, 0, "n01440764", f"a.tar/k{i}") for i in range(n)]


def test_group_into_shards_includes_empty_shards():
    refs = _refs(3) + _refs(2, split="val")
    with TestPipeline() as p:
        grouping = GroupIntoShards(seed=0, shard_size=3000, resize_mode="none", resize_size=None, quality=90)
        # batches, one mixing splits
        members = p | "Members" >> beam.Create([to_shuffle(tuple(refs[:2])), to_shuffle(tuple(refs[2:]))])
        boxes = p | "Boxes" >> beam.Create([BoxesRef("k1", "train", ((0.1, 0.1, 0.5, 0.5),), ("n01440764",), 0, "x"),
                                            BoxesRef("ILSVRC2012_test_1", "test", (), (), 0, "y")])
        grouped = {"members": members, "boxes": boxes} | grouping
        shape = grouped["tasks"] | beam.Map(lambda shard: (shard.task.split, shard.task.shard_id,
                                                           sorted(r.key for r in shard.members),
                                                           [b.key for b in shard.boxes]))
        # each ~10-byte source estimates to ~2.8 KB: one shard per sample
        # k1's boxes meet k1 in its shard; the test split has no samples, so its annotation is an orphan
        expected = [("train", shard, sorted(r.key for r in refs[:3] if shard_of(r.key, 0, 3) == shard),
                     ["k1"] if shard_of("k1", 0, 3) == shard else []) for shard in range(3)]
        expected += [("val", shard, sorted(r.key for r in refs[3:] if shard_of(r.key, 0, 2) == shard), [])
                     for shard in range(2)]
        assert_that(shape, equal_to(expected), label="tasks")
        assert_that(grouped["plan"], equal_to([("train", (3, 3)), ("val", (2, 2))]), label="plan")
        assert_that(grouped["orphans"], equal_to([("test", 1)]), label="orphans")


def test_write_shards(tmp_path):
    archive = tmp_path / "a.tar"
    good, bad = jpeg("red"), b"<html>404</html>"
    archive.write_bytes(tar_of([("n01440764_1.JPEG", good), ("n01440764_2.JPEG", bad)]))
    data = archive.read_bytes()
    refs = [MemberRef("n01440764_1", "train", str(archive), data.index(good), len(good), 0, "n01440764", "a/1"),
            MemberRef("n01440764_2", "train", str(archive), data.index(bad), len(bad), 0, "n01440764", "a/2")]
    out = tmp_path / "out"
    options = ImageOptions(resize=ResizeSpec.parse("longer:512"))
    with TestPipeline() as p:
        boxes = [BoxesRef("n01440764_1", "train", ((0.25, 0.0, 0.75, 1.0),), ("n01440764",), 0, "b/1"),
                 BoxesRef("n01440764_9", "train", (), (), 0, "b/9")]  # no such image: an orphan
        tasks = p | beam.Create([ShardMembers(ShardTask("train", 0), refs, boxes)])
        written = {"tasks": tasks} | WriteShards(options, str(out), 0, codec_versions())
        assert_that(written["shards"] | beam.Map(lambda s: (s.path, s.samples)),
                    equal_to([("train/train-000000.tar", 1)]), label="shards")
        index_file = out / "train" / "train-000000.parquet"  # its size and sha256 are in its IndexFile
        assert_that(written["index"] | beam.Map(lambda i: (
            dataclasses.replace(i, bytes=0, sha256=""), i.bytes == index_file.stat().st_size,
            i.sha256 == hashlib.sha256(index_file.read_bytes()).hexdigest())),
                    equal_to([(IndexFile("train", 0, "train/train-000000.parquet", 1, 0, with_boxes=1, boxes=1),
                               True, True)]), label="index")
        assert_that(written["orphans"], equal_to([("train", 1)]), label="orphans")
        assert_that(written["rejects"] | beam.Map(lambda r: (r.key, r.reason)),
                    equal_to([("n01440764_2", "not_an_image")]), label="rejects")
    shard = (out / "train" / "train-000000.tar").read_bytes()
    with tarfile.open(out / "train" / "train-000000.tar") as tar:
        assert tar.getnames() == ["n01440764_1.jpg", "n01440764_1.cls", "n01440764_1.json"]
    assert good in shard
    rows = pq.read_table(out / "train" / "train-000000.parquet").to_pylist()  # the index, written beside the tar
    assert [(r["key"], r["reencoded"], r["size"], r["boxes"], r["has_boxes"], r["duplicate_of"], r["sha256"])
            for r in rows] == [("n01440764_1", False, len(good), [[0.25, 0.0, 0.75, 1.0]], True, None,
                                hashlib.sha256(good).hexdigest())]  # the duplicate search reads the sha256
    assert shard[rows[0]["offset"]:rows[0]["offset"] + rows[0]["size"]] == good


def _row(key, shard_id, sha):
    return IndexRow(key, "train", f"train/train-{shard_id:06d}.tar", 512, 5, 0, "n01440764", 2, 2, 2, 2, "JPEG",
                    "RGB", False, sha, None, None, (), f"x/{key}", phash=0)


@pytest.mark.parametrize("parts", [1, 3])
def test_flag_duplicates_rewrites_only_the_shards_holding_one(tmp_path, parts):
    layout = OutputLayout(str(tmp_path))
    s1, s2, s3 = (hashlib.sha256(bytes([i])).hexdigest() for i in range(3))
    shards = {0: [_row("b", 0, s1), _row("c", 0, s2)], 1: [_row("a", 1, s1)], 2: [_row("d", 2, s3)]}
    index_files = [write_index_file(layout, "train", shard_id, rows, {}) for shard_id, rows in shards.items()]
    untouched = {i: (tmp_path / "train" / f"train-{i:06d}.parquet").read_bytes() for i in (1, 2)}
    with TestPipeline() as p:
        # The search reads the digests from the index files that the IndexFile records name.
        flagged = p | beam.Create(index_files) | FlagDuplicates(str(tmp_path), parts)
        # b has a's bytes; a sorts first and stays unflagged. The size and sha256 are the rewritten file's.
        rewritten = tmp_path / "train" / "train-000000.parquet"
        assert_that(flagged | beam.Map(lambda d: (*d[:3], d.bytes == rewritten.stat().st_size,
                                                  d.sha256 == hashlib.sha256(rewritten.read_bytes()).hexdigest())),
                    equal_to([("train", 0, 1, True, True)]))
    table = pq.read_table(tmp_path / "train" / "train-000000.parquet")
    assert table.schema == INDEX_SCHEMA
    assert {r["key"]: r["duplicate_of"] for r in table.to_pylist()} == {"b": "a", "c": None}
    assert {i: (tmp_path / "train" / f"train-{i:06d}.parquet").read_bytes() for i in (1, 2)} == untouched


def test_write_rejects(tmp_path):
    rejects = [Reject("x", "val", "v/x", "empty", "", "image"), Reject("y", "val", "v/y", "empty", "", "image"),
               Reject("z", "train", "t/z", "corrupt", "bad", "image")]
    with TestPipeline() as p:
        files = p | beam.Create(rejects) | WriteRejects(str(tmp_path))
        assert_that(files, equal_to([
            RejectsFile("val", "rejects/val/val-rejects.parquet", 2, {"empty": 2}),
            RejectsFile("train", "rejects/train/train-rejects.parquet", 1, {"corrupt": 1}),
        ]))
    layout = OutputLayout(str(tmp_path))
    assert pq.read_table(layout.url(layout.rejects("val"))).num_rows == 2


VOC = b"""<annotation><filename>%s</filename><size><width>200</width><height>100</height><depth>3</depth></size>
<object><name>n01440764</name><bndbox><xmin>20</xmin><ymin>10</ymin><xmax>120</xmax><ymax>90</ymax></bndbox></object>
</annotation>"""
HOSTILE = b"""<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>&x;</annotation>"""


def test_read_annotations(tmp_path):
    folder = tmp_path / "xml" / "n01440764"
    folder.mkdir(parents=True)
    (folder / "n01440764_7.xml").write_bytes(VOC % b"%s")
    (folder / "n01440764_8.xml").write_bytes(HOSTILE)
    (folder / "ILSVRC2012_val_00000003.xml").write_bytes(b"<annotation><size>")
    csv_file = tmp_path / "LOC_val_solution.csv"
    csv_file.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 10 20 30 40 \n"
                        "ILSVRC2012_val_00000002,n01751748 10 20\n")
    sources = [AnnotationSource(str(tmp_path / "xml"), "boxes"), AnnotationSource(str(csv_file), "LOC_val_solution.csv",
                                                                                   "kaggle_csv")]
    with TestPipeline() as p:
        out = p | ReadAnnotations(sources)
        assert_that(out["boxes"], equal_to([
            BoxesRef("n01440764_7", "train", ((0.1, 0.1, 0.6, 0.9),), ("n01440764",), 0,
                     "boxes/n01440764/n01440764_7.xml"),
            BoxesRef("ILSVRC2012_val_00000001", "val", ((10.0, 20.0, 30.0, 40.0),), ("n01751748",), 0,
                     "LOC_val_solution.csv:2", from_xml=False, in_pixels=True),
        ]), label="boxes")
        assert_that(out["rejects"] | beam.Map(lambda r: (r.key, r.split, r.source, r.reason, r.stage)), equal_to([
            ("n01440764_8", "train", "boxes/n01440764/n01440764_8.xml", "forbidden_xml", "annotation"),
            ("ILSVRC2012_val_00000003", "val", "boxes/n01440764/ILSVRC2012_val_00000003.xml", "malformed_xml",
             "annotation"),
            ("ILSVRC2012_val_00000002", "val", "LOC_val_solution.csv:3", "bad_coordinates", "annotation"),
        ]), label="rejects")


def _manifest_facts(p, read_train: int) -> dict:
    def create(label, values):
        return p | label >> beam.Create(values)

    return {
        "read": create("Read", [SplitCount("train", read_train), SplitCount("val", 1)]),
        "left_out": create("LeftOut", [SplitCount("train", 4)]),
        "shard": create("Shards", [ShardInfo("train", 1, "train/train-000001.tar", 1, 2048, "b" * 64),
                                   ShardInfo("train", 0, "train/train-000000.tar", 2, 4096, "a" * 64),
                                   ShardInfo("val", 0, "val/val-000000.tar", 1, 2048, "c" * 64)]),
        "index": create("Index", [IndexFile("train", 0, "train/train-000000.parquet", 2, 0, 1, 3, 0, 900, "d" * 64),
                                  IndexFile("train", 1, "train/train-000001.parquet", 1, 0, bytes=800, sha256="e" * 64),
                                  IndexFile("val", 0, "val/val-000000.parquet", 1, 0, bytes=700, sha256="f" * 64)]),
        # FlagDuplicates rewrote train-000001.parquet: its size and sha256 are the final ones
        "duplicates": create("Duplicates", [ShardDuplicates("train", 1, 1, 810, "9" * 64)]),
        "rejects": create("Rejects", [RejectsFile("train", "rejects/train-rejects.parquet", read_train - 3,
                                                  {"corrupt": read_train - 3})]),
        "annotation_rejects": create("AnnotationRejects", [
            RejectsFile("val", "rejects/val-annotation-rejects.parquet", 1, {"forbidden_xml": 1}, "annotations")]),
        "orphans": create("Orphans", [SplitCount("val", 2), SplitCount("val", 1)]),
    }


def test_write_manifest(tmp_path):
    with TestPipeline() as p:
        status = _manifest_facts(p, read_train=4) | WriteManifest(str(tmp_path), {"tool": {"name": "t"}}, 0.5)
        assert_that(status, equal_to(["ok"]))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert (train["read"], train["samples"], train["rejected"], train["left_out"]) == (4, 3, 1, 4)
    assert [s["path"] for s in train["shards"]] == ["train/train-000000.tar", "train/train-000001.tar"]
    assert (train["duplicates"], train["boxes"], train["with_boxes"], train["bytes"]) == (1, 3, 1, 6144)
    assert manifest["rejects"] == ["rejects/train-rejects.parquet"] and manifest["rejects_by_reason"] == {"corrupt": 1}
    assert manifest["annotation_rejects_by_reason"] == {"forbidden_xml": 1} and manifest["orphan_annotations"] == 3
    assert manifest["tool"] == {"name": "t"} and not (tmp_path / "build-failed.json").exists()
    assert train["index"] == ["train/train-000000.parquet", "train/train-000001.parquet"]
    assert train["index_files"] == [
        {"path": "train/train-000000.parquet", "rows": 2, "bytes": 900, "sha256": "d" * 64},
        {"path": "train/train-000001.parquet", "rows": 1, "bytes": 810, "sha256": "9" * 64}]
    # the files other readers expect, written before the manifest and listed in it
    assert manifest["reader_files"] == {"timm": "_info.json", "huggingface": "README.md",
                                        "wids": {"train": "train.wids.json", "val": "val.wids.json"}}
    info = json.loads((tmp_path / "_info.json").read_text())
    assert info["splits"]["train"] == {"name": "train", "num_samples": 3, "shard_lengths": [2, 1],
                                       "filenames": ["train/train-000000.tar", "train/train-000001.tar"]}
    assert info["splits"]["validation"]["filenames"] == ["val/val-000000.tar"]
    wids = json.loads((tmp_path / "val.wids.json").read_text())
    assert wids["shardlist"] == [{"url": "val/val-000000.tar", "nsamples": 1, "filesize": 2048}]


def test_write_manifest_fails_a_build_with_too_many_rejects(tmp_path):
    with TestPipeline() as p:
        status = _manifest_facts(p, read_train=9) | WriteManifest(str(tmp_path), {"tool": {}}, 0.5)
        assert_that(status, equal_to(["too_many_rejects"]))
    report = json.loads((tmp_path / "build-failed.json").read_text())
    assert "6 of 10 samples rejected" in report["error"] and not (tmp_path / "manifest.json").exists()


def test_write_manifest_refuses_an_input_that_changed_during_the_build(tmp_path):
    archive = tmp_path / "ILSVRC2012_img_val.tar"
    archive.write_bytes(b"x" * 1024)
    inputs = {str(archive): fingerprint(str(archive))}
    assert changed_since(inputs) == []
    with archive.open("ab") as f:  # rewritten (here: grown) while the build reads it
        f.write(b"y" * 512)
    assert len(changed_since(inputs)) == 1 and "size=1024" in changed_since(inputs)[0]
    with pytest.raises(Exception, match="an input changed while the build read it"):
        with TestPipeline() as p:
            _ = _manifest_facts(p, read_train=4) | WriteManifest(str(tmp_path / "out"), {"tool": {}}, 0.5, inputs)
    assert not (tmp_path / "out" / "manifest.json").exists()
