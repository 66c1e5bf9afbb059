"""Rebuilding on a schedule: a build killed at any point (SIGKILL, no clean-up of its own) leaves
the published version untouched, and the rerun resumes what it had done, finishes, gives the
bytes of a clean build and removes the debris; a full disk and a read-only OUT; a rebuild of
changed inputs takes the unchanged images from the previous version and equals a clean build;
nothing that is not the tool's is removed."""
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO, read_manifest, run_cli, version_of
from PIL import Image

from benchmarks.output_digests import digests
from pipeline.sample import export_layout

pytestmark = [pytest.mark.e2e, pytest.mark.driver]  # real builds through the command line

OPTIONS = ("--max-reject-rate", "0.5", "--shard-size", "100KB", "--no-progress", "--direct_num_workers", "2")


def _digests(folder: Path) -> dict:
    """{relative path: sha256} of every file of a version, the manifest's build-naming fields left out."""
    return digests(str(folder))


@pytest.fixture(scope="module")
def clean(release, tmp_path_factory):
    """The digests of a clean build of the release with OPTIONS."""
    out = tmp_path_factory.mktemp("clean") / "out"
    run_cli("build", release.root, "--out", out, *OPTIONS, check_code=0)
    return _digests(version_of(out))


def _kill_when(out: Path, ready, release, *extra) -> None:
    """Start a build, SIGKILL it and its workers as soon as `ready(out)` holds."""
    with_progress = [o for o in OPTIONS if o != "--no-progress"]  # its heartbeats show where the build is
    proc = subprocess.Popen([*CLI, "build", str(release.root), "--out", str(out), *with_progress, *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _indexing(out: Path) -> bool:  # the pipeline of a new version runs, no shard is written yet
    return any(out.glob("versions/*/_progress")) and not any(out.glob("versions/*/_done/*"))


def _writing_shards(out: Path) -> bool:  # a few shards are done, most are not
    return len(list(out.glob("versions/*/_done/*"))) >= 3


@pytest.mark.parametrize("ready", [_indexing, _writing_shards], ids=["while-indexing", "while-writing-shards"])
def test_a_killed_build_leaves_latest_alone_and_its_rerun_resumes_to_a_clean_builds_bytes(release, clean, tmp_path,
                                                                                          ready):
    out = tmp_path / "out"
    run_cli("build", release.root, "--out", out, *OPTIONS, "--splits", "val", check_code=0)  # the version in use
    published = read_manifest(out)["version"]
    before = _digests(version_of(out))

    _kill_when(out, ready, release)
    assert version_of(out).name == published and _digests(version_of(out)) == before  # readers see no change

    proc = run_cli("build", release.root, "--out", out, *OPTIONS, check_code=0)
    assert "resuming versions/" in proc.stderr
    assert read_manifest(out)["previous"] == f"versions/{published}"
    assert _digests(version_of(out)) == clean  # byte for byte what a clean build writes
    debris = [p for p in out.rglob("*") if p.name.startswith((".", "_")) and p.name != "_info.json"
              or ".tmp-" in p.name]
    assert debris == []
    assert sorted(p.name for p in (out / "versions").iterdir()) == sorted([published, version_of(out).name])


def test_a_build_killed_before_it_published_is_published_by_its_rerun(release, clean, tmp_path):
    out = tmp_path / "out"
    run_cli("build", release.root, "--out", out, *OPTIONS, "--splits", "val", check_code=0)
    first = (out / "LATEST").read_text()
    run_cli("build", release.root, "--out", out, *OPTIONS, check_code=0)
    finished = version_of(out)
    (out / "LATEST").write_text(first)  # as if it was killed after its manifest, before LATEST was written
    proc = run_cli("build", release.root, "--out", out, *OPTIONS, check_code=0)
    assert f"resuming versions/{finished.name}" in proc.stderr
    assert version_of(out) == finished and _digests(finished) == clean
    assert len(list((out / "versions").iterdir())) == 2


def test_a_killed_build_of_other_options_is_removed_by_the_next_build(release, tmp_path):
    out = tmp_path / "out"
    _kill_when(out, _writing_shards, release, "--seed", "5")
    (stopped,) = (out / "versions").iterdir()
    proc = run_cli("build", release.root, "--out", out, *OPTIONS, "--splits", "val", check_code=0)
    assert f"removed versions/{stopped.name}, left unfinished by an earlier build" in proc.stderr
    assert [p.name for p in (out / "versions").iterdir()] == [version_of(out).name]


def test_nothing_that_is_not_the_tools_is_removed(release, tmp_path):
    out = tmp_path / "out"
    run_cli("build", release.root, "--out", out, *OPTIONS, "--splits", "val", check_code=0)
    mine = out / "versions" / "my-analysis"  # a folder without the tool's marker
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (out / "README.txt").write_text("the dataset of team X")
    for seed in ("1", "2", "3"):
        run_cli("build", release.root, "--out", out, *OPTIONS, "--splits", "val", "--seed", seed, "--keep", "1",
                check_code=0)
    assert (mine / "notes.txt").read_text() == "mine" and (out / "README.txt").exists()
    assert sorted(p.name for p in (out / "versions").iterdir()) == sorted(["my-analysis", version_of(out).name])


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, where this machine lets the tests mount one (as root in a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_fails_in_one_line_and_the_rerun_resumes_once_there_is_room(release, clean, small_disk):
    out = small_disk / "out"
    proc = run_cli("build", release.root, "--out", out, *OPTIONS, check_code=1)
    failure = [line for line in proc.stderr.splitlines() if "build failed" in line]
    assert len(failure) == 1 and "No space left on device" in failure[0] and "resumes" in failure[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "LATEST").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # room is made
    proc = run_cli("build", release.root, "--out", out, *OPTIONS, check_code=0)
    assert "resuming versions/" in proc.stderr and _digests(version_of(out)) == clean


def test_a_read_only_out_is_unusable_output_and_its_published_version_stays(release, small_disk):
    out = small_disk / "out"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    run_cli("build", release.root, "--out", out, *OPTIONS, "--splits", "val", check_code=0)
    before = _digests(version_of(out))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = run_cli("build", release.root, "--out", out, *OPTIONS, check_code=2)
    assert f"--out {str(out)!r} cannot be written: Read-only file system" in proc.stderr, proc.stderr
    assert _digests(version_of(out)) == before


def _photo(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def test_a_rebuild_takes_unchanged_images_from_the_previous_version_and_equals_a_clean_build(release, tmp_path):
    src = tmp_path / "src"
    export_layout(release, src, "imagefolder")
    out = tmp_path / "out"
    run_cli("build", src, "--out", out, *OPTIONS, check_code=0)
    first = read_manifest(out)

    classes = sorted(p for p in (src / "train").iterdir())
    images = {c: sorted(p for p in c.iterdir() if p.suffix == ".JPEG") for c in classes}
    rows = _index(out, "train")
    kept = {r["key"] for r in rows}
    assert any(r["reencoded"] for r in rows) and not all(r["reencoded"] for r in rows)  # both kinds are taken
    gone = [p for p in images[classes[0]] if p.stem in kept][:2]
    for path in gone:  # removed
        path.unlink()
    changed = next(p for p in images[classes[1]] if p.stem in kept)
    _photo(changed, seed=1)  # the same name, other bytes
    for n in range(3):  # added
        _photo(classes[2] / f"{classes[2].name}_new{n}.JPEG", seed=10 + n)

    proc = run_cli("build", src, "--out", out, *OPTIONS, check_code=0)
    second = read_manifest(out)
    diff = second["diff"]
    assert diff["from"] == f"versions/{first['version']}"
    assert {k: diff["splits"]["train"][k] for k in ("added", "removed", "changed")} == {
        "added": 3, "removed": 2, "changed": 1}
    assert diff["classes"]["train"] == {classes[0].name: {"removed": 2}, classes[1].name: {"changed": 1},
                                        classes[2].name: {"added": 3}}
    assert diff["splits"]["val"] == {"added": 0, "removed": 0, "changed": 0,
                                     "unchanged": first["splits"]["val"]["samples"]}
    samples = sum(s["samples"] for s in second["splits"].values())
    assert f"not decoded again): {samples - 3 - 1:,} of its" in proc.stderr  # all but the new and the changed
    assert "changes since" in proc.stderr and "train 3 added, 2 removed, 1 changed" in proc.stderr

    clean = tmp_path / "clean"
    run_cli("build", src, "--out", clean, *OPTIONS, check_code=0)
    assert _digests(version_of(out)) == _digests(version_of(clean))  # byte for byte a clean build's

    proc = run_cli("build", src, "--out", out, *OPTIONS, "--quality", "80", check_code=0)
    assert "not decoded again" not in proc.stderr  # other image options: every image is made again
    assert read_manifest(out)["diff"]["splits"]["train"]["changed"] == 0


def _index(out: Path, split: str) -> list:
    manifest, version = read_manifest(out), version_of(out)
    return pq.read_table([str(version / p) for p in manifest["splits"][split]["index"]]).to_pylist()
