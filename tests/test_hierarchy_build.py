"""The WordNet hierarchy in a build: the manifest's class facts, subtree entries in --classes,
coarse labels (--label-level) and --min-per-class, checked on real builds of the sample release
(whose classes are real ILSVRC2012 WNIDs) and on its ImageNet-21k layout."""
import collections
import json

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import build, run_cli

from pipeline.sample import export_layout
from transforms.classes import (
    ClassFilter,
    class_record,
    coarse_classes,
    filter_batch,
    keep_plan,
    select_classes,
    without_dropped_classes,
)
from transforms.hierarchy import ROOT, wordnet_hierarchy
from transforms.labels import ClassInfo, Labeler, Labelled, imagenet_classes, label_of
from transforms.records import ClassCount, MemberRef, SourceError
from transforms.release_files import read_class_entries

pytestmark = pytest.mark.inputs  # see pytest.ini

DOG, SNAKE = "n02084071", "n01726692"
ARTIFACT, ANIMAL, FORMATION = "n00021939", "n00015388", "n09287968"  # artifact, animal, geological formation
CHIHUAHUA, TOY_DOG = "n02085620", "n02085374"
SHEEPDOG, SHEPHERD_DOG = "n02105855", "n02104523"  # Shetland sheepdog, shepherd dog
ACCORDION = "n02672831"  # an ILSVRC2012 class with two hypernyms
BENTHOS = "n00005787"  # an ImageNet-21k class with no ILSVRC2012 class under it
# The classes of the conftest release (the first six distinct WNIDs of the real val ground truth):
# garter snake, sea snake, Shetland sheepdog, cradle, soup bowl, alp.
SAMPLE_CLASSES = ["n01735189", "n01751748", SHEEPDOG, "n03125729", "n04263257", "n09193705"]
SNAKES = ["n01735189", "n01751748"]


def _rows(b, split):
    return pq.read_table([str(b.path(p)) for p in b.manifest["splits"][split]["index"]]).to_pylist()


def _reconciles(manifest):
    return all(s["read"] == s["samples"] + s["rejected"] for s in manifest["splits"].values())


# --- the pure parts ---------------------------------------------------------------------

def test_class_record_carries_the_chihuahua_path():
    record = class_record(ClassInfo(151, CHIHUAHUA, "Chihuahua"))
    assert record["parents"] == [TOY_DOG] and record["lemmas"] == ["Chihuahua"]
    assert {TOY_DOG, DOG, ROOT} <= set(record["ancestors"]) and record["ancestors"] == sorted(record["ancestors"])
    assert record["depth"] == wordnet_hierarchy().synset(CHIHUAHUA).depth and "Mexico" in record["gloss"]
    accordion = class_record(ClassInfo(0, ACCORDION, "accordion"))
    assert accordion["parents"] == list(wordnet_hierarchy().synset(ACCORDION).parents)
    assert len(accordion["parents"]) == 2
    # An ImageFolder class that is not a WNID: the same fields, null.
    assert class_record(ClassInfo(0, "cat", "cat")) == {"label": 0, "wnid": "cat", "name": "cat", "lemmas": None,
                                                        "gloss": None, "parents": None, "depth": None,
                                                        "ancestors": None}
    assert class_record(ClassInfo(0, BENTHOS, ""))["name"] == "benthos"  # 21k classes are named by their lemma


def test_select_classes_expands_subtrees_and_counts_each_entry():
    known = [c.wnid for c in imagenet_classes()]
    chosen, matched = select_classes([f"{DOG}+", CHIHUAHUA, ACCORDION, f"{SNAKE}+"], known)
    assert matched == ((f"{DOG}+", 118), (CHIHUAHUA, 1), (ACCORDION, 1), (f"{SNAKE}+", 17))
    assert len(chosen) == 118 + 1 + 17 and list(chosen) == sorted(chosen) and CHIHUAHUA in chosen
    # plain names still work for ImageFolder classes
    assert select_classes(["cat"], ["cat", "dog"]) == (("cat",), (("cat", 1),))
    with pytest.raises(SourceError, match=rf"{BENTHOS}\+ matches none"):
        select_classes([f"{BENTHOS}+"], known)
    with pytest.raises(SourceError, match=r"n99999999\+: 'n99999999' is not a WordNet noun synset"):
        select_classes(["n99999999+"], known)
    with pytest.raises(SourceError, match=r"1 classes this dataset does not have, e\.g\. n99999999 \(n99999999 "):
        select_classes(["n99999999", f"{DOG}+"], known)


def test_read_class_entries_takes_a_file_or_a_list(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(f"# dogs and one fish\n{DOG}+ dogs\nn01440764\n")
    assert read_class_entries(str(path)) == [f"{DOG}+", "n01440764"]
    assert read_class_entries(f"{DOG}+, n01440764") == [f"{DOG}+", "n01440764"]
    with pytest.raises(SourceError, match="no such file"):
        read_class_entries(str(tmp_path / "missing.txt"))


def test_coarse_classes_in_list_order_and_their_errors():
    classes = [c for c in imagenet_classes() if c.wnid in SAMPLE_CLASSES]
    coarse, mapping = coarse_classes(classes, [ARTIFACT, ANIMAL, FORMATION])
    assert [(c.label, c.wnid, c.name) for c in coarse] == [(0, ARTIFACT, "artifact"), (1, ANIMAL, "animal"),
                                                           (2, FORMATION, "geological formation")]
    assert mapping == {"n01735189": ANIMAL, "n01751748": ANIMAL, SHEEPDOG: ANIMAL, "n03125729": ARTIFACT,
                       "n04263257": ARTIFACT, "n09193705": FORMATION}
    with pytest.raises(SourceError, match=r"3 classes are under none of the coarse classes: n03125729, n04263257, "
                                          r"n09193705 \(leave them out with --classes"):
        coarse_classes(classes, [ANIMAL])
    with pytest.raises(SourceError, match=r"2 classes are under several coarse classes: n01735189 under n00015388 and "
                                          r"n01726692, n01751748 .*--label-level-on-several"):
        coarse_classes(classes, [ARTIFACT, ANIMAL, FORMATION, SNAKE])
    assert coarse_classes(classes, [ARTIFACT, ANIMAL, FORMATION, SNAKE], "deepest")[1]["n01735189"] == SNAKE
    assert coarse_classes(classes, [ARTIFACT, ANIMAL, FORMATION, SNAKE], "first")[1]["n01735189"] == ANIMAL
    with pytest.raises(SourceError, match="not WordNet noun synsets of ImageNet: n99999999"):
        coarse_classes(classes, ["n99999999"])
    with pytest.raises(SourceError, match="needs classes that are WordNet synsets"):
        coarse_classes([ClassInfo(0, "cat", "cat")], [ANIMAL])


def test_the_labeler_gives_the_coarse_label_and_keeps_the_fine_one():
    labeler = Labeler({SHEEPDOG: 230}, {}, frozenset({"train"}), coarse={SHEEPDOG: (1, ANIMAL)})
    assert labeler.classify("train", "k", SHEEPDOG) == Labelled(1, ANIMAL, 230, SHEEPDOG)
    assert labeler.classify("test", "k", None) == Labelled(-1, None)


def _ref(key, wnid, label, split="train", fine=None):
    fine_label, fine_wnid = fine or (None, None)
    return MemberRef(key, split, "a.tar", 0, 10, label, wnid, f"a.tar/{key}", fine_label, fine_wnid)


def test_keep_plan_drops_small_classes_and_compacts_the_labels():
    spec = ClassFilter(3, ("a", "b", "c", "empty"), relabel=True)
    plan = keep_plan({"a": 3, "b": 2, "c": 5}, spec)
    assert plan.dropped == (ClassCount("b", 2), ClassCount("empty", 0)) and plan.labels == {"a": 0, "c": 1}
    batch = [_ref("a1", "a", 7), _ref("b1", "b", 8, "val"), _ref("c1", "c", 9), _ref("t", None, -1, "test")]
    kept, left_out = filter_batch(batch, plan)
    assert [(r.key, r.label) for r in kept] == [("a1", 0), ("c1", 1), ("t", -1)] and left_out == {"val": 1}
    # Under coarse labels the fine label is the one compacted; the coarse one stays.
    kept, _ = filter_batch([_ref("c2", "coarse", 4, fine=(9, "c"))], plan)
    assert (kept[0].label, kept[0].wnid, kept[0].fine_label, kept[0].fine_wnid) == (4, "coarse", 1, "c")
    assert keep_plan({"a": 3}, ClassFilter(3, ("a",))).labels is None


def test_the_manifest_lists_dropped_classes_and_relabels_the_rest():
    header = {"config": {"relabel": True}, "classes": [{"label": 5, "wnid": "a", "name": "A"},
                                                       {"label": 6, "wnid": "b", "name": "B"},
                                                       {"label": 7, "wnid": "c", "name": "C"}]}
    out = without_dropped_classes(header, [ClassCount("b", 2)])
    assert out["classes"] == [{"label": 0, "wnid": "a", "name": "A"}, {"label": 1, "wnid": "c", "name": "C"}]
    assert out["dropped_classes"] == [{"wnid": "b", "name": "B", "images": 2}]
    assert without_dropped_classes(header, []) == {**header, "dropped_classes": []}


# --- real builds -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_classes(release):
    assert release.classes == SAMPLE_CLASSES, "the sample generator changed its classes: update this file"
    return release.classes


@pytest.mark.e2e
def test_subtree_build_keeps_every_class_under_the_entry(release, sample_classes, tmp_path):
    b = build(release, tmp_path / "out", "--classes", f"{DOG}+,{SNAKE}+,{ACCORDION}", "--splits", "train,val")
    assert f"classes: {DOG}+ matched 118, {SNAKE}+ matched 17, {ACCORDION} matched 1" in b.proc.stderr
    m = b.manifest
    listed = {c["wnid"]: c for c in m["classes"]}
    assert len(listed) == 118 + 17 + 1 and CHIHUAHUA in listed
    assert [c["label"] for c in m["classes"]] == sorted(label_of(w) for w in listed)  # the full index
    present = {SHEEPDOG, *SNAKES}
    for split in ("train", "val"):
        rows = _rows(b, split)
        expected = {k for k, e in release.expected[split].items() if e.outcome == "kept" and e.wnid in present}
        assert {r["key"] for r in rows} == expected
        assert all(r["fine_label"] == r["label"] == label_of(r["wnid"]) and r["fine_wnid"] == r["wnid"] for r in rows)
        assert m["splits"][split]["left_out"] > 0
    assert _reconciles(m)
    # the manifest's classes carry the hierarchy: the Chihuahua path, and a class the sample has
    chihuahua, sheepdog = listed[CHIHUAHUA], listed[SHEEPDOG]
    assert chihuahua["parents"] == [TOY_DOG] and {TOY_DOG, DOG, ROOT} <= set(chihuahua["ancestors"])
    assert sheepdog["parents"] == [SHEPHERD_DOG] and sheepdog["lemmas"][0] == "Shetland sheepdog"
    assert {SHEPHERD_DOG, DOG, ROOT} <= set(sheepdog["ancestors"]) and sheepdog["ancestors"] == sorted(
        sheepdog["ancestors"])
    assert sheepdog["depth"] == wordnet_hierarchy().synset(SHEEPDOG).depth and sheepdog["gloss"]
    assert len(listed[ACCORDION]["parents"]) == 2


@pytest.mark.e2e
def test_coarse_labels_in_every_sample_and_the_fine_ones_in_the_index(release, sample_classes, tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(sample_classes) + "\n")
    (tmp_path / "coarse.txt").write_text(f"# three coarse classes\n{ARTIFACT}\n{ANIMAL}\n{FORMATION}\n")
    b = build(release, tmp_path / "out", "--classes", tmp_path / "classes.txt", "--label-level",
              tmp_path / "coarse.txt")
    m = b.manifest
    assert [(c["label"], c["wnid"], c["name"]) for c in m["classes"]] == [
        (0, ARTIFACT, "artifact"), (1, ANIMAL, "animal"), (2, FORMATION, "geological formation")]
    assert m["classes"][1]["parents"] and m["classes"][1]["ancestors"]
    coarse = {"n01735189": 1, "n01751748": 1, SHEEPDOG: 1, "n03125729": 0, "n04263257": 0, "n09193705": 2}
    fine = {c["wnid"]: c for c in m["fine_classes"]}
    assert {w: (c["label"], c["coarse_label"], c["coarse_wnid"]) for w, c in fine.items()} == {
        w: (label_of(w), coarse[w], m["classes"][coarse[w]]["wnid"]) for w in sample_classes}
    assert m["config"]["label_level"] == str(tmp_path / "coarse.txt")
    for split in ("train", "val", "test"):
        rows = {r["key"]: r for r in _rows(b, split)}
        kept = {k: e for k, e in release.expected[split].items() if e.outcome == "kept"}
        assert set(rows) == set(kept)
        for key, e in kept.items():
            r = rows[key]
            assert (r["fine_label"], r["fine_wnid"]) == (e.label, e.wnid), key
            if e.wnid is None:  # the test split
                assert (r["label"], r["wnid"]) == (-1, None)
            else:
                assert (r["label"], r["wnid"]) == (coarse[e.wnid], m["classes"][coarse[e.wnid]]["wnid"]), key
            assert r["label_disagrees"] == e.label_disagrees, key  # compared with the fine class
        seen = 0
        for sample in wds.WebDataset([str(p) for p in b.shard_paths(split)], shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            assert int(sample["cls"]) == rows[sample["__key__"]]["label"] == meta["label"]
            assert (meta["fine_label"], meta["fine_wnid"]) == (kept[sample["__key__"]].label,
                                                              kept[sample["__key__"]].wnid or "")  # "" for null
            seen += 1
        assert seen == len(kept)
    assert _reconciles(m)


@pytest.mark.e2e
def test_coarse_label_errors_name_the_classes(release, sample_classes, tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(sample_classes) + "\n")
    (tmp_path / "animals.txt").write_text(f"{ANIMAL}\n")
    proc = run_cli("build", release.root, "--out", tmp_path / "a", "--classes", tmp_path / "classes.txt",
                   "--label-level", tmp_path / "animals.txt")
    assert proc.returncode == 2, proc.stderr
    assert "3 classes are under none of the coarse classes: n03125729, n04263257, n09193705" in proc.stderr
    several = tmp_path / "several.txt"
    several.write_text(f"{ARTIFACT}\n{ANIMAL}\n{FORMATION}\n{SNAKE}\n")
    proc = run_cli("build", release.root, "--out", tmp_path / "b", "--classes", tmp_path / "classes.txt",
                   "--label-level", several)
    assert proc.returncode == 2, proc.stderr
    assert f"n01735189 under {ANIMAL} and {SNAKE}, n01751748 under {ANIMAL} and {SNAKE}" in proc.stderr
    assert "--label-level-on-several" in proc.stderr
    # told how to resolve it, the snakes take their nearest listed ancestor
    b = build(release, tmp_path / "c", "--classes", tmp_path / "classes.txt", "--label-level", several,
              "--label-level-on-several", "deepest", "--splits", "train")
    labels = {r["fine_wnid"]: r["label"] for r in _rows(b, "train")}
    assert labels["n01735189"] == labels["n01751748"] == 3 and labels[SHEEPDOG] == 1


@pytest.mark.e2e
@pytest.mark.parametrize("entry", [f"{BENTHOS}+", "n99999999+", "no-such-file.txt"])
def test_a_class_entry_that_selects_nothing_is_a_usage_error(release, tmp_path, entry):
    proc = run_cli("build", release.root, "--out", tmp_path / "o", "--classes", entry)
    assert proc.returncode == 2 and entry in proc.stderr, proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("relabel", [False, True])
def test_min_per_class_drops_the_small_in21k_classes(release, tmp_path, relabel):
    copy = export_layout(release, tmp_path / "src", "in21k_folder")
    # A class's count is of its members once indexed (before any image is decoded), over the
    # splits built: train and the val held out of it.
    counts = collections.Counter(e.wnid for e in copy.expected["train"].values() if e.outcome != "not_a_file")
    n = 11
    small = sorted(w for w, c in counts.items() if c < n)
    kept_classes = sorted(w for w, c in counts.items() if c >= n)
    assert small and kept_classes  # the fixture has classes on both sides
    b = build(copy, tmp_path / "out", "--min-per-class", str(n), "--val-per-class", "2",
              *(["--relabel"] if relabel else []))
    m = b.manifest
    names = {c.wnid: c.name for c in imagenet_classes()}
    assert m["dropped_classes"] == [{"wnid": w, "name": names[w], "images": counts[w]} for w in small]
    assert [c["wnid"] for c in m["classes"]] == kept_classes
    labels = {c["wnid"]: c["label"] for c in m["classes"]}
    full = {w: i for i, w in enumerate(copy.classes)}
    assert labels == ({w: i for i, w in enumerate(kept_classes)} if relabel else {w: full[w] for w in kept_classes})
    assert m["config"]["min_per_class"] == n
    rows = _rows(b, "train") + _rows(b, "val")
    assert {r["wnid"] for r in rows} == set(kept_classes)
    assert all(r["label"] == labels[r["wnid"]] == r["fine_label"] for r in rows)
    kept = {k for k, e in copy.expected["train"].items() if e.outcome == "kept" and e.wnid in kept_classes}
    assert {r["key"] for r in rows} == kept
    # the members of the dropped classes are left out, as --classes leaves classes out: not read
    assert sum(s["left_out"] for s in m["splits"].values()) == sum(counts[w] for w in small)
    assert m["splits"]["val"]["left_out"] == 2 * len(small)
    assert _reconciles(m)
    assert "too_few" not in json.dumps(m["rejects_by_reason"])
    assert f"classes left out by --min-per-class: {len(small)} with {sum(counts[w] for w in small)} images" \
        in b.proc.stderr
