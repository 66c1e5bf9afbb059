"""End-to-end builds of a generated release, read back with other people's readers."""
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import build, read_manifest, run_cli, unpublished_version, version_of
from PIL import Image

from pipeline.sample import make_sample_release
from pipeline.versions import MARKER_NAME
from transforms.layout import NEAR_DUPLICATES_NAME
from transforms.schema import INDEX_SCHEMA

pytestmark = pytest.mark.e2e  # real builds through the command line


def index_rows(b, split):
    return pq.read_table([str(b.path(p)) for p in b.manifest["splits"][split]["index"]]).to_pylist()


def kept(release, split):
    return {k: e for k, e in release.expected[split].items() if e.outcome == "kept"}


def test_counts_reconcile_and_manifest_is_complete(built, release):
    m = built.manifest
    assert m["format"] == "imagenet-shards/1"
    assert m["codecs"]["pil"].endswith(".post0") and m["codecs"]["libjpeg_turbo"]
    assert m["config"]["resize"] == "longer:512" and m["layout"] == "ilsvrc2012"
    assert {i["name"] for i in m["inputs"]} >= {"ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                                               "ILSVRC2012_devkit_t12.tar.gz"}
    assert len(m["classes"]) == 1000
    tench = m["classes"][0]
    assert {k: tench[k] for k in ("label", "wnid", "name")} == {"label": 0, "wnid": "n01440764",
                                                               "name": "tench, Tinca tinca"}
    # WordNet: a cyprinid, a fish, ... an entity
    assert tench["parents"] == ["n01439121"] and {"n02512053", "n00001740"} <= set(tench["ancestors"])
    assert set(m["splits"]) == {"train", "val", "test"}
    for split, s in m["splits"].items():
        expected = release.expected[split]
        assert s["read"] == len(expected) == s["samples"] + s["rejected"], split
        assert s["samples"] == len(kept(release, split))
        assert len(s["shards"]) == len(s["index"])
    assert len(m["splits"]["train"]["shards"]) > 3  # --shard-size 120KB made several


def test_every_kept_key_once_with_its_label_read_by_webdataset(built, release):
    for split in ("train", "val", "test"):
        urls = [str(p) for p in built.shard_paths(split)]
        seen = {}
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            assert sample["__key__"] not in seen
            seen[sample["__key__"]] = int(sample["cls"])
            assert json.loads(sample["json"])["key"] == sample["__key__"]
        assert seen == {k: e.label for k, e in kept(release, split).items()}, split


def test_every_planted_fault_rejected_with_its_reason(built, release):
    rejects = pq.read_table([str(built.path(p)) for p in built.manifest["rejects"]]).to_pylist()
    got = {(r["split"], r["key"]): r["reason"] for r in rejects}
    expected = {(split, k): e.outcome for split, es in release.expected.items() for k, e in es.items()
                if e.outcome != "kept"}
    assert got == expected
    assert all(r["source"] and r["detail"] is not None for r in rejects)
    by_reason = {}
    for reason in got.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    assert built.manifest["rejects_by_reason"] == dict(sorted(by_reason.items()))


def test_index_offsets_point_at_the_jpeg_payloads(built):
    for split in built.manifest["splits"]:
        rows = index_rows(built, split)
        assert pq.read_schema(str(built.path(built.manifest["splits"][split]["index"][0]))).equals(INDEX_SCHEMA)
        for row in rows:
            with open(built.path(row["shard"]), "rb") as f:
                f.seek(row["offset"])
                payload = f.read(row["size"])
            with tarfile.open(built.path(row["shard"])) as tar:
                assert tar.extractfile(f"{row['key']}.jpg").read() == payload


def test_gnu_tar_lists_each_sample_adjacent(built):
    for path in built.shard_paths("train"):
        names = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
        assert len(names) % 3 == 0
        for i in range(0, len(names), 3):
            stems = {n.split(".", 1)[0] for n in names[i:i + 3]}
            exts = [n.split(".", 1)[1] for n in names[i:i + 3]]
            assert len(stems) == 1 and exts == ["jpg", "cls", "json"]


def _is_baseline(jpeg: bytes) -> bool:
    """True when the first start-of-frame marker is SOF0 (baseline DCT)."""
    i = 2
    while i < len(jpeg) - 4:
        assert jpeg[i] == 0xFF
        marker = jpeg[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker == 0xC0
        i += 2 + int.from_bytes(jpeg[i + 2:i + 4], "big")
    return False


def test_stored_images_are_baseline_rgb_and_sized_by_the_resize_rule(built, release):
    rows = {r["key"]: r for split in built.manifest["splits"] for r in index_rows(built, split)}
    for key, row in rows.items():
        with open(built.path(row["shard"]), "rb") as f:
            f.seek(row["offset"])
            jpeg = f.read(row["size"])
        im = Image.open(io.BytesIO(jpeg))
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (row["width"], row["height"])), key
        assert _is_baseline(jpeg), key
        assert 0x0112 not in im.getexif(), key
        ow, oh = row["orig_width"], row["orig_height"]
        side = max(ow, oh)
        if side <= 512:
            assert (row["width"], row["height"]) == (ow, oh)
        else:
            assert max(row["width"], row["height"]) == 512
            other = min(ow, oh)
            assert min(row["width"], row["height"]) == max(1, int(other * 512 / side + 0.5))


def test_reencoding_and_orientation_are_recorded(built, release):
    for split in built.manifest["splits"]:
        for row in index_rows(built, split):
            e = release.expected[split][row["key"]]
            assert row["reencoded"] == e.reencoded, row["key"]
            assert row["exif_orientation"] == e.exif_orientation, row["key"]
            assert row["wnid"] == e.wnid and row["label"] == e.label


def test_duplicates_flagged_across_splits(built, release):
    got = {r["key"]: r["duplicate_of"] for split in built.manifest["splits"] for r in index_rows(built, split)}
    expected = {k: e.duplicate_of for es in release.expected.values() for k, e in es.items() if e.outcome == "kept"}
    assert got == expected
    assert any(expected.values())
    assert built.manifest["duplicates"] == sum(1 for v in expected.values() if v)


def test_shards_mix_classes(built):
    rows = index_rows(built, "train")
    classes_per_shard = {}
    for r in rows:
        classes_per_shard.setdefault(r["shard"], set()).add(r["wnid"])
    assert max(len(c) for c in classes_per_shard.values()) > 1


def test_no_temporary_files_left(built):
    cache = built.root / "cache"  # the tar headers kept for the next build: not scratch
    leftovers = [p for p in built.root.rglob("*") if (p.name.startswith(".") or "tmp" in p.name
                 or p.name in ("_progress", "_pieces", "_done", "_previous") or p.suffix == ".pkl")
                 and cache not in p.parents]
    assert leftovers == []


@pytest.mark.parametrize("runner_args", [
    ["--direct_num_workers", "1", "--direct_running_mode", "in_memory"],  # FnApiRunner, one worker, in process
    ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK"],  # portable job API
], ids=["one-worker", "portable-runner"])
def test_same_shards_on_another_runner_and_worker_count(built, release, tmp_path, runner_args):
    again = build(release, tmp_path / "again", "--shard-size", "120KB", *runner_args)
    for split in built.manifest["splits"]:
        assert again.manifest["splits"][split]["shards"] == built.manifest["splits"][split]["shards"]
        a = [p.read_bytes() for p in built.shard_paths(split)]
        b = [p.read_bytes() for p in again.shard_paths(split)]
        assert a == b
        index_a = [built.path(p).read_bytes() for p in built.manifest["splits"][split]["index"]]
        index_b = [again.path(p).read_bytes() for p in again.manifest["splits"][split]["index"]]
        assert index_a == index_b


def test_too_many_rejects_fails_after_writing_the_rejects(release, tmp_path):
    out = tmp_path / "strict"
    proc = run_cli("build", release.root, "--out", out, "--no-progress", "--max-reject-rate", "0.01")
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stderr
    version = unpublished_version(out)  # LATEST is not written
    assert not (version / "manifest.json").exists()
    report = json.loads((version / "build-failed.json").read_text())
    assert report["rejects"] and all((version / p).exists() for p in report["rejects"])


@pytest.mark.parametrize("args,message", [
    (["--direct_num_worker=2"], "did you mean --direct_num_workers"),
    (["--resize", "wider:5"], "resize"),
    (["--shard-size", "12XB"], "size"),
])
def test_bad_usage_exits_2(release, tmp_path, args, message):
    proc = run_cli("build", release.root, "--out", tmp_path / "o", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_folder_without_archives_lists_what_was_expected(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hi")
    proc = run_cli("build", tmp_path / "src", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert "ILSVRC2012_img_train.tar" in proc.stderr and "notes.txt" in proc.stderr


@pytest.mark.driver
def test_an_unversioned_build_stays_readable_and_overwrite_replaces_it(release, tmp_path):
    out = tmp_path / "o"
    args = ("build", release.root, "--out", out, "--no-progress", "--splits", "val", "--max-reject-rate", "0.5")
    run_cli(*args, check_code=0)
    version = version_of(out)
    for entry in version.iterdir():  # the layout of earlier releases: the build at OUT's root
        if entry.name in (MARKER_NAME, "_info.json", "README.md", NEAR_DUPLICATES_NAME) or entry.name.endswith(
                ".wids.json"):
            continue  # files of this release: an earlier one did not write them
        entry.rename(out / entry.name)
    for idx in out.glob("*/*.idx"):
        idx.unlink()
    shutil.rmtree(out / "versions")
    (out / "LATEST").unlink()
    (out / "_info.json").unlink()
    shutil.rmtree(out / "cache")  # the tar headers cache, new in this release too
    old = read_manifest(out)  # readers still find it
    assert version_of(out) == out and old["splits"]["val"]["samples"] > 0
    proc = run_cli(*args)
    assert proc.returncode == 2 and "unversioned build of an earlier release: pass --overwrite" in proc.stderr
    run_cli(*args, "--overwrite", check_code=0)
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", "_info.json", "cache", "versions"]
    assert read_manifest(out)["splits"]["val"]["samples"] == old["splits"]["val"]["samples"]


def test_verify_inputs_catches_a_checksum_mismatch(release, tmp_path):
    proc = run_cli("build", release.root, "--out", tmp_path / "o", "--verify-inputs", "--no-progress")
    assert proc.returncode == 2
    assert "does not match the published" in proc.stderr


def source_bytes(release_root, source: str) -> bytes:
    """The bytes of a member named like 'outer.tar/inner.tar/name', read back with tarfile."""
    parts = source.split("/")
    data = (Path(release_root) / parts[0]).read_bytes()
    for part in parts[1:]:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            data = tar.extractfile(part).read()
    return data


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def clean_release(tmp_path_factory):
    return make_sample_release(tmp_path_factory.mktemp("clean"), classes=3, train_per_class=5, val_images=8,
                               test_images=0, plant_faults=False, seed=2)


@pytest.mark.parametrize("resize", ["shorter:64", "longer:100", "none"])
def test_resize_modes_give_exact_sizes_and_faithful_pixels(clean_release, tmp_path, resize):
    b = build(clean_release, tmp_path / "out", "--resize", resize, "--reencode", "always")
    rows = [r for split in b.manifest["splits"] for r in index_rows(b, split)]
    assert len(rows) == sum(len(kept(clean_release, s)) for s in ("train", "val"))
    for row in rows:
        ow, oh = row["orig_width"], row["orig_height"]
        if resize == "none":
            target = (ow, oh)
        else:
            mode, n = resize.split(":")
            n = int(n)
            side = min(ow, oh) if mode == "shorter" else max(ow, oh)
            if side <= n:
                target = (ow, oh)
            elif side == ow:
                target = (n, max(1, int(oh * n / ow + 0.5)))
            else:
                target = (max(1, int(ow * n / oh + 0.5)), n)
        assert (row["width"], row["height"]) == target, row["key"]
        assert row["reencoded"]
        with open(b.path(row["shard"]), "rb") as f:
            f.seek(row["offset"])
            stored = np.asarray(Image.open(io.BytesIO(f.read(row["size"]))).convert("RGB"))
        reference = Image.open(io.BytesIO(source_bytes(clean_release.root, row["source"]))).convert("RGB")
        reference = np.asarray(reference.resize(target, Image.LANCZOS))
        assert psnr(stored, reference) > 30, row["key"]


def test_boxes_joined_from_the_annotation_archives(built, release):
    checked = 0
    for split in ("train", "val"):
        for row in index_rows(built, split):
            e = release.expected[split][row["key"]]
            assert row["has_boxes"] == bool(e.boxes), row["key"]
            assert tuple(row["box_names"]) == e.box_names, row["key"]
            assert len(row["boxes"]) == len(e.boxes)
            for got, want in zip(row["boxes"], e.boxes):
                assert got == pytest.approx(want, abs=1e-6)
            assert row["label_disagrees"] == e.label_disagrees, row["key"]
            assert row["loc_blacklisted"] == e.loc_blacklisted, row["key"]
            checked += bool(e.boxes)
    assert checked > 10
    disagreements = sum(e.label_disagrees for e in release.expected["val"].values())
    assert built.manifest["splits"]["val"]["label_disagreements"] == disagreements == 1


def test_boxes_in_the_json_are_within_half_a_pixel_of_the_stored_image(built, release):
    for path in built.shard_paths("train") + built.shard_paths("val"):
        for sample in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            e = release.expected[meta["split"]][meta["key"]]
            stored = Image.open(io.BytesIO(sample["jpg"]))
            assert stored.size == (meta["width"], meta["height"])
            assert len(meta["boxes_px"]) == len(e.boxes)
            for px, want in zip(meta["boxes_px"], e.boxes):
                scale = (stored.width, stored.height) * 2
                assert all(abs(p - w * s) <= 0.5 for p, w, s in zip(px, want, scale)), meta["key"]


def test_hostile_and_broken_xml_are_set_aside_and_orphans_counted(built, release):
    rows = pq.read_table([str(built.path(p)) for p in built.manifest["annotation_rejects"]]).to_pylist()
    assert {(r["split"], r["key"]): r["reason"] for r in rows} == release.annotation_rejects
    assert all("root:" not in r["detail"] for r in rows)  # nothing of /etc/passwd leaked
    assert built.manifest["orphan_annotations"] == release.orphan_annotations == 1
    for split, key in release.annotation_rejects:  # their images are kept, without boxes
        assert release.expected[split][key].outcome == "kept"
        assert [r for r in index_rows(built, split) if r["key"] == key][0]["has_boxes"] is False


@pytest.mark.driver
def test_rebuilds_publish_versions_and_the_same_build_is_up_to_date(release, tmp_path):
    out = tmp_path / "o"
    args = ("build", release.root, "--out", out, "--no-progress", "--splits", "val", "--max-reject-rate", "0.5")
    run_cli(*args, check_code=0)
    first = read_manifest(out)
    assert (out / "LATEST").read_text() == f"versions/{first['version']}\n" and first["previous"] is None

    proc = run_cli(*args, check_code=0)  # the same inputs and options: nothing to do
    assert "up to date" in proc.stderr and len(list((out / "versions").iterdir())) == 1

    run_cli(*args, "--seed", "3", check_code=0)  # other options: a new version, published
    second = read_manifest(out)
    assert (first["config"]["seed"], second["config"]["seed"]) == (0, 3)
    assert second["previous"] == f"versions/{first['version']}"
    assert second["fingerprint"]["digest"] != first["fingerprint"]["digest"]
    assert second["splits"]["val"]["samples"] == first["splits"]["val"]["samples"]
    assert (out / second["previous"] / "manifest.json").exists()  # the previous version stays readable

    proc = run_cli(*args, "--seed", "3", "--force", "--keep", "2", check_code=0)
    third = read_manifest(out)
    assert third["fingerprint"] == second["fingerprint"] and third["version"] != second["version"]
    assert sorted(p.name for p in (out / "versions").iterdir()) == [second["version"], third["version"]]
    assert f"removed versions/{first['version']} (--keep 2)" in proc.stderr
