"""Shared fixtures: a generated miniature ILSVRC2012 release and real builds of it."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.sample import make_sample_release
from pipeline.versions import current_version

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pipeline"]  # what the console script runs


@pytest.fixture(autouse=True)
def own_temporary_folder(tmp_path_factory, monkeypatch):
    """Each test gets a TMPDIR of its own (inherited by the builds it runs), so nothing another
    process leaves in the machine's temporary folder can disturb it."""
    folder = str(tmp_path_factory.mktemp("tmpdir"))
    monkeypatch.setenv("TMPDIR", folder)
    monkeypatch.setattr(tempfile, "tempdir", folder)


def version_of(out) -> Path:
    """The version of OUT that LATEST names (where a finished build's manifest is)."""
    return Path(current_version(str(out)))


def read_manifest(out) -> dict:
    """The manifest of OUT's current version."""
    return json.loads((version_of(out) / "manifest.json").read_text())


def unpublished_version(out) -> Path:
    """The one version folder of OUT (a build that did not publish: LATEST does not name it)."""
    (folder,) = (Path(out) / "versions").iterdir()
    assert not (Path(out) / "LATEST").exists()
    return folder


def run_cli(*args, check_code=None, timeout=600):
    """Run the real command line in a subprocess; return the CompletedProcess."""
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check_code is not None and proc.returncode != check_code:
        raise AssertionError(f"exit {proc.returncode} != {check_code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """A release with every planted fault."""
    return make_sample_release(tmp_path_factory.mktemp("release"), classes=6, train_per_class=8, val_images=16,
                               test_images=3, seed=1)


class Build:
    """A finished build: `root` is OUT (the dataset root), `out` the version that LATEST names."""

    def __init__(self, root: Path, proc):
        self.root = root
        self.out = Path(current_version(str(root)))
        self.proc = proc
        self.manifest = json.loads((self.out / "manifest.json").read_text())

    def path(self, relative: str) -> Path:
        return self.out / relative

    def shard_paths(self, split: str) -> list:
        return [self.out / s["path"] for s in self.manifest["splits"][split]["shards"]]


def build(release, out: Path, *extra) -> Build:
    proc = run_cli("build", release.root, "--out", out, "--max-reject-rate", "0.5", "--no-progress", *extra,
                   check_code=0)
    return Build(out, proc)


@pytest.fixture(scope="session")
def built(release, tmp_path_factory):
    """The release built with small shards on two worker processes."""
    return build(release, tmp_path_factory.mktemp("built"), "--shard-size", "120KB", "--direct_num_workers", "2")


@pytest.fixture(scope="session")
def release_with_near_copies(tmp_path_factory):
    """A release like `release` (planted faults, byte duplicates, boxes), with planted near-duplicates too:
    what the tests of the reading side (the reading API, the report) read."""
    return make_sample_release(tmp_path_factory.mktemp("release-near"), classes=6, train_per_class=8, val_images=16,
                               test_images=3, seed=1, near_duplicates=True)


@pytest.fixture(scope="session")
def built_with_near_copies(release_with_near_copies, tmp_path_factory):
    """That release built as `built` is: small shards, two worker processes."""
    return build(release_with_near_copies, tmp_path_factory.mktemp("built-near") / "out", "--shard-size", "120KB",
                 "--direct_num_workers", "2")
