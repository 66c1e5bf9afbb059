"""Storage helpers: atomic writes and ranged views."""
import io
import os

import pytest

from benchmarks.range_server import RangeServer
from pipeline.sample import export_layout
from transforms.folders import class_folder_entries, list_files
from transforms.sources import discover
from transforms.storage import ArchiveReader, RangeFile, atomic_write, fingerprint, is_folder, locate


def test_atomic_write_appears_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "shard.tar"
    with pytest.raises(RuntimeError):
        with atomic_write(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("worker died")
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []  # the temporary file is gone too
    with atomic_write(str(target)) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["shard.tar"]


def test_range_file_is_a_window():
    view = RangeFile(io.BytesIO(b"0123456789"), 3, 4)
    assert view.read() == b"3456"
    view.seek(1)
    assert view.read(2) == b"45"
    assert view.read(10) == b"6"
    view.seek(-1, 2)
    assert view.tell() == 3 and view.read() == b"6"


def test_archive_reader_refuses_short_reads(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abcdef")
    reader = ArchiveReader()
    assert reader.read(str(path), 2, 3) == b"cde"
    with pytest.raises(IOError, match="truncated"):
        reader.read(str(path), 4, 10)
    reader.close()


def test_an_http_folder_is_listed_through_its_index_pages_with_sizes_from_heads(release, tmp_path):
    """SOURCE as http(s)://: the links of a folder's index page are its files (their URLs kept as
    they are, never `http://http://...`), each one's size and version from a HEAD."""
    with RangeServer(release.root) as server:
        fs, root, url_of = locate(server.url())
        assert url_of(server.url("ILSVRC2012_img_val.tar")) == server.url("ILSVRC2012_img_val.tar")
        found = discover(server.url())
        assert found.layout == "ilsvrc2012"
        for spec in found.archives:
            assert spec.url == server.url(spec.name)
            assert spec.size == os.path.getsize(os.path.join(release.root, spec.name)) > 0
            assert "version=" in fingerprint(spec.url) and fingerprint(spec.url) != f"size={spec.size} version="
        assert not is_folder(fs, server.url("ILSVRC2012_img_val.tar")) and is_folder(fs, server.url())
        whole = [r for r in server.requests() if r.method == "GET" and r.range is None and not r.path.endswith("/")]
        assert whole == []  # no file was read to find out what it is

    folders = export_layout(release, tmp_path / "imagefolder", "imagefolder")
    with RangeServer(folders.root) as server:
        found = discover(server.url())
        assert found.layout == "imagefolder"
        (train,) = [a for a in found.archives if a.split == "train"]
        classes = class_folder_entries(train.url)
        assert classes and all(entry is None for _, entry in classes)
        name = classes[0][0]
        files = list_files(f"{train.url.rstrip('/')}/{name}")
        local = os.path.join(folders.root, "train", name)
        assert sorted((f.relative, f.size) for f in files) == sorted(
            (n, os.path.getsize(os.path.join(local, n))) for n in os.listdir(local))
        assert all(f.url.startswith(server.root + "/") for f in files)
