"""`imagenet-shards demo`: the bundled sample builds, and the printed reading example runs."""
import json

import pytest
from conftest import run_cli, version_of

from pipeline.cli import READING_EXAMPLE

pytestmark = [pytest.mark.e2e, pytest.mark.inputs]  # real builds through the command line


def test_demo_builds_and_its_reading_example_runs(tmp_path):
    proc = run_cli("demo", "--out", tmp_path / "demo", "--no-progress", check_code=0)
    out = version_of(tmp_path / "demo" / "shards")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] > 100
    assert len(manifest["splits"]["train"]["shards"]) > 1
    assert str(out) in proc.stderr and "How to read it" in proc.stderr

    code = "\n".join(line[2:] for line in READING_EXAMPLE.format(out=tmp_path / "demo" / "shards").splitlines()[2:])
    scope = {}
    exec(compile(code, "reading-example", "exec"), scope)  # the example as printed, against the real output
    assert scope["image"].mode == "RGB" and 0 <= scope["label"] < 1000
    assert scope["jpeg"][:2] == b"\xff\xd8" and len(scope["jpeg"]) == scope["row"]["size"]
