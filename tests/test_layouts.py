"""The Kaggle and ImageFolder layouts: detected, built, and read back like the official one."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Build, run_cli, version_of

from pipeline.sample import export_layout
from transforms.records import SourceError
from transforms.release_files import bundled_val_blacklist
from transforms.sources import detect_layout, discover

pytestmark = pytest.mark.inputs  # see pytest.ini


@pytest.fixture(scope="module", params=["kaggle", "imagefolder"])
def layout_build(request, release, tmp_path_factory):
    copy = export_layout(release, tmp_path_factory.mktemp(request.param), request.param)
    out = tmp_path_factory.mktemp(f"{request.param}-out") / "out"
    boxes = [a for role in ("bbox_train", "bbox_val") for a in ("--boxes", copy.archives[role])
             ] if request.param == "imagefolder" else []
    proc = run_cli("build", copy.root, "--out", out, "--max-reject-rate", "0.5", "--no-progress",
                   "--shard-size", "200KB", *boxes, check_code=0)
    return request.param, copy, Build(out, proc)


@pytest.mark.e2e
def test_layout_is_detected_and_reported(layout_build):
    layout, copy, b = layout_build
    assert detect_layout(copy.root) == layout
    assert b.manifest["layout"] == layout
    assert f"layout: {layout}" in b.proc.stderr


@pytest.mark.e2e
def test_every_sample_lands_with_its_label_and_source(layout_build):
    layout, copy, b = layout_build
    for split, expected in copy.expected.items():
        s = b.manifest["splits"][split]
        assert s["read"] == len(expected) == s["samples"] + s["rejected"], split
        rows = pq.read_table([str(b.path(p)) for p in s["index"]]).to_pylist()
        kept = {k: e for k, e in expected.items() if e.outcome == "kept"}
        assert {r["key"]: (r["label"], r["wnid"], r["source"]) for r in rows} == {
            k: (e.label, e.wnid, e.source) for k, e in kept.items()}, split
        # boxes from Kaggle's annotation folders, or from --boxes archives for an ImageFolder
        assert {r["key"]: (len(r["boxes"]), tuple(r["box_names"])) for r in rows} == {
            k: (len(e.boxes), e.box_names) for k, e in kept.items()}, split
        for r in rows:  # Kaggle: the XML's boxes where it has one, else the CSV's, by the decoded size
            for got, want in zip(r["boxes"], kept[r["key"]].boxes):
                assert got == pytest.approx(want, abs=1e-6), r["key"]
    rejects = pq.read_table([str(b.path(p)) for p in b.manifest["rejects"]]).to_pylist()
    assert {(r["split"], r["key"]): r["reason"] for r in rejects} == {
        (split, k): e.outcome for split, es in copy.expected.items() for k, e in es.items() if e.outcome != "kept"}


@pytest.mark.e2e
def test_kaggle_val_takes_the_localisation_blacklist_the_project_bundles(layout_build):
    """Kaggle has no devkit, but its val images are ILSVRC2012's under their own names: the bundled
    blacklist marks them as the devkit would. An ImageFolder's images are not known to be those."""
    layout, copy, b = layout_build
    rows = pq.read_table([str(b.path(p)) for p in b.manifest["splits"]["val"]["index"]]).to_pylist()
    got = {r["key"]: r["loc_blacklisted"] for r in rows}
    blacklist = discover(copy.root).loc_blacklist
    if layout == "kaggle":
        assert blacklist == bundled_val_blacklist() and len(blacklist) == 1762
        assert "ILSVRC2012_val_00000036" in blacklist and "ILSVRC2012_val_00000001" not in blacklist
        assert got == {k: k in blacklist for k in got} == {
            k: e.loc_blacklisted for k, e in copy.expected["val"].items() if e.outcome == "kept"}
    else:
        assert blacklist == frozenset() and not any(got.values())


@pytest.mark.e2e
def test_imagefolder_with_arbitrary_class_names(tmp_path):
    for split, cls, name in [("train", "dog", "001.jpg"), ("train", "cat", "001.jpg"), ("val", "cat", "7.jpg")]:
        (tmp_path / "src" / split / cls).mkdir(parents=True, exist_ok=True)
        from PIL import Image
        Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / "src" / split / cls / name, quality=90)
    d = discover(str(tmp_path / "src"))
    assert d.layout == "imagefolder"
    assert [(c.label, c.wnid) for c in d.classes] == [(0, "cat"), (1, "dog")]
    run_cli("build", tmp_path / "src", "--out", tmp_path / "out", "--no-progress", check_code=0)
    out = version_of(tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["wnid"] for c in manifest["classes"]] == ["cat", "dog"]
    rows = pq.read_table([str(out / p) for p in manifest["splits"]["train"]["index"]]).to_pylist()
    assert sorted((r["key"], r["label"]) for r in rows) == [("cat_001", 0), ("dog_001", 1)]


def test_unknown_layout_says_what_each_layout_expects(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(SourceError) as e:
        discover(str(tmp_path))
    message = str(e.value)
    assert "photos" in message
    for name in ("ilsvrc2012", "kaggle", "imagefolder"):
        assert name in message


def test_an_empty_official_archive_is_unusable_input(release, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        (source / name).write_bytes(Path(release.root, name).read_bytes())
    (source / "ILSVRC2012_img_train.tar").write_bytes(b"")
    with pytest.raises(SourceError, match="ILSVRC2012_img_train.tar in SOURCE is empty"):
        discover(str(source))
