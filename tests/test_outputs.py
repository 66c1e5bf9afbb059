"""Pure cores of the output stages: tar writer, duplicates, tables, manifest."""
import dataclasses
import io
import subprocess
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.index import duplicate_links, write_index_file, write_rejects_file
from transforms.layout import OutputLayout
from transforms.manifest import assemble_manifest, reconcile, write_manifest
from transforms.pieces import order_members
from transforms.records import Fact, HashEntry, MemberRef, Reject, RejectsFile, ShardInfo, SplitCount
from transforms.schema import INDEX_SCHEMA, NEAR_DUPLICATES_SCHEMA, REJECTS_SCHEMA, IndexRow
from transforms.shard_writer import ShardTarWriter

# The output contract other tools rely on (README "Output contract"): change it knowingly.
GOLDEN_INDEX_COLUMNS = [
    ("key", "string"), ("split", "string"), ("shard", "string"), ("offset", "int64"), ("size", "int64"),
    ("label", "int64"), ("wnid", "string"), ("width", "int32"), ("height", "int32"),
    ("orig_width", "int32"), ("orig_height", "int32"), ("orig_format", "string"), ("orig_mode", "string"),
    ("reencoded", "bool"), ("sha256", "string"), ("duplicate_of", "string"), ("exif_orientation", "int32"),
    ("boxes", "list<item: list<item: float>>"), ("source", "string"), ("has_boxes", "bool"),
    ("box_names", "list<item: string>"), ("loc_blacklisted", "bool"), ("label_disagrees", "bool"),
    ("fine_label", "int64"), ("fine_wnid", "string"), ("phash", "int64"), ("near_duplicate_of", "string"),
]


def test_index_schema_is_the_contract():
    assert [(f.name, str(f.type)) for f in INDEX_SCHEMA] == GOLDEN_INDEX_COLUMNS
    assert [f.name for f in dataclasses.fields(IndexRow)] == INDEX_SCHEMA.names
    assert REJECTS_SCHEMA.names == ["key", "split", "source", "reason", "detail"]
    assert all(f.type == pa.string() for f in REJECTS_SCHEMA)
    assert [(f.name, str(f.type)) for f in NEAR_DUPLICATES_SCHEMA] == [
        ("key_a", "string"), ("split_a", "string"), ("key_b", "string"), ("split_b", "string"), ("distance", "int32")]
    assert not INDEX_SCHEMA.field("phash").nullable and INDEX_SCHEMA.field("near_duplicate_of").nullable


def test_tar_writer_offsets_and_fixed_headers(tmp_path):
    buf = io.BytesIO()
    writer = ShardTarWriter(buf)
    payloads = {"a.jpg": b"x" * 1000, "a.cls": b"7", "b" * 120 + ".jpg": b"long name" * 3, "c.json": b""}
    offsets = {name: writer.add(name, data) for name, data in payloads.items()}
    size, digest = writer.close()
    data = buf.getvalue()
    assert size == len(data) and size % 512 == 0
    for name, data_ in payloads.items():
        assert data[offsets[name]:offsets[name] + len(data_)] == data_
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == list(payloads)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    listed = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert listed == list(payloads)


def _ref(key, offset=0, archive="a.tar"):
    return MemberRef(key, "train", archive, offset, 10, 0, "n01440764", f"{archive}/{key}.JPEG")


def test_order_members_is_by_hash_and_rejects_repeated_keys():
    refs = [_ref("k1"), _ref("k2"), _ref("k1", offset=512), _ref("k3")]
    kept, rejects = order_members(reversed(refs), seed=0)
    assert sorted(r.key for r in kept) == ["k1", "k2", "k3"]
    assert [r for r in kept if r.key == "k1"][0].offset == 0  # first by archive position wins
    assert [(r.key, r.reason) for r in rejects] == [("k1", "duplicate_key")]
    kept_again, _ = order_members(refs, seed=0)
    assert kept == kept_again  # input order does not matter
    other_seed, _ = order_members(refs, seed=1)
    assert {r.key for r in other_seed} == {r.key for r in kept}


def test_duplicate_links_point_to_the_key_that_sorts_first():
    group = [HashEntry("h", "n02_5", "train", 3), HashEntry("h", "ILSVRC2012_val_00000007", "val", 0),
             HashEntry("h", "n01_9", "train", 1)]
    assert sorted(duplicate_links(group)) == [
        ("train", 1, "n01_9", "ILSVRC2012_val_00000007"),
        ("train", 3, "n02_5", "ILSVRC2012_val_00000007"),
    ]
    assert duplicate_links([HashEntry("h", "only", "train", 0)]) == []


def _row(key, offset, sha="0" * 64):
    return IndexRow(key, "train", "train/train-000000.tar", offset, 5, 1, "n01443537", 4, 3, 4, 3, "JPEG", "RGB",
                    False, sha, None, None, (), f"x/{key}.JPEG", phash=offset)


def test_index_and_rejects_files_read_back(tmp_path):
    layout = OutputLayout(str(tmp_path))
    info = write_index_file(layout, "train", 0, [_row("b", 2048), _row("a", 512)], {"b": "a"})
    assert (info.path, info.rows, info.duplicates) == ("train/train-000000.parquet", 2, 1)
    table = pq.read_table(tmp_path / info.path)
    assert table.schema.equals(INDEX_SCHEMA)
    assert table.column("key").to_pylist() == ["a", "b"]  # in shard order
    assert table.column("duplicate_of").to_pylist() == [None, "a"]
    assert table.column("phash").to_pylist() == [512, 2048] and table.column("near_duplicate_of").null_count == 2
    rejects = [Reject("z", "val", "v.tar/z", "empty", "", "image"),
               Reject("a", "val", "v.tar/a", "truncated", "cut", "index")]
    rinfo = write_rejects_file(layout, "val", rejects)
    assert rinfo.by_reason == {"empty": 1, "truncated": 1}
    assert pq.read_table(tmp_path / rinfo.path).column("key").to_pylist() == ["a", "z"]


def _facts(read_train=3):
    return [
        Fact("read", SplitCount("train", read_train)),
        Fact("shard", ShardInfo("train", 1, "train/train-000001.tar", 1, 100, "b" * 64)),
        Fact("shard", ShardInfo("train", 0, "train/train-000000.tar", 1, 100, "a" * 64)),
        Fact("rejects", RejectsFile("train", "rejects/train-rejects.parquet", 1, {"empty": 1})),
    ]


def test_manifest_reconciles_and_orders_shards():
    manifest = assemble_manifest({"tool": {}}, _facts())
    assert reconcile(manifest) == []
    train = manifest["splits"]["train"]
    assert [s["path"] for s in train["shards"]] == ["train/train-000000.tar", "train/train-000001.tar"]
    assert (train["read"], train["samples"], train["rejected"]) == (3, 2, 1)
    assert manifest["rejects_by_reason"] == {"empty": 1}


def test_manifest_refuses_counts_that_do_not_add_up(tmp_path):
    manifest = assemble_manifest({}, _facts(read_train=4))
    assert reconcile(manifest)
    with pytest.raises(RuntimeError, match="reconcile"):
        write_manifest(OutputLayout(str(tmp_path)), manifest, 0.5)
    assert not list(tmp_path.iterdir())


def test_too_many_rejects_writes_a_failure_report_not_a_manifest(tmp_path):
    manifest = assemble_manifest({}, _facts())
    assert write_manifest(OutputLayout(str(tmp_path)), manifest, max_reject_rate=0.1) == "too_many_rejects"
    assert [p.name for p in tmp_path.iterdir()] == ["build-failed.json"]
    assert write_manifest(OutputLayout(str(tmp_path)), manifest, max_reject_rate=0.5) == "ok"
    assert (tmp_path / "manifest.json").exists()


def test_a_worker_with_other_codecs_refuses_to_start():
    from transforms.image import check_codecs, codec_versions

    check_codecs(codec_versions())  # the same build: fine
    with pytest.raises(RuntimeError, match="differ"):
        check_codecs({**codec_versions(), "pil": "12.1.1"})  # stock Pillow's version string


def test_an_unexpected_kernel_error_becomes_a_reject(tmp_path, monkeypatch):
    import transforms.processing as processing
    from transforms.assembly import write_shard
    from transforms.image import ImageOptions
    from transforms.records import ShardTask
    from transforms.storage import ArchiveReader

    archive = tmp_path / "a.bin"
    archive.write_bytes(b"0123456789")
    refs = [MemberRef("k", "train", str(archive), 0, 10, 0, "n01440764", "a.bin/k")]

    def explode(data, options):
        raise ZeroDivisionError("decoder bug")

    monkeypatch.setattr(processing, "process_image", explode)
    result = write_shard(ShardTask("train", 0), refs, ImageOptions(), OutputLayout(str(tmp_path)), 0,
                            ArchiveReader())
    assert result.shard.samples == 0
    assert [(r.reason, r.detail) for r in result.rejects] == [("corrupt", "ZeroDivisionError: decoder bug")]


@pytest.mark.parametrize("name", ["a.jpg", "n01440764_10026.jpg", "ILSVRC2012_val_00000001.json", "x" * 96 + ".cls",
                                  "y" * 97 + ".jpg", "z" * 101, "dog_\udcff.jpg"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 123_456, 10**9, 8**11 - 1, 8**11])
def test_tar_header_is_tarfiles_own(name, size):
    from transforms.shard_writer import _tar_header, _tarinfo_header

    assert _tar_header(name, size) == _tarinfo_header(name, size)


def test_digest_prefixes_are_the_first_8_bytes_of_each_hex_digest():
    import hashlib

    import numpy as np

    from transforms.index import digest_prefixes

    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(50)] + ["f" * 64, "0" * 64]
    expected = [int(d[:16], 16) for d in digests]
    chunked = pa.chunked_array([digests[:7], digests[7:]])
    for array in (pa.array(digests), pa.array(digests, pa.large_string()), chunked):
        assert digest_prefixes(array).tolist() == expected
    assert digest_prefixes(pa.array(digests).slice(3, 5)).tolist() == expected[3:8]  # an array with an offset
    assert digest_prefixes(pa.array([], pa.string())).dtype == np.uint64
    for bad in (["ab" * 31], ["A" * 64], ["g" * 64], [None]):  # not 64 lowercase hex digits
        with pytest.raises(ValueError, match="x.parquet"):
            digest_prefixes(pa.array(bad, pa.string()), "x.parquet")


@pytest.mark.parametrize("parts", [1, 2, 5])
def test_links_in_part_find_every_duplicate_across_shards_once(tmp_path, parts):
    import hashlib

    from transforms.index import links_in_part

    def row(key, split, content):
        return IndexRow(key, split, "t.tar", 512, 1, 0, "n01440764", 1, 1, 1, 1, "JPEG", "RGB", False,
                        hashlib.sha256(content).hexdigest(), None, None, (), key, phash=0)

    layout = OutputLayout(str(tmp_path))
    # 7 contents over 120 keys in 3 shards of two splits; one key is in both splits
    shards = {("train", i): [row(f"k{i}_{j}", "train", bytes([j % 7])) for j in range(40)] for i in range(2)}
    shards[("val", 0)] = [row(f"v_{j}", "val", bytes([j % 7])) for j in range(39)] + [row("k0_0", "val", b"\0")]
    # two digests that share their first 8 bytes and differ after them: not duplicates
    twin = hashlib.sha256(b"twin").hexdigest()
    shards[("train", 0)].append(dataclasses.replace(row("t1", "train", b""), sha256=twin))
    shards[("train", 1)].append(dataclasses.replace(row("t2", "train", b""), sha256=twin[:16] + "0" * 48))
    urls = []
    for (split, shard_id), rows in shards.items():
        index = write_index_file(layout, split, shard_id, rows, {})
        urls.append((split, shard_id, layout.url(index.path)))
    found = [link for part in range(parts) for link in links_in_part(urls, part, parts)]
    every = [(r.key, r.split, shard_id, r.sha256) for (_, shard_id), rows in shards.items() for r in rows]
    expected = []
    for content in range(7):
        sha = hashlib.sha256(bytes([content])).hexdigest()
        group = sorted((key, split, shard_id) for key, split, shard_id, digest in every if digest == sha)
        expected += [(split, shard_id, key, group[0][0]) for key, split, shard_id in group[1:]]
    assert sorted(found) == sorted(expected) and len(found) == len(every) - 2 - 7  # each link once
    assert ("val", 0, "k0_0", "k0_0") in found  # the same key in two splits: the val one points to train's
