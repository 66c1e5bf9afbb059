"""A shard made in pieces (cut, process each piece, assemble) is the shard made whole, byte for
byte, whatever the piece size; the pieces are scratch that goes away; a retried assembly reports
what it wrote."""
import io
import os
import pickle
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from transforms.assembly import assemble_shard, process_piece, write_shard
from transforms.image import ImageOptions, ResizeSpec, codec_versions, process_image
from transforms.layout import PIECES_DIR, OutputLayout
from transforms.pieces import PIECE_SAMPLES, cut_shard, even_cut, small_pieces
from transforms.records import BoxesRef, MemberRef, ShardMembers, ShardTask
from transforms.storage import ArchiveReader
from transforms.write_shards import WriteShards

OPTIONS = ImageOptions(resize=ResizeSpec.parse("shorter:32"))


def _photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48 + seed % 5, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def members(tmp_path):
    """An archive of 11 members (9 photos, a truncated one, an HTML page), their MemberRefs, and
    boxes for two of them plus one for a key that is not in the shard."""
    payloads = [(f"n01440764_{i}", _photo(i)) for i in range(9)]
    payloads += [("n01440764_90", _photo(90)[:300]), ("n01440764_91", b"<html>404</html>")]
    archive = tmp_path / "class.tar"
    with tarfile.open(archive, "w") as tar:
        for key, data in payloads:
            info = tarfile.TarInfo(f"{key}.JPEG")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    refs = []
    with tarfile.open(archive) as tar:
        for m in tar:
            key = m.name[:-len(".JPEG")]
            refs.append(MemberRef(key, "train", str(archive), m.offset_data, m.size, 0, "n01440764", f"class/{m.name}"))
    boxes = {k: BoxesRef(k, "train", ((0.1, 0.2, 0.5, 0.6),), ("n01440764",), 0, f"b/{k}")
             for k in ("n01440764_2", "n01440764_7", "n01440764_missing")}
    return refs, boxes


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def test_cut_shard_makes_even_pieces_in_shard_order_with_their_boxes(members):
    refs, boxes = members
    refs = refs + [refs[3]]  # a repeated key: set aside, not in any piece
    cut = cut_shard(ShardTask("train", 4), refs, seed=0, boxes=boxes, cut=even_cut(3))
    assert [len(p.members) for p in cut.pieces] == [3, 4, 4]  # 11 kept members in 3 pieces, as even as can be
    assert [(p.task.split, p.task.shard_id, p.task.piece, p.task.pieces) for p in cut.pieces] == [
        ("train", 4, i, 3) for i in range(3)]
    whole = cut_shard(ShardTask("train", 4), refs, seed=0, boxes=boxes, cut=even_cut(1))
    # the pieces, in order, are the shard
    assert tuple(r for p in cut.pieces for r in p.members) == whole.pieces[0].members
    assert {k for p in cut.pieces for k in p.boxes} == {"n01440764_2", "n01440764_7"}
    assert all(set(p.boxes) <= {r.key for r in p.members} for p in cut.pieces)  # each piece has its own boxes
    assert [r.reason for r in cut.rejects] == ["duplicate_key"] and cut.orphan_annotations == 1
    empty = cut_shard(ShardTask("val", 0), [], seed=0, cut=even_cut(4))
    # an empty shard still gets a file
    assert [(p.task.piece, p.task.pieces, p.members) for p in empty.pieces] == [(0, 1, ())]
    assert len(cut_shard(ShardTask("train", 4), refs, seed=0, cut=even_cut(50)).pieces) == 11  # never an empty piece


def test_small_pieces_for_runners_that_scale_out():
    assert small_pieces(5000) == [i * 5000 // 40 for i in range(40)]  # ceil(5000 / 128) = 40 pieces
    assert small_pieces(PIECE_SAMPLES) == [0] and small_pieces(PIECE_SAMPLES + 1) == [0, 64] and small_pieces(0) == [0]


def test_cut_shard_refuses_a_cut_that_is_not_one(members):
    refs, _ = members
    for starts in ([1, 5], [0, 5, 5], [0, 11], []):
        with pytest.raises(ValueError, match="cannot cut 11 members"):
            cut_shard(ShardTask("train", 0), refs, 0, cut=lambda n, s=starts: s)


KEEP = ImageOptions(resize=ResizeSpec.parse("longer:512"))  # these sources are kept byte for byte


@pytest.mark.parametrize("options", [OPTIONS, KEEP], ids=["reencoded", "kept"])
@pytest.mark.parametrize("pieces", [2, 4, 11])
def test_any_number_of_pieces_makes_the_same_shard_byte_for_byte(members, tmp_path, pieces, options):
    refs, boxes = members
    results = {}
    for count in (1, pieces):
        out = tmp_path / f"out-{count}"
        results[count] = write_shard(ShardTask("train", 0), refs, options, OutputLayout(str(out)), 0,
                                     ArchiveReader(), boxes=boxes, pieces=count)
        assert not (out / PIECES_DIR).exists() or not os.listdir(out / PIECES_DIR)  # staged pieces removed
    whole, cut = _files(tmp_path / "out-1"), _files(tmp_path / f"out-{pieces}")
    assert whole.keys() == cut.keys() == {"train/train-000000.tar", "train/train-000000.idx",
                                          "train/train-000000.parquet"}
    assert whole == cut
    a, b = results[1], results[pieces]
    assert a.shard == b.shard and a.index == b.index and a.rows == b.rows
    assert sorted(r.reason for r in b.rejects) == ["not_an_image", "truncated"] and b.orphan_annotations == 1
    assert b.shard.samples == 9 == len(b.rows)
    shard = whole["train/train-000000.tar"]
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:  # a reader sees sample after sample, in shard order
        names = tar.getnames()
    assert names == [f"{r.key}.{ext}" for r in a.rows for ext in ("jpg", "cls", "json")]
    table = pq.read_table(io.BytesIO(whole["train/train-000000.parquet"])).to_pylist()
    sources = {r.key: r for r in refs}
    archive = open(refs[0].archive, "rb").read()
    for row in table:  # offsets index the assembled tar, not the pieces
        payload = shard[row["offset"]:row["offset"] + row["size"]]
        assert Image.open(io.BytesIO(payload)).size == (row["width"], row["height"])
        src = sources[row["key"]]
        assert row["reencoded"] == (options is OPTIONS)
        if not row["reencoded"]:  # a kept JPEG is the source, byte for byte, staged or not
            assert payload == archive[src.offset:src.offset + src.size]


def test_a_retried_assembly_reports_the_shard_it_wrote(members, tmp_path):
    refs, boxes = members
    layout = OutputLayout(str(tmp_path / "out"))
    cut = cut_shard(ShardTask("train", 0), refs, 0, boxes, cut=even_cut(3))
    pieces = [process_piece(p, OPTIONS, layout, ArchiveReader()) for p in cut.pieces]
    first = assemble_shard(ShardTask("train", 0), pieces, layout, ArchiveReader())
    written = _files(tmp_path / "out")
    again = assemble_shard(ShardTask("train", 0), pieces, layout, ArchiveReader())  # its pieces are gone now
    assert _files(tmp_path / "out") == written
    # what the stage emits from it: the shard's and index's facts, and the rows (with their digests)
    assert (again.shard, again.index) == (first.shard, first.index)
    assert [(r.key, r.sha256, r.phash) for r in again.rows] == [(r.key, r.sha256, r.phash) for r in first.rows]
    assert [(r.key, r.offset, r.size) for r in again.rows] == [(r.key, r.offset, r.size) for r in first.rows]


class _FailingOnce(ArchiveReader):
    """A reader that fails once, at its n-th read (a worker losing its disk or network)."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.reads, self.fail_at = 0, fail_at

    def read(self, archive, offset, size):
        self.reads += 1
        if self.reads == self.fail_at:
            raise OSError("injected: the read failed")
        return super().read(archive, offset, size)


@pytest.mark.parametrize("pieces", [1, 3])
def test_a_shard_writer_that_fails_on_its_first_attempt_gives_the_same_files_when_retried(members, tmp_path, pieces):
    refs, boxes = members
    clean = write_shard(ShardTask("train", 0), refs, OPTIONS, OutputLayout(str(tmp_path / "clean")), 0,
                        ArchiveReader(), boxes=boxes, pieces=pieces)
    layout = OutputLayout(str(tmp_path / "out"))
    with pytest.raises(OSError, match="injected"):  # the first attempt dies in the middle of the shard
        write_shard(ShardTask("train", 0), refs, OPTIONS, layout, 0, _FailingOnce(fail_at=6), boxes=boxes,
                    pieces=pieces)
    # the runner retries the work on the same output folder
    again = write_shard(ShardTask("train", 0), refs, OPTIONS, layout, 0, ArchiveReader(), boxes=boxes, pieces=pieces)
    assert (again.shard, again.index, again.rejects) == (clean.shard, clean.index, clean.rejects)
    assert _files(tmp_path / "out") == _files(tmp_path / "clean")  # byte for byte, and no temporary file left


def test_assembly_refuses_missing_pieces(members, tmp_path):
    refs, _ = members
    layout = OutputLayout(str(tmp_path / "out"))
    cut = cut_shard(ShardTask("train", 0), refs, 0, cut=even_cut(3))
    pieces = [process_piece(p, OPTIONS, layout, ArchiveReader()) for p in cut.pieces]
    with pytest.raises(RuntimeError, match="pieces"):
        # piece 0 never reached the writer
        assemble_shard(ShardTask("train", 0), pieces[1:], layout, ArchiveReader())
    os.remove(layout.url(pieces[0].path))
    with pytest.raises(RuntimeError, match="never written"):
        assemble_shard(ShardTask("train", 0), pieces, layout, ArchiveReader())


@pytest.mark.parametrize("local_workers, min_piece, staged", [(None, 32, False), (1, 1, False), (2, 32, False),
                                                              (2, 1, True)])
@pytest.mark.beam
def test_write_shards_in_beam_matches_the_whole_shard(members, tmp_path, monkeypatch, local_workers, min_piece,
                                                      staged):
    """None (runners that scale out): pieces of PIECE_SAMPLES, here one, written whole. 1 worker:
    never cut. 2 workers: two segments of 5.5 members, the 11-member shard 0 is cut at member 5,
    unless MIN_PIECE_SAMPLES forbids pieces that small (32: it is written whole)."""
    import transforms.segments as segments

    monkeypatch.setattr(segments, "MIN_PIECE_SAMPLES", min_piece)
    refs, boxes = members
    write_shard(ShardTask("train", 0), refs, OPTIONS, OutputLayout(str(tmp_path / "whole")), 0, ArchiveReader(),
                boxes=boxes)
    out = tmp_path / "beam"
    with TestPipeline() as p:
        tasks = p | beam.Create([ShardMembers(ShardTask("train", 0), refs, list(boxes.values())),
                                 ShardMembers(ShardTask("train", 1), [], [])])
        sizes = p | "Sizes" >> beam.Create([(("train", 0), 11)])
        written = {"tasks": tasks, "sizes": sizes} | WriteShards(OPTIONS, str(out), 0, codec_versions(),
                                                                 local_workers=local_workers)
        assert_that(written["shards"] | beam.Map(lambda s: (s.path, s.samples)),
                    equal_to([("train/train-000000.tar", 9), ("train/train-000001.tar", 0)]), label="shards")
        assert_that(written["index"] | beam.Map(lambda i: (i.path, i.rows, i.with_boxes)),
                    equal_to([("train/train-000000.parquet", 9, 2), ("train/train-000001.parquet", 0, 0)]),
                    label="index")
        assert_that(written["rejects"] | beam.Map(lambda r: r.reason), equal_to(["not_an_image", "truncated"]),
                    label="rejects")
        assert_that(written["orphans"], equal_to([("train", 1)]), label="orphans")
    files = _files(out)
    assert (out / PIECES_DIR).exists() == staged  # made only when a shard was cut
    assert not (out / PIECES_DIR).exists() or not os.listdir(out / PIECES_DIR)
    assert files["train/train-000000.tar"] == _files(tmp_path / "whole")["train/train-000000.tar"]
    assert files["train/train-000000.parquet"] == _files(tmp_path / "whole")["train/train-000000.parquet"]
    with tarfile.open(out / "train" / "train-000001.tar") as tar:
        assert tar.getnames() == []  # the empty shard exists, and is an empty tar


@pytest.mark.beam
def test_write_shards_in_beam_stages_and_assembles_pieces(members, tmp_path, monkeypatch):
    import transforms.pieces as pieces

    monkeypatch.setattr(pieces, "PIECE_SAMPLES", 3)  # 11 members -> 4 pieces, staged then assembled
    refs, boxes = members
    write_shard(ShardTask("train", 0), refs, OPTIONS, OutputLayout(str(tmp_path / "whole")), 0, ArchiveReader(),
                boxes=boxes)
    out = tmp_path / "beam"
    with TestPipeline() as p:
        tasks = p | beam.Create([ShardMembers(ShardTask("train", 0), refs, list(boxes.values()))])
        written = {"tasks": tasks} | WriteShards(OPTIONS, str(out), 0, codec_versions())
        assert_that(written["shards"] | beam.Map(lambda s: (s.path, s.samples)),
                    equal_to([("train/train-000000.tar", 9)]), label="shards")
        assert_that(written["rejects"] | beam.Map(lambda r: r.reason), equal_to(["not_an_image", "truncated"]),
                    label="rejects")
    assert os.path.isdir(out / PIECES_DIR) and not os.listdir(out / PIECES_DIR)  # staged, then removed
    files = _files(out)
    assert files.pop(OutputLayout.done("train", 0))  # the record a rerun resumes from (scratch: see checkpoints)
    assert files == _files(tmp_path / "whole")


@pytest.mark.parametrize("piece_samples", [3, 128], ids=["pieces", "whole"])
@pytest.mark.beam
def test_a_rerun_of_write_shards_reports_completed_shards_without_making_them_again(members, tmp_path, monkeypatch,
                                                                                    piece_samples):
    import transforms.pieces as pieces
    import transforms.write_shards as write_shards

    monkeypatch.setattr(pieces, "PIECE_SAMPLES", piece_samples)
    refs, boxes = members
    out = tmp_path / "beam"

    def run() -> dict:
        with TestPipeline() as p:
            tasks = p | beam.Create([ShardMembers(ShardTask("train", 0), refs, list(boxes.values()))])
            written = {"tasks": tasks} | WriteShards(OPTIONS, str(out), 0, codec_versions())
            facts = (written["shards"], written["index"], written["rejects"]) | beam.Flatten()
            _ = facts | beam.combiners.ToList() | beam.Map(
                lambda found: (tmp_path / "facts.pkl").write_bytes(pickle.dumps(sorted(map(repr, found)))))
        return pickle.loads((tmp_path / "facts.pkl").read_bytes())

    first, files = run(), _files(out)

    def not_again(*args, **kwargs):
        raise AssertionError("a completed shard was made again")

    monkeypatch.setattr(write_shards, "write_whole_shard", not_again)
    monkeypatch.setattr(write_shards, "process_piece", not_again)
    assert run() == first and _files(out) == files


def test_a_kept_jpeg_is_staged_as_its_place_in_the_archive(members, tmp_path):
    refs, _ = members
    layout = OutputLayout(str(tmp_path / "out"))
    cut = cut_shard(ShardTask("train", 0), refs, 0, cut=even_cut(2))
    sizes = {}
    for options, name in ((KEEP, "kept"), (OPTIONS, "reencoded")):
        staged = [process_piece(p, options, layout, ArchiveReader()) for p in cut.pieces]
        sizes[name] = sum(os.path.getsize(layout.url(p.path)) for p in staged)
    kept_bytes = sum(r.size for r in refs[:9])  # the 9 photos, which KEEP stores as they are
    assert sizes["kept"] < kept_bytes / 4  # rows and archive ranges, not the JPEGs
    reader = ArchiveReader()
    reencoded = sum(len(process_image(reader.read(r.archive, r.offset, r.size), OPTIONS).jpeg) for r in refs[:9])
    assert sizes["reencoded"] > reencoded  # re-encoded JPEGs are staged themselves
