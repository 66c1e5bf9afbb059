"""The WordNet hierarchy of the ImageNet classes: synsets, ancestors, subtrees and coarse labels.

Every ImageNet class is a WordNet 3.0 noun synset, and its WNID is the synset's offset in
WordNet's data.noun. A synset can have several parents (hypernyms, or instance hypernyms), so
the hierarchy is a directed acyclic graph with one root, n00001740 "entity". The table that this
module reads ships beside it (transforms/data/wordnet_hierarchy.tsv.gz, written by
tools/make_hierarchy_table.py, with WordNet's licence in WORDNET-LICENSE.txt). It holds every
synset that is an ImageNet-1k or ImageNet-21k class, and every ancestor of one.

`wordnet_hierarchy()` loads the table once and returns a `Hierarchy`. Class lists name a class
with its WNID (`n02085620`) or a whole subtree with a WNID and a plus sign (`n02084071+`, every
class under "dog"); `parse_class_entry` reads such an entry, and `Hierarchy.matches` expands it.
`Hierarchy.coarse_labels` maps fine classes to the coarse classes of a list.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
from typing import Iterable, Iterator, Mapping, Optional

from transforms.keys import WNID

__all__ = [
    "ROOT",
    "IN1K",
    "IN21K",
    "TABLE",
    "ON_SEVERAL",
    "SUBTREE_MARK",
    "BadClassEntry",
    "ClassEntry",
    "CoarseLabelError",
    "Hierarchy",
    "HierarchyError",
    "Synset",
    "UnknownWnid",
    "parse_class_entry",
    "parse_table",
    "wordnet_hierarchy",
]

ROOT = "n00001740"  # "entity", the one root of WordNet's nouns
IN1K = "in1k"  # the name of the ILSVRC2012 class list in the table's `lists` column
IN21K = "in21k"  # the name of the ImageNet-21k class list (timm's 21,843 WNIDs)
TABLE = "wordnet_hierarchy.tsv.gz"
COLUMNS = ("wnid", "depth", "lists", "parents", "instance_parents", "lemmas", "gloss")
ON_SEVERAL = ("error", "deepest", "first")
SUBTREE_MARK = "+"


class HierarchyError(ValueError):
    """The base of the errors that a wrong WNID, class entry or coarse class list raises."""


class UnknownWnid(HierarchyError):
    """A WNID that the hierarchy table does not hold."""

    def __init__(self, wnid: str):
        self.wnid = wnid
        super().__init__(f"{wnid!r} is not a WordNet noun synset that is an ImageNet class or an ancestor of one")


class BadClassEntry(HierarchyError):
    """A class entry that is neither a WNID nor a WNID followed by a plus sign."""


class CoarseLabelError(HierarchyError):
    """Some classes have no listed coarse ancestor, or several of them.

    `none` holds the classes that have none, and `several` maps each class that has several to
    the listed ancestors it has, in the order of the list.
    """

    def __init__(self, none: tuple[str, ...], several: Mapping[str, tuple[str, ...]]):
        self.none = none
        self.several = dict(several)
        problems = []
        if none:
            problems.append(f"{len(none)} classes are under none of the coarse classes: {', '.join(none)}")
        if several:
            listed = "; ".join(f"{wnid} under {', '.join(coarse)}" for wnid, coarse in self.several.items())
            problems.append(f"{len(self.several)} classes are under several coarse classes ({listed}); "
                            "choose one with on_several='deepest' or 'first', or change the list")
        super().__init__(". ".join(problems))


@dataclasses.dataclass(frozen=True)
class Synset:
    """One noun synset of the table.

    `parents` holds the hypernyms and the instance hypernyms in WordNet's order, and
    `instance_parents` the ones of them that are instance hypernyms. `depth` is the length of the
    shortest path up to the root (the root has depth 0). `lists` names the ImageNet class lists
    that hold the synset (`IN1K`, `IN21K`); it is empty for a synset that is only an ancestor.
    """

    wnid: str
    lemmas: tuple[str, ...]
    gloss: str
    parents: tuple[str, ...]
    depth: int
    instance_parents: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The first lemma, the synset's usual name."""
        return self.lemmas[0]


@dataclasses.dataclass(frozen=True)
class ClassEntry:
    """One entry of a class list: a single class, or every class of a subtree (`n02084071+`)."""

    wnid: str
    subtree: bool

    def __str__(self) -> str:
        return self.wnid + (SUBTREE_MARK if self.subtree else "")


def parse_class_entry(text: str) -> ClassEntry:
    """Read a class entry: a WNID for one class, or a WNID and a plus sign for its whole subtree.

    Spaces around the entry are ignored. Anything else raises `BadClassEntry`. The WNID is not
    looked up here: `Hierarchy.matches` does that.
    """
    entry = text.strip()
    subtree = entry.endswith(SUBTREE_MARK)
    wnid = entry[:-1] if subtree else entry
    if not WNID.fullmatch(wnid):
        raise BadClassEntry(f"{text!r} is not a class entry: write a WNID (n02085620), "
                            f"or a WNID and a plus sign for its whole subtree (n02084071+)")
    return ClassEntry(wnid, subtree)


class Hierarchy:
    """The synsets of the table, with the questions one asks of a directed acyclic graph."""

    def __init__(self, synsets: Iterable[Synset]):
        self._synsets = {synset.wnid: synset for synset in synsets}
        self._ancestors: dict[str, frozenset[str]] = {}
        missing = sorted({p for s in self._synsets.values() for p in s.parents if p not in self._synsets})
        if missing:
            raise ValueError(f"the hierarchy names parents that it does not hold: {', '.join(missing)}")

    def __len__(self) -> int:
        return len(self._synsets)

    def __contains__(self, wnid: object) -> bool:
        return wnid in self._synsets

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._synsets))

    def synset(self, wnid: str) -> Synset:
        """The synset of a WNID; `UnknownWnid` when the table does not hold it."""
        try:
            return self._synsets[wnid]
        except KeyError:
            raise UnknownWnid(wnid) from None

    def classes(self, list_name: str) -> tuple[str, ...]:
        """The sorted WNIDs of one ImageNet class list (`IN1K` or `IN21K`)."""
        if list_name not in (IN1K, IN21K):
            raise ValueError(f"{list_name!r} is not a class list of the table: use {IN1K!r} or {IN21K!r}")
        return tuple(sorted(w for w, s in self._synsets.items() if list_name in s.lists))

    def ancestors(self, wnid: str) -> frozenset[str]:
        """Every ancestor of a synset, over all of its paths to the root; the synset itself is not one."""
        known = self._ancestors.get(wnid)
        if known is not None:
            return known
        found: set[str] = set()
        for parent in self.synset(wnid).parents:
            found.add(parent)
            found |= self.ancestors(parent)
        self._ancestors[wnid] = frozenset(found)
        return self._ancestors[wnid]

    def paths_to_root(self, wnid: str) -> tuple[tuple[str, ...], ...]:
        """Every path from a synset up to the root, each one starting at the synset and ending at `ROOT`.

        The paths are sorted by length, then by their WNIDs, so that the first one is a shortest.
        """
        parents = self.synset(wnid).parents
        if not parents:
            return ((wnid,),)
        paths = {(wnid, *path) for parent in parents for path in self.paths_to_root(parent)}
        return tuple(sorted(paths, key=lambda path: (len(path), path)))

    def is_under(self, wnid: str, ancestor: str) -> bool:
        """Whether `ancestor` is an ancestor of `wnid` (a synset is not under itself)."""
        self.synset(ancestor)  # an unknown ancestor is an error, not a "no"
        return ancestor in self.ancestors(wnid)

    def subtree(self, ancestor: str, among: Iterable[str]) -> tuple[str, ...]:
        """The sorted WNIDs of `among` that are `ancestor` itself or lie under it."""
        self.synset(ancestor)
        return tuple(sorted({w for w in among if w == ancestor or ancestor in self.ancestors(w)}))

    def matches(self, entry: ClassEntry, among: Iterable[str]) -> tuple[str, ...]:
        """The sorted WNIDs of `among` that a class entry selects.

        A subtree entry selects its WNID and every class under it; a plain entry selects its WNID
        when `among` holds it. An entry whose WNID the table does not hold raises `UnknownWnid`.
        """
        if entry.subtree:
            return self.subtree(entry.wnid, among)
        self.synset(entry.wnid)
        return (entry.wnid,) if entry.wnid in set(among) else ()

    def coarse_labels(self, classes: Iterable[str], coarse_wnids: Iterable[str],
                      on_several: str = "error") -> dict[str, str]:
        """Map each fine class to the one coarse class of `coarse_wnids` that it is, or lies under.

        A class that is itself listed maps to itself, whatever else is listed above it. A class
        under several listed classes is resolved by `on_several`:
        - "error" (the default): it is an error.
        - "deepest": the listed ancestor with the greatest depth, the nearest to the class; when
          two are as deep, the one that comes first in `coarse_wnids`.
        - "first": the listed ancestor that comes first in `coarse_wnids`, which is then a list
          in order of priority.
        A class under none of them is always an error. `CoarseLabelError` names every class of
        both kinds at once. The mapping follows the order of `classes`.
        """
        if on_several not in ON_SEVERAL:
            raise ValueError(f"on_several must be one of {', '.join(ON_SEVERAL)}, not {on_several!r}")
        coarse = list(dict.fromkeys(coarse_wnids))  # unique, in the order given
        for wnid in coarse:
            self.synset(wnid)
        rank = {wnid: i for i, wnid in enumerate(coarse)}
        mapping: dict[str, str] = {}
        none: list[str] = []
        several: dict[str, tuple[str, ...]] = {}
        for wnid in dict.fromkeys(classes):
            if wnid in rank:
                mapping[wnid] = wnid
                continue
            above = sorted(self.ancestors(wnid) & rank.keys(), key=rank.__getitem__)
            chosen = self._resolve(above, on_several)
            if chosen is not None:
                mapping[wnid] = chosen
            elif not above:
                none.append(wnid)
            else:
                several[wnid] = tuple(above)
        if none or several:
            raise CoarseLabelError(tuple(none), several)
        return mapping

    def _resolve(self, above: list[str], on_several: str) -> Optional[str]:
        """The one coarse class chosen among the listed ancestors (in list order), or None."""
        if len(above) == 1:
            return above[0]
        if not above or on_several == "error":
            return None
        if on_several == "first":
            return above[0]
        return max(above, key=lambda wnid: (self.synset(wnid).depth, -above.index(wnid)))


def _split(field: str, separator: str = " ") -> tuple[str, ...]:
    return tuple(field.split(separator)) if field else ()


def parse_table(text: str) -> Hierarchy:
    """Build a `Hierarchy` from the table's text (lines starting with "#" are comments)."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    if not lines or tuple(lines[0].split("\t")) != COLUMNS:
        raise ValueError(f"the hierarchy table does not start with the header {' '.join(COLUMNS)}")
    synsets = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            raise ValueError(f"row {number} of the hierarchy table has {len(fields)} fields, not {len(COLUMNS)}")
        wnid, depth, lists, parents, instance_parents, lemmas, gloss = fields
        synsets.append(Synset(wnid=wnid, lemmas=_split(lemmas, "|"), gloss=gloss, parents=_split(parents),
                              depth=int(depth), instance_parents=_split(instance_parents), lists=_split(lists)))
    return Hierarchy(synsets)


@functools.cache
def wordnet_hierarchy() -> Hierarchy:
    """The bundled hierarchy table, loaded once."""
    data = importlib.resources.files("transforms").joinpath("data", TABLE).read_bytes()
    return parse_table(gzip.decompress(data).decode("utf-8"))
