"""`imagenet-shards report OUT`: one self-contained HTML file that shows what a build holds.

    imagenet-shards report OUT [--output PATH] [--samples N] [--seed S] [--examples N]

OUT is a dataset root (the report is of the version that LATEST names), a version folder, or an
unversioned output of an earlier release; a local path or an fsspec URL. The report is written to
`--output`, by default `report.html` in the version's own folder, beside the manifest it describes
(the manifest does not list it, and nothing that reads a version reads it). It holds, from the
manifest and the Parquet index: the counts of each split, images per class, original and stored
sizes, bytes per shard, rejects by reason with examples, byte duplicates and near-duplicates,
boxes per image, label/box disagreements, and a contact sheet of seeded random samples with their
labels and boxes. Plots are PNGs and thumbnails JPEGs, all embedded as data: URIs: the file
references nothing outside itself, runs no script, and can be mailed or attached to a ticket.

What it reads, so that a report of ImageNet-1k takes seconds: the manifest, the rejects tables, the
near-duplicate pairs, and thirteen narrow columns of the index (numbers, flags and the boxes: no
key, no path, no hash). Rows it shows are then read from their own index files, found by key with
a filtered scan of the key column, and only the images it shows are read, each by its offset.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import posixpath
import time
import zlib
from typing import Callable, Iterable, Optional, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.reading import plots
from pipeline.versions import current_version
from transforms.layout import MANIFEST_NAME
from transforms.schema import table_from_parquet_files
from transforms.storage import ArchiveReader, atomic_write, is_local

__all__ = ["REPORT_NAME", "SECTIONS", "Report", "add_report_arguments", "run_report", "write_report"]

REPORT_NAME = "report.html"
SECTIONS = {"overview": "Overview", "classes": "Images per class", "sizes": "Image sizes",
            "shards": "Bytes per shard", "rejects": "Rejects", "duplicates": "Duplicates and near-duplicates",
            "boxes": "Boxes", "disagreements": "Label and box disagreements", "samples": "Random samples"}
# The columns read from every index row: small numbers and flags (and the boxes, for their counts and areas).
INDEX_COLUMNS = ("label", "size", "width", "height", "orig_width", "orig_height", "orig_format", "reencoded",
                 "loc_blacklisted", "label_disagrees", "duplicate_of", "near_duplicate_of", "boxes")
# The columns of a row the report shows.
ROW_COLUMNS = ("key", "split", "shard", "offset", "size", "label", "wnid", "width", "height", "boxes", "box_names",
               "duplicate_of", "near_duplicate_of", "source")
REJECT_COLUMNS = ("reason", "split", "key", "source", "detail")
PAIR_COLUMNS = ("key_a", "split_a", "key_b", "split_b", "distance")
READ_THREADS = 8  # index files read at once
EXAMPLE_TILES = 8  # thumbnails of disagreements, and pairs of near-duplicates, shown at most


class Report:
    """One build read for its report: the manifest; the index, rows and images when asked for."""

    def __init__(self, root: str, seed: int = 0):
        self.version = current_version(root)
        self.fs, self.base = fsspec.core.url_to_fs(self.version)
        self.local = is_local(self.version)
        with self.fs.open(posixpath.join(self.base, MANIFEST_NAME), "rb") as f:
            self.manifest: dict = json.load(f)
        splits = self.manifest.get("splits", {})
        self.splits: dict = {name: splits[name] for name in sorted(splits, key=split_order)}
        self.classes = {c["label"]: c for c in self.manifest.get("classes", [])}
        self.names = {c["wnid"]: c.get("name") or "" for c in [*self.manifest.get("classes", []),
                                                              *self.manifest.get("fine_classes", [])] if c.get("wnid")}
        self.seed = seed
        self._tables: dict[str, tuple[pa.Table, np.ndarray]] = {}
        self._reader = ArchiveReader()

    def path(self, relative: str) -> str:
        return posixpath.join(self.base, relative)

    def read_table(self, relative: str, wanted: Sequence[str]) -> pa.Table:
        """The columns of `wanted` that a Parquet file of the version has (an earlier release's may lack some)."""
        with self.fs.open(self.path(relative), "rb") as f:
            parquet = pq.ParquetFile(f)
            # Decoded on this thread (index() reads files on threads of its own): see table_from_parquet_bytes.
            return parquet.read(columns=[c for c in wanted if c in parquet.schema_arrow.names], use_threads=False)

    def index(self, split: str) -> pa.Table:
        """The INDEX_COLUMNS of every row of a split, its index files read in parallel, one after the other."""
        if split not in self._tables:
            files = self.splits[split].get("index", [])
            with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
                tables = list(pool.map(lambda p: self.read_table(p, INDEX_COLUMNS), files))
            starts = np.cumsum([0] + [t.num_rows for t in tables])[:-1]
            table = pa.concat_tables(tables) if tables else pa.table({"label": pa.array([], pa.int64())})
            self._tables[split] = (table, starts)
        return self._tables[split][0]

    def column(self, split: str, name: str, valid: bool = False) -> np.ndarray:
        """An INDEX_COLUMNS column of a split as numpy (with `valid`, whether each value is not null);
        all False where an index of an earlier release lacks it."""
        table = self.index(split)
        if name not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        column = pc.is_valid(table.column(name)) if valid else table.column(name)
        return column.to_numpy(zero_copy_only=False)

    def rows(self, split: str, where: Iterable[int]) -> list[dict]:
        """The ROW_COLUMNS of rows of a split, by their positions in index(), in the order given; each
        index file that holds one is read once."""
        self.index(split)
        starts, files = self._tables[split][1], self.splits[split]["index"]
        positions = np.fromiter(where, dtype=np.int64)
        in_file = np.searchsorted(starts, positions, side="right") - 1
        found: dict[int, dict] = {}
        for f in np.unique(in_file):
            here = positions[in_file == f]
            found.update(zip(here.tolist(), self.read_table(files[f], ROW_COLUMNS).take(here - starts[f]).to_pylist()))
        return [found[p] for p in positions.tolist()]

    def rows_by_key(self, split: str, keys: Iterable[str]) -> dict[str, dict]:
        """{key: row} of the keys found in a split: one filtered scan of its index files' key column."""
        files, keys = [self.path(p) for p in self.splits.get(split, {}).get("index", [])], sorted(keys)
        if not files or not keys:
            return {}
        if self.local:
            dataset = pads.dataset(files, format="parquet")
            table = dataset.to_table(columns=[c for c in ROW_COLUMNS if c in dataset.schema.names],
                                     filter=pc.field("key").isin(keys))
        else:  # not Arrow's threads on Python's bytes: see table_from_parquet_bytes
            table = table_from_parquet_files(self.fs, files)
            table = table.select([c for c in ROW_COLUMNS if c in table.column_names]).filter(
                pc.field("key").isin(keys))
        return {row["key"]: row for row in table.to_pylist()}

    def thumbnails(self, rows: Sequence[dict]) -> list[str]:
        """The rows' images as thumbnails with their boxes drawn: each image read once, by its offset."""
        ranges = [(posixpath.join(self.version, r["shard"]), r["offset"], r["size"]) for r in rows]
        return [plots.thumbnail_uri(jpeg, row["boxes"]) for row, jpeg in zip(rows, self._reader.read_ranges(ranges))]

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator of the report's seed for one purpose, so that each choice is independent of the others
        (the contact sheet of a seed stays the same whatever the other sections choose)."""
        return np.random.default_rng([self.seed, zlib.crc32(purpose.encode())])

    def sample(self, candidates: np.ndarray, k: int, purpose: str) -> np.ndarray:
        """Up to k of the candidate positions, chosen with the report's seed, in index order."""
        if len(candidates) <= k:
            return candidates
        return np.sort(self.rng(purpose).choice(candidates, k, replace=False))

    def class_name(self, label: Optional[int]) -> str:
        entry = self.classes.get(label)
        if entry is None:
            return "unlabelled" if label == -1 else f"label {label}"
        return f"{entry.get('wnid') or ''} {(entry.get('name') or '').split(',')[0]}".strip()

    def close(self) -> None:
        self._reader.close()


def split_order(split: str) -> tuple:
    """train, val and test first, in that order, then the other splits by name."""
    return ({"train": 0, "val": 1, "test": 2}.get(split, 3), split)


# --- HTML -----------------------------------------------------------------------------------------

# Short names for the HTML pieces of plots.py, which every section uses.
e, table, note, figure = plots.escape, plots.html_table, plots.html_note, plots.html_figure


def tiles(r: Report, rows: Sequence[dict]) -> str:
    """Thumbnails of rows, their boxes drawn, each captioned with its class, key, split, size and boxes."""
    return plots.html_tiles(r.thumbnails(rows), [row["key"] for row in rows], [caption(r, row) for row in rows])


def caption(r: Report, row: dict) -> str:
    """The caption of a thumbnail: the sample's class, key, split and stored size, and the classes its boxes name."""
    names = ", ".join(f"{n} {r.names.get(n, '').split(',')[0]}".strip() for n in dict.fromkeys(row["box_names"] or []))
    count = len(row["boxes"])
    boxes = f" &middot; {count} box{'es' * (count != 1)}: {e(names)}" if count else ""
    return (f"<b>{e(r.class_name(row['label']))}</b><br>{e(row['key'])} &middot; {e(row['split'])} &middot; "
            f"{row['width']}x{row['height']}{boxes}")


def page(r: Report, sections: dict[str, str]) -> str:
    """The whole document: a title, links to the sections, and the sections."""
    nav = "".join(f'<a href="#{key}">{e(title)}</a>' for key, title in SECTIONS.items())
    body = "".join(f'<section id="{key}"><h2>{e(SECTIONS[key])}</h2>{text}</section>' for key, text in sections.items())
    title = f"imagenet-shards report: {r.manifest.get('version') or posixpath.basename(r.version)}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{plots.STYLE}</style></head><body><h1>{e(title)}</h1><nav>{nav}</nav>{body}</body></html>\n")


# --- the sections ---------------------------------------------------------------------------------

def overview(r: Report) -> str:
    """The version's facts, the counts of each split (from the manifest) and the options it was built with."""
    m = r.manifest
    inputs = m.get("inputs", [])
    facts = [("version", m.get("version") or "(unversioned)"), ("previous", m.get("previous") or "none"),
             ("created", m.get("created", "")), ("tool", (m.get("tool") or {}).get("version", "")),
             ("layout", m.get("layout", "")), ("format", m.get("format", "")),
             ("inputs", f"{len(inputs)} files, {sum(i.get('size', 0) for i in inputs):,} bytes"),
             ("codecs", ", ".join(f"{k} {v}" for k, v in (m.get("codecs") or {}).items()))]
    header = ["split", "read", "samples", "rejected", "duplicates", "near-duplicates", "with boxes", "boxes",
              "label disagreements", "shards", "bytes"]
    rows = [[name, *(s.get(k, 0) for k in ("read", "samples", "rejected", "duplicates", "near_duplicates",
                                           "with_boxes", "boxes", "label_disagreements")),
             len(s.get("shards", [])), s.get("bytes", 0)] for name, s in r.splits.items()]
    config = ", ".join(f"{k}={v}" for k, v in (m.get("config") or {}).items() if v not in (None, [], "", 0, False))
    return (table(["", ""], facts) + table(header, rows, "counts per split (read = samples + rejected)")
            + f"<p>config: <code>{e(config)}</code></p>")


def classes(r: Report) -> str:
    """The images of each class in each split, from the index's labels, sorted from the most to the fewest."""
    series, notes, extremes = [], [], []
    for split in r.splits:
        labels = r.column(split, "label").astype(np.int64)
        counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
        present = np.flatnonzero(counts)
        if (labels < 0).any():
            notes.append(f"{split}: {int((labels < 0).sum()):,} unlabelled images (label -1).")
        if not len(present):
            continue
        order = present[np.argsort(-counts[present], kind="stable")]
        names = [r.class_name(int(label)) for label in order]
        series.append((split, counts[order], names))
        notes.append(f"{split}: {len(present):,} of the manifest's {len(r.classes):,} classes have images; fewest "
                     f"{counts[order[-1]]:,}, median {np.median(counts[order]):,.0f}, most {counts[order[0]]:,}.")
        if len(order) > plots.LABELLED_BARS:
            extremes += [[split, "most", n, int(counts[label])] for label, n in zip(order[:5], names[:5])]
            extremes += [[split, "fewest", n, int(counts[label])] for label, n in zip(order[-5:], names[-5:])]
    dropped = [[d.get("wnid", ""), d.get("name", ""), d.get("images", 0)]
               for d in r.manifest.get("dropped_classes", [])]
    return ("".join(note(n) for n in notes)
            + (figure(plots.class_counts_figure(series), "images per class") if series else note("No labelled image."))
            + (table(["split", "which", "class", "images"], extremes, "the classes with the most and the fewest images")
               if extremes else "")
            + (table(["wnid", "name", "images"], dropped, "classes left out (--min-per-class)") if dropped else ""))


def rejects(r: Report, examples: int) -> str:
    """The rejects by reason and split, with examples, from the rejects tables; orphans and damaged archives."""
    panels, parts = [], []
    for title, key in (("samples rejected", "rejects"), ("annotation files set aside", "annotation_rejects")):
        tables = [r.read_table(p, REJECT_COLUMNS) for p in r.manifest.get(key, [])]
        rows = pa.concat_tables(tables).to_pylist() if tables else []
        by_reason: dict[str, dict[str, int]] = {}
        for row in rows:
            by_reason.setdefault(row["reason"], {}).setdefault(row["split"], 0)
            by_reason[row["reason"]][row["split"]] += 1
        if not rows:
            parts.append(note(f"{title[0].upper()}{title[1:]}: none."))
            continue
        panels.append((f"{title}: {len(rows):,}", by_reason))
        shown = [x for reason in sorted(by_reason) for x in [x for x in rows if x["reason"] == reason][:examples]]
        parts.append(table(["reason", "split", "key", "source", "detail"], [[x[c] for c in REJECT_COLUMNS]
                                                                             for x in shown],
                           f"{title}: up to {examples} examples of each reason"))
    damaged = [[d["split"], d["source"], d["detail"], d["readable_bytes"], d["bytes"]]
               for d in r.manifest.get("damaged_archives", [])]
    return ((figure(plots.rejects_figure(panels), "rejects by reason") if panels else "") + "".join(parts)
            + note(f"Annotation files that match no image (orphans): {r.manifest.get('orphan_annotations', 0):,}.")
            + (table(["split", "archive", "detail", "readable bytes", "bytes"], damaged, "damaged archives")
               if damaged else ""))


def duplicates(r: Report, examples: int) -> str:
    """The byte duplicates (with examples) and the near-duplicate pairs: by pair of splits, by distance, and
    a few pairs side by side, those across splits (possible leakage) first."""
    counts, shown = [], []
    for split, s in r.splits.items():
        counts.append([split, s.get("duplicates", 0), s.get("near_duplicates", 0)])
        positions = np.flatnonzero(r.column(split, "duplicate_of", valid=True))[:examples]
        shown += [[split, x["key"], x["duplicate_of"], x["source"]] for x in r.rows(split, positions)]
    parts = [table(["split", "byte duplicates", "near-duplicates"], counts,
                   "samples that have a duplicate_of (the same source bytes) or a near_duplicate_of")]
    if shown:
        parts.append(table(["split", "key", "duplicate_of", "source"], shown, "byte duplicates (examples)"))
    near = r.manifest.get("near_duplicates")
    if not near:
        return "".join(parts) + note("The near-duplicate search was off (--near-duplicate-distance off).")
    parts.append(note(f"Near-duplicates: perceptual hashes within {near['max_distance']} bits; "
                      f"{near['samples']:,} samples searched, {near['pairs']:,} pairs, "
                      f"{near.get('unlisted', 0):,} unlisted (inside groups of identical hashes)."))
    parts.append(table(["splits", "pairs"], list((near.get("by_split_pair") or {}).items())))
    if not near.get("pairs"):
        return "".join(parts)
    pairs = r.read_table(near["path"], PAIR_COLUMNS)
    ends = [sorted(ab, key=split_order) for ab in zip(pairs["split_a"].to_pylist(), pairs["split_b"].to_pylist())]
    kinds = np.array([f"{a}-{b}" for a, b in ends])
    distances = pairs["distance"].to_numpy().astype(np.int64)
    parts.append(figure(plots.distance_figure(distances, kinds, int(near["max_distance"])), "pairs by distance"))
    # Pairs across splits first (possible leakage), then the others, each group in a seeded order.
    cross = np.flatnonzero([a != b for a, b in ends])
    rng = r.rng("near-duplicates")
    chosen = [*rng.permutation(cross), *rng.permutation(np.setdiff1d(np.arange(len(ends)), cross))]
    shown_pairs = pairs.take(chosen[:EXAMPLE_TILES]).to_pylist()
    wanted: dict[str, set] = {}
    for p in shown_pairs:
        wanted.setdefault(p["split_a"], set()).add(p["key_a"])
        wanted.setdefault(p["split_b"], set()).add(p["key_b"])
    found = {(split, key): row for split, keys in wanted.items() for key, row in r.rows_by_key(split, keys).items()}
    boxes = []
    for p in shown_pairs:
        a, b = found.get((p["split_a"], p["key_a"])), found.get((p["split_b"], p["key_b"]))
        if a and b:
            boxes.append(f'<div class="pair">{tiles(r, [a, b])}<p>distance {p["distance"]} bits</p></div>')
    return "".join(parts) + f'<div class="pairs">{"".join(boxes)}</div>'


def disagreements(r: Report) -> str:
    """The samples whose label is not among the classes that their boxes name, with a few of them drawn."""
    counts: list[list] = []
    shown: list[dict] = []
    for split, s in r.splits.items():
        positions = np.flatnonzero(r.column(split, "label_disagrees"))
        counts.append([split, s.get("label_disagreements", len(positions))])
        shown += r.rows(split, r.sample(positions, max(0, EXAMPLE_TILES - len(shown)), f"disagreements {split}"))
    return (note("A label disagrees with its boxes when the annotation names classes and the label is not one of "
                 "them (the index column label_disagrees). The caption of each example names its label, then the "
                 "classes its boxes name.")
            + table(["split", "label disagreements"], counts) + (tiles(r, shown) if shown else ""))


def samples(r: Report, per_split: int) -> str:
    """The contact sheet: seeded random samples of each split with their labels and boxes."""
    parts = []
    for split in r.splits:
        rows = r.index(split).num_rows
        chosen = r.rows(split, r.sample(np.arange(rows), per_split, f"samples {split}"))
        if chosen:
            parts.append(f"<h3>{e(split)}: {len(chosen)} of {rows:,} samples (seed {r.seed})</h3>{tiles(r, chosen)}")
    return "".join(parts) or note("No sample.")


# --- writing it -----------------------------------------------------------------------------------

def write_report(root: str, output: Optional[str] = None, *, samples_per_split: int = 24, seed: int = 0,
                 examples: int = 3) -> tuple[str, int]:
    """Write the report of the build at `root` to `output` (default: report.html in its version
    folder); return where it went and its size in bytes."""
    r = Report(root, seed)
    try:
        tables = [(split, r.index(split)) for split in r.splits]
        target = (r.manifest.get("config") or {}).get("shard_size")
        sections = {"overview": overview(r), "classes": classes(r), "sizes": plots.sizes_section(tables, seed),
                    "shards": plots.shards_section([(k, s.get("shards", [])) for k, s in r.splits.items()],
                                                   target if isinstance(target, int) else None),
                    "rejects": rejects(r, examples), "duplicates": duplicates(r, examples),
                    "boxes": plots.boxes_section(tables), "disagreements": disagreements(r),
                    "samples": samples(r, samples_per_split)}
    finally:
        r.close()
    text = page(r, sections).encode("utf-8")
    output = output or posixpath.join(r.version, REPORT_NAME)
    with atomic_write(output) as f:
        f.write(text)
    return output, len(text)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the report's arguments to `parser` (the `report` subcommand)."""
    parser.add_argument("out", metavar="OUT", help="the dataset root (its current version), or a version folder")
    parser.add_argument("--output", metavar="PATH", default=None,
                        help=f"where to write the report (default: {REPORT_NAME} in the version's folder)")
    parser.add_argument("--samples", type=int, default=24, metavar="N",
                        help="random samples of each split on the contact sheet (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of every random choice (default 0)")
    parser.add_argument("--examples", type=int, default=3, metavar="N",
                        help="examples shown of each reject reason and of byte duplicates (default 3)")


def run_report(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """Write the report that `args` asks for, and say where it went. Returns the exit status: 0 when it
    is written, 2 when OUT holds no build (or a file that its manifest lists is missing), 1 when the
    report cannot be written."""
    started = time.monotonic()
    try:
        path, size = write_report(args.out, args.output, samples_per_split=args.samples, seed=args.seed,
                                  examples=args.examples)
    except FileNotFoundError as error:  # OUT holds no build, or the manifest lists a file that is gone
        say(f"imagenet-shards: error: {error}")
        return 2
    except OSError as error:  # the report could not be written (a read-only store: give --output)
        say(f"imagenet-shards: error: the report could not be written: {error}")
        return 1
    say(f"report: {path} ({size / 1e6:.1f} MB, {time.monotonic() - started:.1f} s)")
    return 0
