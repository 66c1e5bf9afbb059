"""ImageNet-21k layouts: a folder of class tars, a tar of them, a gzipped tar of them (staged)."""
import collections
import json

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, version_of

from pipeline.sample import export_layout
from transforms.keys import key_hash
from transforms.sources import detect_layout

pytestmark = [pytest.mark.e2e, pytest.mark.inputs]  # real builds through the command line


@pytest.mark.parametrize("variant", ["in21k_folder", "in21k_tar", "in21k_gz"])
def test_in21k_variants_build_with_sorted_wnid_labels(release, tmp_path, variant):
    copy = export_layout(release, tmp_path / "src", variant)
    assert detect_layout(copy.root) == "in21k"
    out = tmp_path / "out"
    proc = run_cli("build", copy.root, "--out", out, "--no-progress", "--max-reject-rate", "0.5", check_code=0)
    out = version_of(out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["layout"] == "in21k" and "layout: in21k" in proc.stderr
    assert [c["wnid"] for c in m["classes"]] == copy.classes
    rows = pq.read_table([str(out / p) for p in m["splits"]["train"]["index"]]).to_pylist()
    kept = {k: e for k, e in copy.expected["train"].items() if e.outcome == "kept"}
    assert {r["key"]: (r["label"], r["source"]) for r in rows} == {k: (e.label, e.source) for k, e in kept.items()}
    assert not (out / "_staging").exists()  # the staged class tars are gone


def test_val_per_class_holds_out_the_smallest_hashes(release, tmp_path):
    copy = export_layout(release, tmp_path / "src", "in21k_folder")
    out = tmp_path / "out"
    run_cli("build", copy.root, "--out", out, "--no-progress", "--max-reject-rate", "0.5", "--val-per-class", "2",
            "--seed", "7", check_code=0)
    out = version_of(out)
    m = json.loads((out / "manifest.json").read_text())
    val = pq.read_table([str(out / p) for p in m["splits"]["val"]["index"]]).to_pylist()
    train = pq.read_table([str(out / p) for p in m["splits"]["train"]["index"]]).to_pylist()
    per_class = collections.Counter(r["wnid"] for r in val)
    assert len(per_class) == len(copy.classes) and max(per_class.values()) == 2
    assert m["splits"]["val"]["read"] == 2 * len(copy.classes)  # two held out per class, kept or rejected
    for wnid in copy.classes:  # the two smallest seeded hashes among the class's indexed members
        members = sorted((k for k, e in copy.expected["train"].items() if e.wnid == wnid and e.outcome != "not_a_file"),
                         key=lambda k: (key_hash(k, 7), k))
        held = {r["key"] for r in val if r["wnid"] == wnid}
        rejected = {k for k in members[:2] if copy.expected["train"][k].outcome != "kept"}
        assert held == set(members[:2]) - rejected
    assert not {r["key"] for r in val} & {r["key"] for r in train}


def test_label_map_orders_the_labels(release, tmp_path):
    copy = export_layout(release, tmp_path / "src", "in21k_folder")
    order = list(reversed(copy.classes)) + ["n00000001"]
    (tmp_path / "map.txt").write_text("\n".join(order) + "\n")
    out = tmp_path / "out"
    run_cli("build", copy.root, "--out", out, "--no-progress", "--max-reject-rate", "0.5",
            "--label-map", tmp_path / "map.txt", check_code=0)
    out = version_of(out)
    m = json.loads((out / "manifest.json").read_text())
    rows = pq.read_table([str(out / p) for p in m["splits"]["train"]["index"]]).to_pylist()
    assert all(r["label"] == order.index(r["wnid"]) for r in rows)
    assert [c["wnid"] for c in m["classes"]] == order
