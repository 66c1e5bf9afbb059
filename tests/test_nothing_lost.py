"""Nothing lost silently: a damaged archive fails the build in one clear line, or, accepted, is
read as far as it goes and listed; Beam's own output goes to the log, not the terminal; a farm of
symbolic links is read through its links."""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO, read_manifest, run_cli, version_of

from pipeline.inputs import prepare_output
from pipeline.lock import LOCK_NAME, OutputLock
from pipeline.options import UsageError, add_build_arguments, config_from_args
from pipeline.sample import export_layout

pytestmark = pytest.mark.e2e  # real builds through the command line


@pytest.fixture(scope="module")
def cut_release(release, tmp_path_factory):
    """The release with its train tar cut in the middle, as a half-finished copy leaves it."""
    root = tmp_path_factory.mktemp("cut") / "src"
    shutil.copytree(release.root, root)
    train = root / "ILSVRC2012_img_train.tar"
    data = train.read_bytes()
    train.write_bytes(data[: len(data) // 2])
    return root


@pytest.mark.inputs
def test_a_cut_off_archive_fails_the_build_in_one_line(cut_release, tmp_path):
    proc = run_cli("build", cut_release, "--out", tmp_path / "out", "--no-progress", "--max-reject-rate", "0.5",
                   check_code=1)
    failure = [line for line in proc.stderr.splitlines() if "build failed" in line]
    assert len(failure) == 1, proc.stderr
    assert "TarDamaged: ILSVRC2012_img_train.tar: the archive ends inside member" in failure[0]
    assert "--accept-damaged-archives" in failure[0]
    assert "Traceback" not in proc.stderr and "apache_beam" not in proc.stderr  # the terminal: the tool's words
    log = Path(re.search(r"\(details: (.+\.log)\)", failure[0]).group(1))
    assert "Traceback" in log.read_text() and "TarDamaged" in log.read_text()  # the whole story is in the log
    assert not (tmp_path / "out" / "LATEST").exists() and not list((tmp_path / "out").rglob("manifest.json"))


@pytest.mark.inputs
def test_an_accepted_damaged_archive_is_listed_and_its_readable_part_built(cut_release, release, tmp_path):
    proc = run_cli("build", cut_release, "--out", tmp_path / "out", "--no-progress", "--max-reject-rate", "0.5",
                   "--accept-damaged-archives", check_code=0)
    manifest = read_manifest(tmp_path / "out")
    damaged = manifest["damaged_archives"]
    assert damaged[0]["source"] == "ILSVRC2012_img_train.tar" and damaged[0]["split"] == "train"
    cut_size = (cut_release / "ILSVRC2012_img_train.tar").stat().st_size
    assert damaged[0]["readable_bytes"] < damaged[0]["bytes"] == cut_size
    train = manifest["splits"]["train"]
    assert 0 < train["read"] < len(release.expected["train"])  # what lies past the cut cannot be located
    assert train["read"] == train["samples"] + train["rejected"]
    assert manifest["config"]["accept_damaged_archives"] is True
    assert "damaged archive, read as far as it goes: ILSVRC2012_img_train.tar" in proc.stderr
    assert "INFO" not in proc.stderr and "apitools" not in proc.stderr  # Beam's own lines went to the log


def test_verbose_shows_beams_own_messages(release, tmp_path):
    proc = run_cli("build", release.root, "--out", tmp_path / "out", "--no-progress", "--max-reject-rate", "0.5",
                   "--splits", "val", "--verbose", "--log-file", tmp_path / "unused.log", check_code=0)
    assert "apache_beam" in proc.stderr or "INFO" in proc.stderr
    assert not (tmp_path / "unused.log").exists()


@pytest.fixture(scope="module")
def link_farm(release, tmp_path_factory):
    """An ImageFolder subset made the usual way, of symbolic links: a class of linked files, a
    linked class folder, a link to nothing, a link back up the tree, and a fifo."""
    real = export_layout(release, tmp_path_factory.mktemp("real"), "imagefolder")
    farm = tmp_path_factory.mktemp("farm") / "src"
    classes = sorted(p for p in (Path(real.root) / "train").iterdir() if p.is_dir())
    (farm / "train" / classes[0].name).mkdir(parents=True)
    for image in sorted(classes[0].iterdir()):
        (farm / "train" / classes[0].name / image.name).symlink_to(image)
    (farm / "train" / classes[1].name).symlink_to(classes[1], target_is_directory=True)
    (farm / "train" / classes[0].name / "gone.JPEG").symlink_to(farm / "nowhere.JPEG")
    (farm / "train" / classes[0].name / "up").symlink_to(farm / "train", target_is_directory=True)
    os.mkfifo(farm / "train" / classes[0].name / "pipe.JPEG")
    expected = {c.name: sorted(p.name for p in c.iterdir()) for c in classes[:2]}
    return farm, expected


@pytest.mark.inputs
def test_a_farm_of_links_builds_every_linked_image_and_rejects_what_is_not_a_file(link_farm, tmp_path):
    farm, expected = link_farm
    run_cli("build", farm, "--out", tmp_path / "out", "--no-progress", "--max-reject-rate", "0.5", check_code=0)
    manifest, version = read_manifest(tmp_path / "out"), version_of(tmp_path / "out")
    rows = pq.read_table([str(version / p) for p in manifest["splits"]["train"]["index"]]).to_pylist()
    rejects = pq.read_table([str(version / p) for p in manifest["rejects"]]).to_pylist()
    found = {tuple(r["source"].split("/")[1:3]) for r in rows + rejects if r.get("reason") != "not_a_file"}
    # every linked image is read (kept, or rejected for its content like the original), none lost
    assert found == {(wnid, name) for wnid, names in expected.items() for name in names}
    not_files = sorted(r["source"].rsplit("/", 1)[1] for r in rejects if r["reason"] == "not_a_file")
    assert not_files == ["gone.JPEG", "pipe.JPEG", "up"]  # "up", a link back up the tree, is not followed
    train = manifest["splits"]["train"]
    assert train["read"] == train["samples"] + train["rejected"] == sum(map(len, expected.values())) + 3


@pytest.mark.inputs
def test_names_that_are_not_utf8_build_and_read_back(link_farm, tmp_path):
    farm, expected = link_farm
    wnid = sorted(expected)[0]
    source = tmp_path / "src" / "train" / wnid
    source.mkdir(parents=True)
    image = (farm / "train" / wnid / expected[wnid][0]).read_bytes()
    with open(os.fsencode(source) + b"/n01440764_\xff1.JPEG", "wb") as f:
        f.write(image)
    run_cli("build", tmp_path / "src", "--out", tmp_path / "out", "--no-progress", "--max-reject-rate", "0.5",
            check_code=0)
    manifest, version = read_manifest(tmp_path / "out"), version_of(tmp_path / "out")
    (row,) = pq.read_table([str(version / p) for p in manifest["splits"]["train"]["index"]]).to_pylist()
    assert row["source"] == f"train/{wnid}/n01440764_\\xff1.JPEG" and row["key"] == "n01440764__1"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_build_leaves_no_scratch_and_no_workers(release, tmp_path, signum, code):
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "build", str(release.root), "--out", str(out), "--max-reject-rate", "0.5",
                             "--direct_num_workers", "2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(out.glob("versions/*/_progress")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the progress folder appears just before the pipeline starts
    time.sleep(1.0)  # the runner is starting its workers, or they are indexing
    assert proc.poll() is None, "the build ended before it could be stopped"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "nothing was published" in stderr and "Traceback" not in stderr
    assert not (out / "LATEST").exists() and not list(out.rglob("manifest.json"))
    assert not list(out.rglob("_progress")) and not list(out.rglob("_pieces"))
    for _ in range(100):  # the runner's worker processes (same session) leave with the build
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker processes outlived the stopped build")


@pytest.mark.driver
def test_one_build_at_a_time_per_out(release, tmp_path):
    out = tmp_path / "out"
    args = ("build", release.root, "--out", out, "--no-progress", "--splits", "val", "--max-reject-rate", "0.5")
    with OutputLock(str(out)):  # a build is running
        proc = run_cli(*args, check_code=2)
    assert "another build is writing to --out" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert list(out.iterdir()) == []  # nothing written (the lock left with its holder)
    (out / LOCK_NAME).write_text("pid 1 on elsewhere\n")  # left by a killed build: nobody holds it now
    run_cli(*args, check_code=0)
    assert read_manifest(out)["splits"]["val"]["samples"] > 0 and not (out / LOCK_NAME).exists()


def _config(out, *extra):
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return config_from_args(parser.parse_args(["src", "--out", str(out), *extra]))


def _previous_build(out):
    (out / "train").mkdir(parents=True)
    (out / "rejects").mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "imagenet-shards/1", "splits": {"train": {}}}))
    (out / "train" / "train-000000.tar").write_bytes(b"x")
    (out / "train" / "train-000000.parquet").write_bytes(b"x")
    (out / "rejects" / "train-rejects.parquet").write_bytes(b"x")


def test_overwrite_deletes_a_previous_build_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    _previous_build(out)
    prepare_output(_config(out, "--overwrite"))
    assert list(out.iterdir()) == []
    _previous_build(out)  # ... in a folder that also holds someone's work
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "index.html").write_text("<html></html>")
    (out / "train" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"also files no build writes \(.git, index.html, train/notes.txt\)"):
        prepare_output(_config(out, "--overwrite"))
    assert (out / ".git" / "HEAD").exists() and (out / "manifest.json").exists()  # nothing deleted
    assert (out / "train" / "train-000000.tar").exists()
