"""--splits, --classes and --relabel: a subset built on purpose, its counts still reconciled."""
import json

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, version_of

pytestmark = [pytest.mark.e2e, pytest.mark.inputs]  # real builds through the command line


def test_class_subset_keeps_the_full_index_unless_relabelled(release, tmp_path):
    chosen = release.classes[:2]
    (tmp_path / "classes.txt").write_text("# two classes\n" + "\n".join(f"{w} name" for w in reversed(chosen)) + "\n")
    for relabel in (False, True):
        out = tmp_path / f"out-{relabel}"
        run_cli("build", release.root, "--out", out, "--no-progress", "--max-reject-rate", "0.5",
                "--splits", "train,val", "--classes", tmp_path / "classes.txt",
                *(["--relabel"] if relabel else []), check_code=0)
        out = version_of(out)
        m = json.loads((out / "manifest.json").read_text())
        assert set(m["splits"]) == {"train", "val"}
        full = {e.wnid: e.label for es in release.expected.values() for e in es.values() if e.wnid}
        assert [c["wnid"] for c in m["classes"]] == sorted(chosen)
        assert [c["label"] for c in m["classes"]] == ([0, 1] if relabel else sorted(full[w] for w in chosen))
        for split in ("train", "val"):
            rows = pq.read_table([str(out / p) for p in m["splits"][split]["index"]]).to_pylist()
            expected = {k for k, e in release.expected[split].items() if e.outcome == "kept" and e.wnid in chosen}
            assert {r["key"] for r in rows} == expected
            labels = {c["wnid"]: c["label"] for c in m["classes"]}
            assert all(r["label"] == labels[r["wnid"]] for r in rows)
            s = m["splits"][split]
            assert s["read"] == s["samples"] + s["rejected"]
            assert s["left_out"] > 0  # the other classes, counted, not silently dropped


def test_unknown_split_or_class_is_a_usage_error(release, tmp_path):
    proc = run_cli("build", release.root, "--out", tmp_path / "o", "--splits", "train,valid")
    assert proc.returncode == 2 and "valid" in proc.stderr
    (tmp_path / "c.txt").write_text("n99999999\n")
    proc = run_cli("build", release.root, "--out", tmp_path / "o", "--classes", tmp_path / "c.txt")
    assert proc.returncode == 2 and "n99999999" in proc.stderr
