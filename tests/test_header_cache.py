"""The tar headers cache: a second index of the same archive reads no header, a damaged tar's
damage is kept and raised again, a changed archive is read afresh, stale entries go."""
import io
import tarfile

import pytest

from transforms.header_cache import HeaderCache, archive_folder, remove_stale
from transforms.storage import fingerprint
from transforms.tar_headers import TarDamaged, iter_tar_entries


def _tar(path, names, keep: int = 0):
    """A tar of `names`, its first `keep` bytes only when keep is given (cut off)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = 600 + i
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    data = buf.getvalue()
    data = data[:keep] if keep else data
    path.write_bytes(data)
    return len(data)


def _scanner(path, length, calls):
    def scan():
        calls.append(1)
        with open(path, "rb") as f:
            yield from iter_tar_entries(f, length=length, where=path.name)
    return scan


def test_a_second_index_of_the_same_archive_reads_no_header(tmp_path):
    archive = tmp_path / "a.tar"
    length = _tar(archive, ["a/1.JPEG", "a/2.JPEG", "a/3.JPEG"])
    cache = HeaderCache(str(tmp_path / "cache"), {str(archive): fingerprint(str(archive))})
    calls = []
    first = list(cache.entries(str(archive), 0, length, _scanner(archive, length, calls)))
    second = list(cache.entries(str(archive), 0, length, _scanner(archive, length, calls)))
    assert calls == [1] and first == second and [e.name for e in first] == ["a/1.JPEG", "a/2.JPEG", "a/3.JPEG"]
    with open(archive, "rb") as f:
        assert first == list(iter_tar_entries(f, length=length))

    _tar(archive, ["a/1.JPEG", "a/2.JPEG"])  # the archive changes: another identity, read afresh
    cache = HeaderCache(str(tmp_path / "cache"), {str(archive): fingerprint(str(archive))})
    length = archive.stat().st_size
    assert [e.name for e in cache.entries(str(archive), 0, length, _scanner(archive, length, calls))] == [
        "a/1.JPEG", "a/2.JPEG"]
    assert calls == [1, 1]
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert remove_stale(str(tmp_path / "cache"), cache.fingerprints) == 1  # the old identity's entries
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [archive_folder(str(archive),
                                                                                cache.fingerprints[str(archive)])]


def test_a_damaged_tars_entries_and_damage_are_cached_alike(tmp_path):
    archive = tmp_path / "cut.tar"
    length = _tar(archive, ["1.JPEG", "2.JPEG", "3.JPEG"], keep=4000)  # inside the third member
    cache = HeaderCache(str(tmp_path / "cache"), {str(archive): fingerprint(str(archive))})
    seen = []
    for _ in range(2):
        entries = []
        with pytest.raises(TarDamaged) as damage:
            for entry in cache.entries(str(archive), 0, length, _scanner(archive, length, [])):
                entries.append(entry.name)
        seen.append((entries, str(damage.value)))
    assert seen[0] == seen[1] and seen[0][0] and "ends" in seen[0][1]


def test_an_archive_without_a_fingerprint_is_not_cached(tmp_path):
    archive = tmp_path / "a.tar"
    length = _tar(archive, ["1.JPEG"])
    cache = HeaderCache(str(tmp_path / "cache"), {})
    calls = []
    for _ in range(2):
        assert len(list(cache.entries(str(archive), 0, length, _scanner(archive, length, calls)))) == 1
    assert calls == [1, 1] and not (tmp_path / "cache").exists()
