"""Indexing tars in place: offsets, nesting, links, labels, truncation."""
import io
import os
import tarfile

import pytest

from transforms.archives import FolderSlice, TarSlice, index_folder, index_tar_slice, list_inner_tars
from transforms.keys import folder_member_key, sample_key
from transforms.labels import Labeler, imagenet_classes
from transforms.records import MemberRef, Reject
from transforms.tar_headers import TarDamaged, iter_tar_entries

CLASSES = {c.wnid: c.label for c in imagenet_classes()}


def labeler(val=None, labelled=("train", "val")):
    return Labeler(CLASSES, {"val": val or {}}, frozenset(labelled))


def tar_bytes(members, fmt=tarfile.GNU_FORMAT) -> bytes:
    """members: [(name, bytes | ("symlink", target) | "dir")]"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if payload == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(payload, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = payload[1]
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize("name,key", [
    ("n01440764_10026.JPEG", "n01440764_10026"),
    ("n01440764/n01440764_10026.JPEG", "n01440764_10026"),
    ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000001"),
    ("weird.name.v2.jpg", "weird_name_v2"),
    ("space name.png", "space_name"),
])
def test_sample_key_is_the_dot_free_stem(name, key):
    assert sample_key(name) == key


def test_nested_train_tar_gives_absolute_offsets(tmp_path):
    class_a = tar_bytes([("n01440764_1.JPEG", b"A" * 700), ("n01440764_22.JPEG", b"B" * 10)])
    class_b = tar_bytes([("n01443537_5.JPEG", b"C" * 1300), ("n01443537_6.JPEG", ("symlink", "x")),
                         ("sub", "dir")])
    outer = tar_bytes([("n01440764.tar", class_a), ("n01443537.tar", class_b), ("README", b"hello")])
    path = tmp_path / "ILSVRC2012_img_train.tar"
    path.write_bytes(outer)

    items = list(list_inner_tars("train", str(path), "ILSVRC2012_img_train.tar"))
    slices = [i for i in items if isinstance(i, TarSlice)]
    assert [s.wnid for s in slices] == ["n01440764", "n01443537"]
    assert [r.reason for r in items if isinstance(r, Reject)] == ["unlabeled"]  # README: not a class tar

    refs, rejects = [], []
    for piece in slices:
        for item in index_tar_slice(piece, labeler()):
            (refs if isinstance(item, MemberRef) else rejects).append(item)
    data = outer
    got = {r.key: data[r.offset:r.offset + r.size] for r in refs}
    assert got == {"n01440764_1": b"A" * 700, "n01440764_22": b"B" * 10, "n01443537_5": b"C" * 1300}
    assert {r.key: r.label for r in refs} == {"n01440764_1": 0, "n01440764_22": 0, "n01443537_5": 1}
    assert refs[0].source == "ILSVRC2012_img_train.tar/n01440764.tar/n01440764_1.JPEG"
    assert [(r.key, r.reason) for r in rejects] == [("n01443537_6", "not_a_file")]  # the dir is skipped


def test_flat_tar_labels_from_table_and_unlabeled(tmp_path):
    path = tmp_path / "val.tar"
    path.write_bytes(tar_bytes([("ILSVRC2012_val_00000002.JPEG", b"x" * 5),
                                ("ILSVRC2012_val_00000001.JPEG", b"y" * 6),
                                ("ILSVRC2012_val_00000003.JPEG", b"z")]))
    labels = {"ILSVRC2012_val_00000001": "n01751748", "ILSVRC2012_val_00000002": "n09246464"}
    piece = TarSlice("val", str(path), 0, path.stat().st_size, "val.tar")
    items = list(index_tar_slice(piece, labeler(labels)))
    refs = {i.key: i for i in items if isinstance(i, MemberRef)}
    assert refs["ILSVRC2012_val_00000001"].label == 65  # sea snake: ILSVRC2012_ID 490, sorted index 65
    assert refs["ILSVRC2012_val_00000001"].wnid == "n01751748"
    assert [(i.key, i.reason) for i in items if isinstance(i, Reject)] == [("ILSVRC2012_val_00000003", "unlabeled")]


def test_unlabelled_split_gets_minus_one(tmp_path):
    path = tmp_path / "test.tar"
    path.write_bytes(tar_bytes([("ILSVRC2012_test_00000001.JPEG", b"t")]))
    (ref,) = index_tar_slice(TarSlice("test", str(path), 0, path.stat().st_size, "test.tar"), labeler())
    assert (ref.label, ref.wnid) == (-1, None)


def test_member_cut_off_by_the_end_of_the_archive_is_truncated(tmp_path):
    data = tar_bytes([("n01440764_1.JPEG", b"A" * 2000), ("n01440764_2.JPEG", b"B" * 5000)])
    cut = data[: data.index(b"B" * 100) + 1000]  # the second payload is cut
    path = tmp_path / "n01440764.tar"
    path.write_bytes(cut)
    piece = TarSlice("train", str(path), 0, len(cut), "n01440764.tar", "n01440764")
    with pytest.raises(TarDamaged, match="n01440764.tar: the archive ends inside member n01440764_2.JPEG"):
        list(index_tar_slice(piece, labeler()))  # a cut-off archive fails the build...
    items = list(index_tar_slice(piece, labeler(), accept_damaged=True))  # ... unless it is accepted
    assert [type(i).__name__ for i in items] == ["MemberRef", "Reject", "DamagedArchive"]
    assert items[1].reason == "truncated"
    assert (items[2].source, items[2].size) == ("n01440764.tar", len(cut))
    assert items[2].readable == data.index(b"B" * 100) - 512  # where the cut member's header starts


def test_garbage_is_not_a_tar(tmp_path):
    path = tmp_path / "bad.tar"
    path.write_bytes(b"<html>not a tar</html>" * 100)
    piece = TarSlice("val", str(path), 0, path.stat().st_size, "bad.tar")
    with pytest.raises(TarDamaged, match="not a readable tar"):
        list(index_tar_slice(piece, labeler()))


def _entries_until_damage(data: bytes) -> tuple:
    """(the entry names iter_tar_entries yields, the TarDamaged it raises or None)."""
    names = []
    try:
        for entry in iter_tar_entries(io.BytesIO(data), length=len(data), where="t.tar"):
            names.append(entry.name)
    except TarDamaged as e:
        return names, e
    return names, None


def test_a_header_that_makes_no_sense_is_damage_not_the_end(tmp_path):
    data = bytearray(tar_bytes([(f"n01440764_{i}.JPEG", b"x" * 1000) for i in range(3)]))
    assert _entries_until_damage(bytes(data)) == (["n01440764_0.JPEG", "n01440764_1.JPEG", "n01440764_2.JPEG"], None)
    data[1536 + 148:1536 + 156] = b"9999999\0"  # the second header's checksum is wrong
    names, error = _entries_until_damage(bytes(data))
    assert names == ["n01440764_0.JPEG"]  # tarfile alone would stop here without a word
    assert error is not None and "offset 1,536 is neither a member header" in str(error)
    assert (error.readable, error.size) == (1536, len(data))


def test_an_archive_without_its_end_blocks_is_damaged():
    data = tar_bytes([("n01440764_1.JPEG", b"x" * 1000), ("n01440764_2.JPEG", b"y" * 1000)])
    cut = data[:512 + 1024]  # cut right after the first member: every header read is whole
    names, error = _entries_until_damage(cut)
    assert names == ["n01440764_1.JPEG"] and "without its end-of-archive blocks" in str(error)


@pytest.mark.parametrize("class_name,relative,key", [
    ("n01440764", "n01440764_10026.JPEG", "n01440764_10026"),  # ImageNet names are unique as they are
    ("n01751748", "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000001"),  # val as an ImageFolder
    ("dog", "001.jpg", "dog_001"),  # other names often repeat across classes: prefixed by the class
    ("dog", "sub/a.b.png", "dog_sub_a_b"),
    (None, "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000001"),
])
def test_folder_member_key(class_name, relative, key):
    assert folder_member_key(class_name, relative) == key


def test_index_folder_reads_files_whole_and_skips_hidden(tmp_path):
    (tmp_path / "n01440764" / "deep").mkdir(parents=True)
    (tmp_path / "n01440764" / "n01440764_1.JPEG").write_bytes(b"abc")
    (tmp_path / "n01440764" / "deep" / "x.png").write_bytes(b"defg")
    (tmp_path / "n01440764" / ".DS_Store").write_bytes(b"junk")
    refs = list(index_folder(FolderSlice("train", str(tmp_path / "n01440764"), "train/n01440764", "n01440764"),
                             labeler()))
    assert [(r.key, r.offset, r.size, r.label, r.source) for r in refs] == [  # sorted by relative path
        ("deep_x", 0, 4, 0, "train/n01440764/deep/x.png"),
        ("n01440764_1", 0, 3, 0, "train/n01440764/n01440764_1.JPEG"),
    ]
    assert open(refs[0].archive, "rb").read() == b"defg"


def test_devkit_gives_val_labels_and_the_localisation_blacklist(release):
    from transforms.release_files import read_devkit

    labels, blacklist = read_devkit(release.archives["devkit"])
    assert len(labels) == 50_000 and labels["ILSVRC2012_val_00000001"] == "n01751748"
    assert len(blacklist) == 1762  # "1762 images (3.5%) in the validation set are discarded" (devkit readme)
    assert "ILSVRC2012_val_00000036" in blacklist and "ILSVRC2012_val_00000001" not in blacklist


def test_key_table_is_the_dict_it_was_made_from_and_pickles_small():
    import pickle

    from apache_beam.internal import pickler

    from transforms.keys import val_key
    from transforms.labels import KeyTable, ilsvrc2012_id_to_wnid

    wnids = sorted(ilsvrc2012_id_to_wnid().values())
    val = {val_key(i): wnids[(i * 7919) % 1000] for i in range(1, 50_001)}  # the devkit's shape
    sparse = {"ILSVRC2012_val_00000003": "n01", "ILSVRC2012_val_00000001": "n02"}  # a gap: not a range
    mixed = {"dog_001": "dog", "cat": "cat", "x.y": "x"}
    for mapping in (val, sparse, mixed, {}):
        table = KeyTable(mapping)
        for back in (table, pickle.loads(pickle.dumps(table)), pickler.loads(pickler.dumps(table))):
            assert dict(back) == mapping and len(back) == len(mapping)
            for missing in ("ILSVRC2012_val_00000000", "ILSVRC2012_val_00050001", "ILSVRC2012_val_0000001",
                            "ILSVRC2012_val_0000000x", "ILSVRC2012_val_0000000\u00b2", "n01440764_1", ""):
                assert back.get(missing) is None, missing
    table = KeyTable(val)
    assert table["ILSVRC2012_val_00050000"] == val["ILSVRC2012_val_00050000"]
    assert len(pickle.dumps(val)) > 10 * len(pickle.dumps(table))  # ~1.5 MB as a dict, ~0.1 MB here


def _tarfile_view(data: bytes):
    kinds = lambda m: "dir" if m.isdir() else "file" if m.isreg() else "other"  # noqa: E731
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.offset_data, m.size, kinds(m)) for m in tar]


def _ours(data: bytes):
    return [(e.name, e.offset, e.size, e.kind) for e in iter_tar_entries(io.BytesIO(data), length=len(data))]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_headers_read_directly_are_what_tarfile_reads(fmt, monkeypatch):
    """Plain headers are read without tarfile (ustar prefixes, directories with and without a
    slash, empty files); from the first that is not plain (a long name, a pax header, a link)
    tarfile reads the rest: the entries are tarfile's either way."""
    members = [("n01440764_1.JPEG", b"A" * 700), ("d" * 90 + "/" + "e" * 90 + ".JPEG", b"B" * 512),
               ("empty.JPEG", b""), ("a-dir", "dir"), ("n01440764_2.JPEG", b"C" * 3)]
    long_name = [("x" * 150 + ".JPEG", b"D" * 10)] if fmt != tarfile.USTAR_FORMAT else []  # ustar has no way
    tail = long_name + [("link", ("symlink", "n01440764_1.JPEG")), ("after.JPEG", b"E")]
    for entries in (members, members + tail):
        data = tar_bytes(entries, fmt)
        assert _ours(data) == _tarfile_view(data)
    parsed = []
    real = tarfile.TarInfo.frombuf.__func__
    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(lambda cls, *a: parsed.append(1) or real(cls, *a)))
    assert len(_ours(tar_bytes([(f"n01440764_{i}.JPEG", b"x") for i in range(50)]))) == 50
    assert len(parsed) <= 2  # tarfile only read the end of the archive (its zero blocks), not the 50 headers


def test_headers_of_a_gnu_tar_archive(tmp_path):
    """A tar made by GNU tar itself: long names, a directory, a symlink, read as tarfile reads them."""
    import shutil
    import subprocess

    if not shutil.which("tar"):
        pytest.skip("no tar here")
    src = tmp_path / "src"
    (src / "n01440764").mkdir(parents=True)
    for i in range(5):
        (src / "n01440764" / f"n01440764_{i}.JPEG").write_bytes(b"J" * (100 * i + 1))
    (src / "n01440764" / ("long" * 40 + ".JPEG")).write_bytes(b"L" * 7)
    (src / "n01440764" / "link.JPEG").symlink_to("n01440764_1.JPEG")
    archive = tmp_path / "gnu.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "--sort=name", "n01440764"], check=True)
    data = archive.read_bytes()
    assert _ours(data) == _tarfile_view(data)
    assert len(_ours(data)) == 8


def test_a_name_that_is_not_utf8_gives_a_valid_key_and_a_readable_source(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        info = tarfile.TarInfo("n01440764_\udcff7.JPEG")  # the byte 0xff, which is not UTF-8
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    path = tmp_path / "n01440764.tar"
    path.write_bytes(buf.getvalue())
    assert b"n01440764_\xff7.JPEG" in path.read_bytes()
    (ref,) = index_tar_slice(TarSlice("train", str(path), 0, path.stat().st_size, "n01440764.tar", "n01440764"),
                             labeler())
    assert ref.key == "n01440764__7"
    assert ref.source == "n01440764.tar/n01440764_\\xff7.JPEG"  # the escape rule: \xNN for a byte that is not UTF-8
    ref.source.encode("utf-8")  # valid text: JSON and Parquet take it


def test_a_folder_entry_that_is_not_utf8_keeps_its_path_and_escapes_its_source(tmp_path):
    folder = tmp_path / "n01440764"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/n01440764_\xff7.JPEG"
    with open(raw, "wb") as f:
        f.write(b"abc")
    (ref,) = index_folder(FolderSlice("train", str(folder), "train/n01440764", "n01440764"), labeler())
    assert ref.key == "n01440764__7" and ref.source == "train/n01440764/n01440764_\\xff7.JPEG"
    with open(ref.archive, "rb") as f:  # the path to read is the real one
        assert f.read() == b"abc"


def test_a_file_named_like_a_folder_is_rejected_not_given_an_empty_key(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("n01440764_5/", "n01440764_6.JPEG"):
            info = tarfile.TarInfo(name)  # both regular files (type "0")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    path = tmp_path / "n01440764.tar"
    path.write_bytes(buf.getvalue())
    items = list(index_tar_slice(TarSlice("train", str(path), 0, len(buf.getvalue()), "n01440764.tar", "n01440764"),
                                 labeler()))
    assert [(type(i).__name__, i.key) for i in items] == [("Reject", "n01440764_5"), ("MemberRef", "n01440764_6")]
    assert items[0].reason == "not_a_file" and "gives no sample key" in items[0].detail
