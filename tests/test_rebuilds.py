"""Rebuilding on a schedule: a build killed at any point (SIGKILL, no clean-up of its own) leaves
the published version untouched, and the rerun resumes what it had done, finishes, gives the
bytes of a clean build and removes the debris."""
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, REPO, read_manifest, run_cli, version_of

from pipeline.versions import MARKER_NAME

pytestmark = pytest.mark.e2e  # real builds through the command line

OPTIONS = ("--max-reject-rate", "0.5", "--shard-size", "100KB", "--no-progress", "--direct_num_workers", "2")


def _digests(folder: Path) -> dict:
    """{relative path: sha256} of every file of a version; in the manifest, the fields that name
    the build (its id, time, previous version and SOURCE's path) are left out."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == MARKER_NAME:
            continue
        if path.name == "manifest.json":
            manifest = json.loads(data)
            for field in ("created", "version", "previous"):
                manifest.pop(field)
            manifest["fingerprint"]["source"].pop("url")
            data = json.dumps(manifest, sort_keys=True).encode()
        found[str(path.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return found


@pytest.fixture(scope="module")
def clean(release, tmp_path_factory):
    """The digests of a clean build of the release with OPTIONS."""
    out = tmp_path_factory.mktemp("clean") / "out"
    run_cli("build", release.root, "--out", out, *OPTIONS, check_code=0)
    return _digests(version_of(out))


def _kill_when(out: Path, ready, release, *extra) -> None:
    """Start a build, SIGKILL it and its workers as soon as `ready(out)` holds."""
    proc = subprocess.Popen([*CLI, "build", str(release.root), "--out", str(out), *OPTIONS, *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _indexing(out: Path) -> bool:  # a new version is begun (beside the published one), no shard is written yet
    return len(list(out.glob(f"versions/*/{MARKER_NAME}"))) == 2 and not any(out.glob("versions/*/_done/*"))


def _writing_shards(out: Path) -> bool:  # a few shards are done, most are not
    return len(list(out.glob("versions/*/_done/*"))) >= 3


@pytest.mark.parametrize("ready", [_indexing, _writing_shards], ids=["before-any-shard", "while-writing-shards"])
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
    debris = [p for p in out.rglob("*") if p.name.startswith((".", "_")) or ".tmp-" in p.name]
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
