"""Storage helpers: atomic writes and ranged views."""
import io

import pytest

from transforms.storage import ArchiveReader, RangeFile, atomic_write


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
