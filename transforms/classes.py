"""The classes of a build, seen through the WordNet hierarchy: which ones it keeps, the labels its
samples take, what the manifest says of each, and which classes are too small to keep.

Contract:
- `select_classes(entries, known)`: the classes that a class list (`--classes`) selects, where an
  entry is a class (`n02085620`, or any class name of an ImageFolder) or a whole subtree
  (`n02084071+`), and how many classes each entry matched.
- `coarse_classes(classes, coarse_wnids, on_several)`: the coarse classes of `--label-level`
  (label = position in the list) and the coarse class of every fine class.
- `class_record` and `manifest_classes`: the manifest's `classes` (and `fine_classes`), each class
  with its WordNet lemmas, gloss, parents, depth and ancestors.
- `DropSmallClasses` (`--min-per-class`): counts the members of each class once the archives are
  indexed, and leaves out the classes with fewer than N, before any image is read.
  `without_dropped_classes` then takes them out of the manifest's class list.

Every wrong entry, WNID or coarse class list raises SourceError (exit status 2).
"""
from __future__ import annotations

import collections
import dataclasses
import typing
from typing import Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam import pvalue

from transforms.hierarchy import (
    SUBTREE_MARK,
    CoarseLabelError,
    Hierarchy,
    HierarchyError,
    parse_class_entry,
    wordnet_hierarchy,
)
from transforms.keys import WNID
from transforms.labels import ClassInfo
from transforms.records import ClassCount, MemberRef, SourceError, from_shuffle, to_shuffle

__all__ = ["ClassFilter", "KeepPlan", "select_classes", "coarse_classes", "class_record", "manifest_classes",
           "class_counts", "keep_plan", "filter_batch", "without_dropped_classes", "DropSmallClasses"]

# How many class names an error message lists before it says how many more there are.
_LISTED = 12


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


# --- --classes ------------------------------------------------------------------------

def select_classes(entries: Sequence[str], known: Sequence[str],
                   hierarchy: Optional[Hierarchy] = None) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """(the sorted classes chosen, ((entry, classes it matched), ...) in the order of the entries).

    An entry that ends with a plus sign selects its WNID and every class of `known` under it in
    WordNet; it must name a synset of the hierarchy and match at least one class. Any other entry
    names one class of `known`. Entries that break these rules raise one SourceError that names
    them all.
    """
    hierarchy = hierarchy or wordnet_hierarchy()
    known_set = set(known)
    chosen: set[str] = set()
    matched: list[tuple[str, int]] = []
    missing: list[str] = []
    problems: list[str] = []
    for text in dict.fromkeys(e.strip() for e in entries):
        if not text.endswith(SUBTREE_MARK):
            if text in known_set:
                chosen.add(text)
                matched.append((text, 1))
            else:
                missing.append(text)
            continue
        try:
            found = hierarchy.matches(parse_class_entry(text), known)
        except HierarchyError as e:
            problems.append(f"{text}: {e}")
            continue
        if not found:
            problems.append(f"{text} matches none of this dataset's classes")
        chosen.update(found)
        matched.append((text, len(found)))
    if missing:
        not_synsets = [m for m in missing if WNID.fullmatch(m) and m not in hierarchy]
        note = f" ({_listed(not_synsets)} are not WordNet noun synsets of ImageNet)" if not_synsets else ""
        problems.insert(0, f"--classes names {len(missing)} classes this dataset does not have, "
                           f"e.g. {', '.join(missing[:5])}{note}")
    if problems:
        raise SourceError("; ".join(problems))
    return tuple(sorted(chosen)), tuple(matched)


# --- --label-level --------------------------------------------------------------------

def coarse_classes(classes: Sequence[ClassInfo], coarse_wnids: Sequence[str], on_several: str = "error",
                   hierarchy: Optional[Hierarchy] = None) -> tuple[tuple[ClassInfo, ...], dict[str, str]]:
    """(the coarse classes, {fine WNID: coarse WNID}) of a coarse class list (--label-level FILE).

    The coarse labels are 0..K-1 in the order of the list (a WNID listed twice counts once), as
    --label-map orders labels. `on_several` says what to do with a class under several listed
    classes (see `Hierarchy.coarse_labels`); a class under none of them is always an error.
    """
    hierarchy = hierarchy or wordnet_hierarchy()
    coarse = list(dict.fromkeys(coarse_wnids))
    unknown = [w for w in coarse if w not in hierarchy]
    if unknown:
        raise SourceError(f"--label-level names {len(unknown)} WNIDs that are not WordNet noun synsets of "
                          f"ImageNet: {_listed(unknown)}")
    not_synsets = [c.wnid for c in classes if c.wnid not in hierarchy]
    if not_synsets:
        raise SourceError(f"--label-level needs classes that are WordNet synsets (WNIDs), and "
                          f"{len(not_synsets)} of this dataset's classes are not: {_listed(not_synsets)}")
    try:
        mapping = hierarchy.coarse_labels([c.wnid for c in classes], coarse, on_several)
    except CoarseLabelError as e:
        problems = []
        if e.none:
            problems.append(f"{len(e.none)} classes are under none of the coarse classes: {_listed(e.none)} "
                            "(leave them out with --classes, or list an ancestor of theirs)")
        if e.several:
            several = [f"{fine} under {' and '.join(above)}" for fine, above in e.several.items()]
            problems.append(f"{len(e.several)} classes are under several coarse classes: {_listed(several)} "
                            "(choose with --label-level-on-several deepest or first, or change the list)")
        raise SourceError("--label-level: " + "; ".join(problems)) from None
    infos = tuple(ClassInfo(i, wnid, hierarchy.synset(wnid).name) for i, wnid in enumerate(coarse))
    return infos, mapping


# --- the manifest's classes -------------------------------------------------------------

def class_record(info: ClassInfo, hierarchy: Optional[Hierarchy] = None) -> dict:
    """A class as the manifest lists it: label, wnid and name (the class table's, or else the
    synset's first lemma, e.g. for the ImageNet-21k classes), then its WordNet lemmas, gloss,
    parents (WordNet's order), depth (the shortest path's length to the root) and ancestors
    (sorted). A class that is not a synset of the hierarchy (an ImageFolder class named "cat")
    has the same fields, set to null."""
    hierarchy = hierarchy or wordnet_hierarchy()
    record: dict = {"label": info.label, "wnid": info.wnid, "name": info.name}
    if info.wnid in hierarchy:
        synset = hierarchy.synset(info.wnid)
        record["name"] = info.name or synset.name
        record.update(lemmas=list(synset.lemmas), gloss=synset.gloss, parents=list(synset.parents),
                      depth=synset.depth, ancestors=sorted(hierarchy.ancestors(info.wnid)))
    else:
        record.update(lemmas=None, gloss=None, parents=None, depth=None, ancestors=None)
    return record


def manifest_classes(classes: Sequence[ClassInfo], coarse: Sequence[ClassInfo] = (),
                     coarse_of: Optional[dict] = None) -> dict:
    """The manifest's class lists: {"classes": [...]}, the classes of the labels. Under coarse
    labels those are the coarse classes, and "fine_classes" lists the classes of the dataset,
    each with the label and WNID of its coarse class (`coarse_label`, `coarse_wnid`)."""
    hierarchy = wordnet_hierarchy()
    if not coarse:
        return {"classes": [class_record(c, hierarchy) for c in classes]}
    coarse_label = {c.wnid: c.label for c in coarse}
    mapping = coarse_of or {}
    fine = [{**class_record(c, hierarchy), "coarse_label": coarse_label[mapping[c.wnid]],
             "coarse_wnid": mapping[c.wnid]} for c in classes]
    return {"classes": [class_record(c, hierarchy) for c in coarse], "fine_classes": fine}


# --- --min-per-class --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClassFilter:
    """What --min-per-class keeps: the classes with at least `min_members` members over the splits
    built (counted once the archives are indexed, before any image is decoded). `classes` are the
    (fine) classes of the label space, so that a class without any member is dropped too. With
    `relabel`, the (fine) labels of the classes kept become 0..K-1 in sorted class order."""

    min_members: int
    classes: tuple
    relabel: bool = False


@dataclasses.dataclass(frozen=True)
class KeepPlan:
    """The decision, once every class is counted: the classes dropped with their counts (sorted),
    and the new label of every class kept when the labels are compacted (else None)."""

    dropped: tuple
    labels: Optional[dict] = None

    @property
    def dropped_names(self) -> frozenset:
        return frozenset(d.wnid for d in self.dropped)


def class_counts(batch: Iterable[MemberRef]) -> list:
    """[(class, members)] of a batch of members, by their own (fine) class; unlabelled ones are not counted."""
    counts = collections.Counter(ref.fine[1] for ref in batch)
    counts.pop(None, None)
    return sorted(counts.items())


def keep_plan(counts: dict, spec: ClassFilter) -> KeepPlan:
    """The classes dropped, and the compacted labels of the classes kept, from every class's count."""
    names = sorted(set(spec.classes) | set(counts))
    dropped = tuple(ClassCount(n, counts.get(n, 0)) for n in names if counts.get(n, 0) < spec.min_members)
    gone = {d.wnid for d in dropped}
    labels = {n: i for i, n in enumerate(n for n in names if n not in gone)} if spec.relabel else None
    return KeepPlan(dropped, labels)


def _relabelled(ref: MemberRef, labels: Optional[dict]) -> MemberRef:
    if labels is None or ref.fine[1] is None:
        return ref
    new = labels[ref.fine[1]]
    if ref.fine_wnid is not None:  # under coarse labels, the fine label is the one compacted
        return dataclasses.replace(ref, fine_label=new)
    return dataclasses.replace(ref, label=new)


def filter_batch(batch: Sequence[MemberRef], plan: KeepPlan) -> tuple[tuple, dict]:
    """(the members kept, relabelled if the plan says so; {split: members left out})."""
    gone = plan.dropped_names
    kept: list[MemberRef] = []
    left_out: collections.Counter[str] = collections.Counter()
    for ref in batch:
        if ref.fine[1] in gone:
            left_out[ref.split] += 1
        else:
            kept.append(_relabelled(ref, plan.labels))
    return tuple(kept), dict(left_out)


@beam.typehints.with_output_types(typing.Any)
class _DropSmallFn(beam.DoFn):
    """to_shuffle((MemberRef, ...)) batch -> the batch less the members of dropped classes; their count per
    split goes to "left_out" as (split, n)."""

    def process(self, packed, plan):
        kept, left_out = filter_batch(from_shuffle(packed), plan)
        if kept:
            yield to_shuffle(kept)
        for split, n in sorted(left_out.items()):
            yield pvalue.TaggedOutput("left_out", (split, n))


class DropSmallClasses(beam.PTransform):
    """to_shuffle((MemberRef, ...)) batches -> {"members": the batches of the classes kept, "left_out": (split, n)
    pairs of the members left out, "dropped": ClassCount of each class dropped}.

    The counts cross one small shuffle (a class and a number), and the decision is one element
    that every worker reads as a side input: member references flow through once, and no image
    byte is read.
    """

    def __init__(self, spec: ClassFilter):
        super().__init__()
        self._spec = spec

    def expand(self, members):
        spec = self._spec
        plan = (
            members
            | "CountPerClass" >> beam.FlatMap(lambda packed: class_counts(from_shuffle(packed)))
            | "SumPerClass" >> beam.CombinePerKey(sum)
            | "AllClassCounts" >> beam.combiners.ToDict()
            | "DecideKept" >> beam.Map(keep_plan, spec)
        )
        filtered = members | "DropSmall" >> beam.ParDo(_DropSmallFn(), pvalue.AsSingleton(plan)).with_outputs(
            "left_out", main="members")
        dropped = plan | "DroppedClasses" >> beam.FlatMap(lambda p: list(p.dropped))
        return {"members": filtered.members, "left_out": filtered.left_out, "dropped": dropped}


def without_dropped_classes(header: dict, dropped: Iterable[ClassCount]) -> dict:
    """The manifest's fields known before the build, less the classes that --min-per-class dropped,
    with `dropped_classes` ([{wnid, name, images}], sorted). When the build compacts its labels
    (--relabel), the classes kept are numbered 0..K-1 in sorted order, as the samples were."""
    gone = {d.wnid: d.n for d in dropped}
    listed = "fine_classes" if "fine_classes" in header else "classes"
    classes = header.get(listed, [])
    names = {c["wnid"]: c["name"] for c in classes}
    out = {**header, "dropped_classes": [{"wnid": w, "name": names.get(w, ""), "images": n}
                                         for w, n in sorted(gone.items())]}
    if gone and classes:
        kept = [c for c in classes if c["wnid"] not in gone]
        if header.get("config", {}).get("relabel"):
            kept = [{**c, "label": i} for i, c in enumerate(sorted(kept, key=lambda c: c["wnid"]))]
        out[listed] = kept
    return out
