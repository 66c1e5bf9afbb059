"""The WordNet hierarchy (transforms/hierarchy.py), tested against the real WordNet 3.0 data.

The tests of the bundled table need nothing but the project. The ones that compare it with
WordNet's own data.noun, or that run the generator, are skipped where Debian's package
`wordnet-base` is not installed.
"""
import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from transforms.hierarchy import (
    IN1K,
    IN21K,
    ROOT,
    BadClassEntry,
    ClassEntry,
    CoarseLabelError,
    HierarchyError,
    UnknownWnid,
    parse_class_entry,
    parse_table,
    wordnet_hierarchy,
)
from transforms.labels import imagenet_classes

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "transforms" / "data" / "wordnet_hierarchy.tsv.gz"
WORDNET = Path("/usr/share/wordnet")
DATA_NOUN = WORDNET / "data.noun"
GENERATOR = REPO / "tools" / "make_hierarchy_table.py"
IN21K_LIST = Path("/work/shared/imagenet/in21k/timm_imagenet21k_goog_synsets.txt")

CHIHUAHUA, TOY_DOG, DOG, CANINE, DOMESTIC_ANIMAL = "n02085620", "n02085374", "n02084071", "n02083346", "n01317541"
ACCORDION, FREE_REED, KEYBOARD_INSTRUMENT = "n02672831", "n03393324", "n03614532"
TANK = "n04389033"  # under three parents: military vehicle, armored vehicle, tracked vehicle
CAT, ANIMAL, ARTIFACT = "n02121808", "n00015388", "n00021939"
BASEBALL, BALL, BASEBALL_EQUIPMENT = "n02799071", "n02778669", "n02799897"  # two parents at depth 8
TABBY = "n02123045"

needs_wordnet = pytest.mark.skipif(not DATA_NOUN.is_file(), reason="WordNet 3.0 (wordnet-base) is not installed")


@pytest.fixture(scope="module")
def hierarchy():
    return wordnet_hierarchy()


@pytest.fixture(scope="module")
def in1k():
    return [c.wnid for c in imagenet_classes()]


# --- the bundled table -------------------------------------------------------------------

def test_the_chihuahua_path_leads_up_through_toy_dog_and_dog_to_entity(hierarchy):
    chihuahua = hierarchy.synset(CHIHUAHUA)
    assert chihuahua.name == "Chihuahua"
    assert chihuahua.parents == (TOY_DOG,)
    assert hierarchy.synset(TOY_DOG).lemmas == ("toy dog", "toy")
    assert hierarchy.synset(DOG).lemmas[:2] == ("dog", "domestic dog")
    paths = hierarchy.paths_to_root(CHIHUAHUA)
    assert len(paths) == 2  # a dog is a canine and a domestic animal
    for path in paths:
        assert path[:3] == (CHIHUAHUA, TOY_DOG, DOG)
        assert path[-1] == ROOT
        assert all(hierarchy.synset(child).parents.count(parent) == 1 for child, parent in zip(path, path[1:]))
    assert {path[3] for path in paths} == {CANINE, DOMESTIC_ANIMAL}
    assert chihuahua.depth == len(paths[0]) - 1 == 10  # the shortest path goes through "domestic animal"
    assert hierarchy.synset(ROOT).depth == 0 and hierarchy.paths_to_root(ROOT) == ((ROOT,),)


def test_a_class_with_two_hypernyms_has_both_ancestries(hierarchy):
    accordion = hierarchy.synset(ACCORDION)
    assert accordion.parents == (FREE_REED, KEYBOARD_INSTRUMENT)
    assert accordion.lemmas == ("accordion", "piano accordion", "squeeze box")
    assert accordion.gloss.startswith("a portable box-shaped free-reed instrument")
    assert {FREE_REED, KEYBOARD_INSTRUMENT, ROOT} <= hierarchy.ancestors(ACCORDION)
    assert ACCORDION not in hierarchy.ancestors(ACCORDION)
    assert {path[1] for path in hierarchy.paths_to_root(ACCORDION)} == {FREE_REED, KEYBOARD_INSTRUMENT}
    assert len(hierarchy.synset(TANK).parents) == 3


def test_118_of_the_1000_classes_lie_under_dog(hierarchy, in1k):
    dogs = hierarchy.subtree(DOG, in1k)
    assert len(dogs) == 118
    assert CHIHUAHUA in dogs and list(dogs) == sorted(dogs)
    assert all(hierarchy.is_under(wnid, DOG) for wnid in dogs)
    assert not hierarchy.is_under(TABBY, DOG)
    assert not hierarchy.is_under(DOG, DOG)  # a synset is not under itself
    assert hierarchy.subtree(DOG, [DOG, CHIHUAHUA, TABBY]) == (DOG, CHIHUAHUA)


def test_38_of_the_1000_classes_have_two_or_more_hypernyms(hierarchy, in1k):
    counts = [len(hierarchy.synset(wnid).parents) for wnid in in1k]
    assert sum(n >= 2 for n in counts) == 38
    assert sum(n == 3 for n in counts) == 1  # the tank
    assert min(counts) == 1


def test_every_ilsvrc2012_class_is_in_the_table_and_marked(hierarchy, in1k):
    assert all(wnid in hierarchy for wnid in in1k)
    assert hierarchy.classes(IN1K) == tuple(in1k)
    assert len(hierarchy.classes(IN21K)) == 21843
    # the teddy bear is an ILSVRC2012 class that the fall11 21k release does not hold
    assert set(in1k) - set(hierarchy.classes(IN21K)) == {"n04399382"}


def test_the_table_is_closed_under_parents_and_its_depths_are_shortest_paths(hierarchy):
    for wnid in hierarchy:
        synset = hierarchy.synset(wnid)
        assert all(parent in hierarchy for parent in synset.parents)
        assert set(synset.instance_parents) <= set(synset.parents)
        if wnid != ROOT:
            assert synset.depth == 1 + min(hierarchy.synset(p).depth for p in synset.parents)
    assert len(hierarchy) == 23548
    assert [w for w in hierarchy if not hierarchy.synset(w).parents] == [ROOT]


def test_unknown_wnids_raise_a_clear_error(hierarchy):
    with pytest.raises(UnknownWnid, match="n99999999"):
        hierarchy.synset("n99999999")
    for call in (lambda: hierarchy.ancestors("n99999999"), lambda: hierarchy.paths_to_root("n99999999"),
                 lambda: hierarchy.is_under(CHIHUAHUA, "n99999999"), lambda: hierarchy.subtree("n99999999", [DOG])):
        with pytest.raises(UnknownWnid):
            call()
    with pytest.raises(HierarchyError):  # the errors are ValueErrors, for the command line to report
        hierarchy.synset("dog")
    with pytest.raises(ValueError, match="in1k"):
        hierarchy.classes("in5k")


def test_a_table_without_its_header_or_with_a_missing_parent_is_refused():
    with pytest.raises(ValueError, match="header"):
        parse_table("n00001740\t0\t\t\t\tentity\tx\n")
    header = "wnid\tdepth\tlists\tparents\tinstance_parents\tlemmas\tgloss\n"
    with pytest.raises(ValueError, match="n00001930"):
        parse_table(header + "n00002452\t2\t\tn00001930\t\tthing\ta thing\n")
    small = parse_table("# a comment\n" + header + "n00001740\t0\t\t\t\tentity\tall\n"
                        "n00001930\t1\tin1k\tn00001740\t\tphysical entity\tan entity\n")
    assert small.ancestors("n00001930") == {ROOT}
    assert small.classes(IN1K) == ("n00001930",)


# --- class entries -----------------------------------------------------------------------

def test_parse_class_entry_tells_a_subtree_from_a_class():
    assert parse_class_entry("n02084071+") == ClassEntry(DOG, subtree=True)
    assert parse_class_entry("  n02085620 ") == ClassEntry(CHIHUAHUA, subtree=False)
    assert str(parse_class_entry("n02084071+")) == "n02084071+"
    for bad in ("dog", "n0208407+", "n02084071++", "+n02084071", "n02084071 +", ""):
        with pytest.raises(BadClassEntry, match="not a class entry"):
            parse_class_entry(bad)


def test_a_class_entry_selects_its_class_or_its_subtree(hierarchy, in1k):
    assert len(hierarchy.matches(parse_class_entry("n02084071+"), in1k)) == 118
    assert hierarchy.matches(parse_class_entry(CHIHUAHUA), in1k) == (CHIHUAHUA,)
    assert hierarchy.matches(parse_class_entry(DOG), in1k) == ()  # "dog" itself is no ILSVRC2012 class
    with pytest.raises(UnknownWnid):
        hierarchy.matches(parse_class_entry("n99999999+"), in1k)


# --- coarse labels -----------------------------------------------------------------------

def test_coarse_labels_map_each_class_to_its_one_listed_ancestor(hierarchy):
    mapping = hierarchy.coarse_labels([CHIHUAHUA, TABBY, ACCORDION, DOG], [DOG, CAT, FREE_REED, ACCORDION])
    assert mapping == {CHIHUAHUA: DOG, TABBY: CAT, ACCORDION: ACCORDION, DOG: DOG}
    assert list(mapping) == [CHIHUAHUA, TABBY, ACCORDION, DOG]  # in the order of the classes


def test_coarse_labels_name_every_class_with_none_or_several_listed_ancestors(hierarchy):
    with pytest.raises(CoarseLabelError) as caught:
        hierarchy.coarse_labels([CHIHUAHUA, TABBY, ACCORDION, TANK], [ANIMAL, DOG, FREE_REED, KEYBOARD_INSTRUMENT])
    error = caught.value
    assert error.none == (TANK,)
    assert error.several == {CHIHUAHUA: (ANIMAL, DOG), ACCORDION: (FREE_REED, KEYBOARD_INSTRUMENT)}
    message = str(error)
    assert all(wnid in message for wnid in (TANK, CHIHUAHUA, ACCORDION)) and TABBY not in message
    assert "on_several" in message
    assert isinstance(error, ValueError)


def test_several_listed_ancestors_resolve_to_the_deepest_or_the_first(hierarchy):
    classes = [CHIHUAHUA, ACCORDION, BASEBALL]
    listed = [ANIMAL, DOG, KEYBOARD_INSTRUMENT, FREE_REED, BASEBALL_EQUIPMENT, BALL]
    depth = {wnid: hierarchy.synset(wnid).depth for wnid in listed}
    assert depth[DOG] > depth[ANIMAL] and depth[FREE_REED] > depth[KEYBOARD_INSTRUMENT]
    assert depth[BALL] == depth[BASEBALL_EQUIPMENT]
    assert hierarchy.coarse_labels(classes, listed, on_several="deepest") == {
        CHIHUAHUA: DOG, ACCORDION: FREE_REED,
        BASEBALL: BASEBALL_EQUIPMENT,  # as deep as "ball": the one listed first wins
    }
    assert hierarchy.coarse_labels(classes, listed, on_several="first") == {
        CHIHUAHUA: ANIMAL, ACCORDION: KEYBOARD_INSTRUMENT, BASEBALL: BASEBALL_EQUIPMENT}
    with pytest.raises(CoarseLabelError) as caught:  # a class under none stays an error
        hierarchy.coarse_labels([TANK, CHIHUAHUA], listed, on_several="first")
    assert caught.value.none == (TANK,) and caught.value.several == {}


def test_coarse_labels_refuse_unknown_wnids_and_unknown_policies(hierarchy):
    with pytest.raises(UnknownWnid, match="n99999999"):
        hierarchy.coarse_labels([CHIHUAHUA], [DOG, "n99999999"])
    with pytest.raises(UnknownWnid, match="n99999999"):
        hierarchy.coarse_labels(["n99999999"], [DOG])
    with pytest.raises(ValueError, match="on_several"):
        hierarchy.coarse_labels([CHIHUAHUA], [DOG], on_several="last")


def test_coarse_labels_of_all_1000_classes(hierarchy, in1k):
    assert set(hierarchy.coarse_labels(in1k, [ROOT]).values()) == {ROOT}
    with pytest.raises(CoarseLabelError) as caught:  # foods, plants, people, places: neither of them
        hierarchy.coarse_labels(in1k, [ANIMAL, ARTIFACT], on_several="deepest")
    assert len(caught.value.none) == 80 and not caught.value.several
    assert all(wnid in str(caught.value) for wnid in caught.value.none)
    animals = hierarchy.subtree(ANIMAL, in1k)
    assert set(hierarchy.coarse_labels(animals, [ANIMAL]).values()) == {ANIMAL}


# --- against WordNet's data.noun ---------------------------------------------------------

def _data_noun() -> dict:
    """{wnid: (lemmas, parents, gloss)} read straight from data.noun, independently of the generator."""
    synsets = {}
    with open(DATA_NOUN, encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):
                continue
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            count = int(parts[3], 16)
            lemmas = tuple(word.replace("_", " ") for word in parts[4:4 + 2 * count:2])
            pointers = parts[5 + 2 * count:]
            parents = tuple("n" + pointers[i + 1] for i in range(0, len(pointers), 4) if pointers[i] in ("@", "@i"))
            synsets["n" + parts[0]] = (lemmas, parents, gloss.strip())
    return synsets


@needs_wordnet
def test_the_table_agrees_with_wordnet_data_noun(hierarchy):
    wordnet = _data_noun()
    assert len(wordnet) == 82115
    for wnid in hierarchy:
        synset = hierarchy.synset(wnid)
        assert (synset.lemmas, synset.parents, synset.gloss) == wordnet[wnid], wnid


def _generate(out: Path, *extra) -> bytes:
    subprocess.run([sys.executable, str(GENERATOR), "--wordnet", str(WORDNET), "--out", str(out),
                    "--license-out", str(out.with_suffix(".license.txt")), *extra],
                   check=True, capture_output=True, text=True, cwd=REPO)
    return out.read_bytes()


@needs_wordnet
def test_the_generator_is_deterministic_and_reproduces_the_bundled_table(tmp_path):
    first = _generate(tmp_path / "first.tsv.gz")
    second = _generate(tmp_path / "second.tsv.gz")
    assert first == second
    # the content is compared, not the bytes: another zlib may compress the same text differently
    assert gzip.decompress(first) == gzip.decompress(BUNDLED.read_bytes())
    license_text = (tmp_path / "first.tsv.license.txt").read_text()
    assert license_text == (REPO / "transforms" / "data" / "WORDNET-LICENSE.txt").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in license_text


@needs_wordnet
@pytest.mark.skipif(not IN21K_LIST.is_file(), reason="the ImageNet-21k class list is not at hand")
def test_the_generator_from_the_21k_list_gives_the_bundled_table(tmp_path):
    generated = _generate(tmp_path / "table.tsv.gz", "--in21k", str(IN21K_LIST))
    assert gzip.decompress(generated) == gzip.decompress(BUNDLED.read_bytes())
