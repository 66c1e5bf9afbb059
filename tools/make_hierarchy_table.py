"""Write the WordNet hierarchy table that transforms/hierarchy.py reads.

The table holds every WordNet 3.0 noun synset that is an ImageNet class, or an ancestor of one,
with its lemmas, its gloss, its parents and its depth. It is generated from WordNet's own
`data.noun` (Debian's package `wordnet-base` installs it in /usr/share/wordnet), and it is
committed, so that a build needs no WordNet package. Run it again from the repository root:

    python tools/make_hierarchy_table.py [--wordnet /usr/share/wordnet]
        [--in1k transforms/data/LOC_synset_mapping.txt] [--in21k FILE ...]
        [--out transforms/data/wordnet_hierarchy.tsv.gz] [--license-out transforms/data/WORDNET-LICENSE.txt]

The ImageNet-21k classes come from the files given to --in21k (one WNID at the start of each
line, such as timm's imagenet21k_goog_synsets.txt). Without --in21k, the script keeps the 21k
classes that the bundled table already records, so that a rerun needs nothing but WordNet.

The format is a gzip'd, tab-separated text file, written with a zero mtime and no file name, so
that the same input gives the same bytes. Its first lines start with "#": a note of its origin
and WordNet's licence notice, which must travel with every copy. Then comes a header row and
one row per synset, sorted by WNID, with these columns:

- wnid: "n" and the synset's eight-digit offset in data.noun.
- depth: the length of the shortest path up to n00001740 "entity" (which has depth 0).
- lists: the ImageNet class lists that hold the synset ("in1k", "in21k", both separated by a
  space, or nothing for a synset that is only an ancestor).
- parents: the hypernyms and the instance hypernyms, in WordNet's order, separated by spaces.
- instance_parents: the parents that are instance hypernyms ("@i"), separated by spaces.
- lemmas: the synset's words, with underscores turned into spaces, separated by "|".
- gloss: the definition and examples, as data.noun writes them.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "transforms" / "data"
DEFAULT_OUT = DATA / "wordnet_hierarchy.tsv.gz"
DEFAULT_LICENSE_OUT = DATA / "WORDNET-LICENSE.txt"
DEFAULT_IN1K = DATA / "LOC_synset_mapping.txt"
ROOT = "n00001740"
COLUMNS = ("wnid", "depth", "lists", "parents", "instance_parents", "lemmas", "gloss")
HYPERNYM = "@"
INSTANCE_HYPERNYM = "@i"


class Synset:
    """One noun synset as data.noun describes it."""

    __slots__ = ("wnid", "lemmas", "parents", "instance_parents", "gloss")

    def __init__(self, wnid: str, lemmas: tuple, parents: tuple, instance_parents: tuple, gloss: str):
        self.wnid = wnid
        self.lemmas = lemmas
        self.parents = parents
        self.instance_parents = instance_parents
        self.gloss = gloss


def parse_data_line(line: str) -> Synset:
    """Parse one synset line of data.noun (the format of WordNet's wndb(5) manual page)."""
    fields, _, gloss = line.rstrip("\n").partition(" | ")
    parts = fields.split()
    offset, _lex_filenum, ss_type, word_count = parts[:4]
    if ss_type != "n":
        raise ValueError(f"the synset {offset} is not a noun synset ({ss_type!r})")
    count = int(word_count, 16)
    words = parts[4:4 + 2 * count:2]
    position = 4 + 2 * count
    pointer_count = int(parts[position])
    position += 1
    parents, instance_parents = [], []
    for _ in range(pointer_count):
        symbol, target, pos, _source_target = parts[position:position + 4]
        position += 4
        if symbol in (HYPERNYM, INSTANCE_HYPERNYM) and pos == "n":
            parents.append("n" + target)
            if symbol == INSTANCE_HYPERNYM:
                instance_parents.append("n" + target)
    lemmas = tuple(word.replace("_", " ") for word in words)
    return Synset("n" + offset, lemmas, tuple(parents), tuple(instance_parents), gloss.strip())


def read_data_noun(path: Path) -> tuple[dict[str, Synset], list[str]]:
    """Every noun synset of data.noun by WNID, and the licence lines of its header."""
    synsets: dict[str, Synset] = {}
    notice = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):  # the header: two spaces, a line number, the licence text
                number, _, text = line.strip("\n").lstrip().partition(" ")
                if number.isdigit():
                    notice.append(text.rstrip())
                continue
            synset = parse_data_line(line)
            synsets[synset.wnid] = synset
    return synsets, notice


def read_wnids(path: Path) -> set[str]:
    """The WNIDs of a class list: the first word of each line that has one."""
    return {line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def bundled_in21k(path: Path) -> set[str]:
    """The 21k classes that an existing table records (for a rerun without the 21k list)."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        rows = [line.rstrip("\n").split("\t") for line in lines if not line.startswith("#")]
    header, body = rows[0], rows[1:]
    lists = header.index("lists")
    return {row[0] for row in body if "in21k" in row[lists].split()}


def closure(synsets: dict[str, Synset], classes: set[str]) -> set[str]:
    """The classes and all of their ancestors."""
    unknown = sorted(wnid for wnid in classes if wnid not in synsets)
    if unknown:
        raise SystemExit(f"{len(unknown)} class WNIDs are not noun synsets of WordNet 3.0: {', '.join(unknown)}")
    kept, stack = set(classes), list(classes)
    while stack:
        for parent in synsets[stack.pop()].parents:
            if parent not in kept:
                kept.add(parent)
                stack.append(parent)
    return kept


def depths(synsets: dict[str, Synset], kept: set[str]) -> dict[str, int]:
    """The shortest distance of each kept synset up to the root, by a breadth-first walk down."""
    children = collections.defaultdict(list)
    for wnid in kept:
        for parent in synsets[wnid].parents:
            children[parent].append(wnid)
    depth = {ROOT: 0}
    queue = collections.deque([ROOT])
    while queue:
        wnid = queue.popleft()
        for child in sorted(children[wnid]):
            if child not in depth:
                depth[child] = depth[wnid] + 1
                queue.append(child)
    unreached = sorted(kept - depth.keys())
    if unreached:
        raise SystemExit(f"these synsets do not lead up to {ROOT}: {', '.join(unreached)}")
    return depth


def table_text(synsets: dict[str, Synset], in1k: set[str], in21k: set[str], notice: list[str], source_md5: str) -> str:
    """The table, uncompressed."""
    kept = closure(synsets, in1k | in21k)
    depth = depths(synsets, kept)
    out = io.StringIO()
    out.write("# The WordNet 3.0 noun synsets that are ImageNet classes, or ancestors of one.\n")
    out.write(f"# Generated by tools/make_hierarchy_table.py from WordNet's data.noun (md5 {source_md5}).\n")
    out.write("# Derived from WordNet 3.0, under the following licence (also in WORDNET-LICENSE.txt):\n")
    for line in notice:
        out.write(f"# {line}".rstrip() + "\n")
    out.write("\t".join(COLUMNS) + "\n")
    for wnid in sorted(kept):
        synset = synsets[wnid]
        lists = [name for name, members in (("in1k", in1k), ("in21k", in21k)) if wnid in members]
        row = (wnid, str(depth[wnid]), " ".join(lists), " ".join(synset.parents), " ".join(synset.instance_parents),
               "|".join(synset.lemmas), synset.gloss)
        for value in row:
            if "\t" in value or "\n" in value:
                raise SystemExit(f"the synset {wnid} holds a tab or a line break: {value!r}")
        out.write("\t".join(row) + "\n")
    return out.getvalue()


def gzip_bytes(text: str) -> bytes:
    """The text gzip'd with no file name and a zero mtime, so that the bytes are reproducible."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as archive:
        archive.write(text.encode("utf-8"))
    return buffer.getvalue()


def license_text(notice: list[str]) -> str:
    return ("The WordNet hierarchy table in this folder (wordnet_hierarchy.tsv.gz) is derived from WordNet 3.0\n"
            "(https://wordnet.princeton.edu/), and is distributed under WordNet's licence:\n\n"
            + "\n".join(notice).strip("\n") + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"),
                        help="the folder of WordNet 3.0's database files (data.noun)")
    parser.add_argument("--in1k", type=Path, default=DEFAULT_IN1K, help="the list of the 1,000 ILSVRC2012 WNIDs")
    parser.add_argument("--in21k", type=Path, action="append", default=[],
                        help="a list of ImageNet-21k WNIDs (repeatable); by default the bundled table's 21k classes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the table to write")
    parser.add_argument("--license-out", type=Path, default=DEFAULT_LICENSE_OUT,
                        help="where to write WordNet's licence notice")
    args = parser.parse_args(argv)

    data_noun = args.wordnet / "data.noun"
    if not data_noun.is_file():
        raise SystemExit(f"{data_noun} is missing: install WordNet 3.0 (apt-get install wordnet-base)")
    synsets, notice = read_data_noun(data_noun)
    if not notice:
        raise SystemExit(f"{data_noun} has no licence header")
    in1k = read_wnids(args.in1k)
    if args.in21k:
        in21k = set().union(*(read_wnids(path) for path in args.in21k))
    elif DEFAULT_OUT.is_file():
        in21k = bundled_in21k(DEFAULT_OUT)
        print(f"using the {len(in21k)} ImageNet-21k classes that {DEFAULT_OUT.name} records", file=sys.stderr)
    else:
        in21k = set()
        print("no ImageNet-21k list given (--in21k) and no bundled table: ImageNet-1k only", file=sys.stderr)
    source_md5 = hashlib.md5(data_noun.read_bytes()).hexdigest()
    text = table_text(synsets, in1k, in21k, notice, source_md5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(gzip_bytes(text))
    args.license_out.parent.mkdir(parents=True, exist_ok=True)
    args.license_out.write_text(license_text(notice), encoding="utf-8")
    rows = text.count("\n") - sum(1 for line in text.splitlines() if line.startswith("#")) - 1
    print(f"wrote {args.out} ({rows} synsets, {args.out.stat().st_size} bytes) and {args.license_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
