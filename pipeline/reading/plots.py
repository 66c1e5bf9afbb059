"""The pictures and the HTML pieces of the report (pipeline/reading/report.py), and the sections
that need nothing but numbers already read (sizes, shards, boxes).

Every plot is a matplotlib Figure drawn with the Agg renderer and embedded as a PNG. The report uses
matplotlib's object-oriented API (`matplotlib.figure.Figure`), never pyplot: a Figure saved to PNG is
drawn by Agg whatever backend the process has selected, and nothing global is kept or changed, so
that the report can be written from a notebook or a thread without side effects. Thumbnails of
samples are JPEGs drawn with PIL, their boxes outlined in red. The HTML pieces (tables, figures,
tiles of thumbnails, the style sheet) escape every text they are given: sources, reject details and
box names come from the input archives, which anyone may have written.
"""
from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LABELLED_BARS", "STYLE", "png_uri", "class_counts_figure", "sizes_figure", "shard_bytes_figure",
           "rejects_figure", "distance_figure", "boxes_figure", "thumbnail_uri", "escape", "html_table",
           "html_figure", "html_tiles", "html_note", "sizes_section", "shards_section", "boxes_section"]

DPI = 96
WIDTH = 11.0  # inches: 1,056 pixels at DPI
# matplotlib's tab10: the usual splits keep the first three, other splits and pairs of splits take the rest
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
SPLIT_COLOURS = {"train": PALETTE[0], "val": PALETTE[1], "test": PALETTE[2]}
LABELLED_BARS = 40  # up to this many classes, each class gets a bar with its name
SCATTER_POINTS = 4000  # points of a size scatter plot per split (a seeded sample of the index rows)
CDF_POINTS = 1001  # quantiles that draw a cumulative distribution
THUMBNAIL = 176  # the longer side of a thumbnail, in pixels
BOX_COLOUR = (255, 32, 32)


def colour(split: str) -> str:
    """The colour of a split, the same in every plot: the usual splits keep theirs, another split takes
    one of the other colours by its name."""
    return SPLIT_COLOURS.get(split) or PALETTE[3 + sum(split.encode()) % (len(PALETTE) - 3)]


def new_figure(**options) -> Figure:
    """A matplotlib Figure. matplotlib is imported here, when a report draws its first plot, and not
    with the module: the command line imports this module, and every build would pay matplotlib's
    0.2 s import."""
    from matplotlib.figure import Figure  # a deferred import, see above

    return Figure(**options)


def integer_locator():
    """Axis ticks at whole numbers only (matplotlib imported as in new_figure)."""
    from matplotlib.ticker import MaxNLocator  # a deferred import, see new_figure

    return MaxNLocator(integer=True)


def png_uri(figure: Figure) -> str:
    """The figure as a PNG data: URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def class_counts_figure(series: Sequence[tuple[str, np.ndarray, list[str]]]) -> Figure:
    """Images per class, one panel per split: (split, counts sorted from the most, class names).
    Up to LABELLED_BARS classes, one named bar each; more, the sorted counts as bars by rank."""
    heights = [max(2.2, 0.2 * len(counts) + 0.8) if len(counts) <= LABELLED_BARS else 2.8
               for _, counts, _ in series]
    figure = new_figure(figsize=(WIDTH, sum(heights)), layout="constrained")
    axes = figure.subplots(len(series), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (split, counts, names) in zip(axes, series):
        if len(counts) <= LABELLED_BARS:
            ax.barh(np.arange(len(counts)), counts, color=colour(split))
            ax.set_yticks(np.arange(len(counts)), names, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("images")
            for y, n in enumerate(counts):
                ax.annotate(f"{n:,}", (n, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        else:
            ax.stairs(counts, np.arange(len(counts) + 1) + 0.5, fill=True, color=colour(split))
            ax.axhline(float(np.median(counts)), color="black", linewidth=0.8, linestyle="--",
                       label=f"median {np.median(counts):,.0f}")
            ax.set_xlim(0.5, len(counts) + 0.5)
            ax.set_xlabel("classes, from the most images to the fewest")
            ax.set_ylabel("images")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{split}: {len(counts):,} classes, {int(np.sum(counts)):,} images", fontsize=10, loc="left")
    return figure


def sizes_figure(splits: Sequence[tuple[str, dict]], seed: int) -> Figure:
    """Original and stored sizes, every split in each panel: (split, {column: numpy array}) with the
    index columns orig_width, orig_height, width, height and size. The scatter plots show a seeded
    sample of each split; the cumulative distributions show every image, so that splits of any size
    compare on one axis."""
    figure = new_figure(figsize=(WIDTH, 8.4), layout="constrained")
    (orig, stored), (pixels, nbytes) = figure.subplots(2, 2)
    rng = np.random.default_rng(seed)
    for split, columns in splits:
        c, n = colour(split), len(columns["width"])
        pick = np.sort(rng.choice(n, SCATTER_POINTS, replace=False)) if n > SCATTER_POINTS else slice(None)
        orig.scatter(columns["orig_width"][pick], columns["orig_height"][pick], s=6, alpha=0.5, color=c, label=split)
        stored.scatter(columns["width"][pick], columns["height"][pick], s=6, alpha=0.5, color=c, label=split)
        cdf(pixels, columns["orig_width"].astype(np.float64) * columns["orig_height"] / 1e6, c, split)
        cdf(nbytes, columns["size"] / 1024, c, split)
    for ax, title, x, y in ((orig, "original sizes", "width", "height"),
                            (stored, "stored sizes", "width", "height"),
                            (pixels, "original pixels", "megapixels", "share of the split's images at or below"),
                            (nbytes, "stored JPEG bytes", "KiB", "share of the split's images at or below")):
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if ax.has_data():
            ax.legend(fontsize=8, loc="upper left" if ax in (orig, stored) else "lower right")
    return figure


def cdf(ax, values: np.ndarray, c: str, split: str) -> None:
    """The cumulative distribution of values, drawn through CDF_POINTS quantiles (a line through every
    one of a million values would cost seconds to draw and show nothing more)."""
    shares = np.linspace(0, 1, min(len(values), CDF_POINTS))
    ax.step(np.quantile(values, shares), shares, where="post", color=c, label=split)


def shard_bytes_figure(splits: Sequence[tuple[str, np.ndarray]], target: Optional[int]) -> Figure:
    """Bytes per shard, one panel per split, in shard order; a dashed line at the target shard size."""
    figure = new_figure(figsize=(WIDTH, 2.4 * len(splits)), layout="constrained")
    axes = figure.subplots(len(splits), 1, squeeze=False)[:, 0]
    for ax, (split, sizes) in zip(axes, splits):
        if len(sizes) <= 200:
            ax.bar(np.arange(len(sizes)), sizes / 1e6, width=0.9, color=colour(split))
        else:  # one filled outline: thousands of bars would take seconds to draw
            ax.stairs(sizes / 1e6, np.arange(len(sizes) + 1) - 0.5, fill=True, color=colour(split))
        if target:
            ax.axhline(target / 1e6, color="black", linewidth=0.8, linestyle="--", label=f"--shard-size {target:,} B")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{split}: {len(sizes):,} shards", fontsize=10, loc="left")
        ax.xaxis.set_major_locator(integer_locator())
        ax.set_xlabel("shard")
        ax.set_ylabel("MB")
    return figure


def rejects_figure(panels: Sequence[tuple[str, dict[str, dict[str, int]]]]) -> Figure:
    """Rejects by reason, one panel per kind (samples, annotation files): {reason: {split: count}},
    one bar per reason with a segment per split."""
    heights = [0.3 * len(by_reason) + 1.0 for _, by_reason in panels]
    figure = new_figure(figsize=(WIDTH, sum(heights)), layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (title, by_reason) in zip(axes, panels):
        reasons = sorted(by_reason, key=lambda r: (-sum(by_reason[r].values()), r))
        splits = sorted({s for counts in by_reason.values() for s in counts})
        left = np.zeros(len(reasons))
        for split in splits:
            counts = np.array([by_reason[r].get(split, 0) for r in reasons])
            ax.barh(np.arange(len(reasons)), counts, left=left, color=colour(split), label=split)
            left += counts
        ax.set_yticks(np.arange(len(reasons)), reasons, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("count")
        ax.legend(fontsize=8, loc="lower right")
    return figure


def distance_figure(distances: np.ndarray, pair_kinds: np.ndarray, max_distance: int) -> Figure:
    """Near-duplicate pairs by Hamming distance, a segment per pair of splits (train-val...)."""
    figure = new_figure(figsize=(WIDTH, 2.8), layout="constrained")
    ax = figure.subplots()
    x = np.arange(max_distance + 1)
    bottom = np.zeros(len(x))
    for order, kind in enumerate(dict.fromkeys(pair_kinds.tolist())):
        counts = np.bincount(distances[pair_kinds == kind], minlength=len(x))[: len(x)]
        ax.bar(x, counts, bottom=bottom, color=PALETTE[order % len(PALETTE)], label=kind)
        bottom += counts
    ax.set_xticks(x)
    ax.set_xlabel("distance between the perceptual hashes (bits of 64)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8, loc="upper left")
    return figure


def boxes_figure(splits: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> Figure:
    """Boxes per image and box areas: (split, boxes of each image, area of each box as a share of its image)."""
    figure = new_figure(figsize=(WIDTH, 3.2), layout="constrained")
    per_image, areas = figure.subplots(1, 2)
    width = 0.8 / max(1, len(splits))
    for order, (split, counts, area) in enumerate(splits):
        c = colour(split)
        shares = np.bincount(np.minimum(counts, 10), minlength=11) / max(1, len(counts)) * 100
        per_image.bar(np.arange(11) + (order - (len(splits) - 1) / 2) * width, shares, width=width, color=c,
                      label=split)
        if len(area):
            areas.hist(area, bins=np.linspace(0, 1, 21), histtype="step", density=True, color=c, linewidth=1.5,
                       label=split)
    per_image.set_xticks(np.arange(11), [str(i) for i in range(10)] + ["10+"])
    per_image.set_title("boxes per image", fontsize=10, loc="left")
    per_image.set_xlabel("boxes")
    per_image.set_ylabel("% of the split's images")
    areas.set_title("box area (share of the image)", fontsize=10, loc="left")
    areas.set_xlabel("area of the box / area of the image")
    areas.set_ylabel("density")
    for ax in (per_image, areas):
        if ax.has_data():
            ax.legend(fontsize=8, loc="upper right")
    return figure


def thumbnail_uri(jpeg: bytes, boxes: Sequence[Sequence[float]]) -> str:
    """A JPEG data: URI of the image scaled to THUMBNAIL pixels on its longer side, with its boxes
    ([xmin, ymin, xmax, ymax], normalised) outlined. An image that cannot be decoded gives a grey
    tile that says so, so that one damaged sample does not stop the report."""
    try:
        with Image.open(io.BytesIO(jpeg)) as source:
            source.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG's DCT scaling: decode no more than needed
            image = source.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
    except (OSError, ValueError, Image.DecompressionBombError):
        image = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (200, 200, 200))
        ImageDraw.Draw(image).text((8, THUMBNAIL // 2 - 6), "cannot be decoded", fill=(0, 0, 0))
        boxes = ()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * (w - 1), y0 * (h - 1), x1 * (w - 1), y1 * (h - 1)], outline=BOX_COLOUR, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, subsampling=0)  # 4:4:4: thin red lines stay red
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- HTML pieces ------------------------------------------------------------------------------------

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-top:12px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:4px 0}figure{margin:8px 0}figure img{max-width:100%}
nav a{margin-right:12px}.sheet{display:flex;flex-wrap:wrap;gap:10px}.tile{width:180px;margin:0;font-size:11px}
.tile img{display:block;max-width:176px;max-height:176px}.pairs{display:flex;flex-wrap:wrap;gap:16px}
.pair{border:1px solid #ddd;padding:6px}.pair p{margin:4px 0 0}code{font-size:12px}"""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def html_table(header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> str:
    """A table (with no header row when every heading is empty); integers are right-aligned, with
    thousands separators."""
    def cell(v) -> str:
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            return f'<td class="n">{v:,}</td>'
        return f"<td>{escape(v)}</td>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{title}{f'<tr>{head}</tr>' if any(header) else ''}{body}</table>"


def html_figure(figure: Figure, alt: str) -> str:
    return f'<figure><img src="{png_uri(figure)}" alt="{escape(alt)}"></figure>'


def html_tiles(uris: Sequence[str], alts: Sequence[str], captions: Sequence[str]) -> str:
    """Thumbnails side by side, each with its caption (HTML, escaped by the caller)."""
    cells = [f'<figure class="tile"><img src="{uri}" alt="{escape(alt)}"><figcaption>{text}</figcaption></figure>'
             for uri, alt, text in zip(uris, alts, captions)]
    return f'<div class="sheet">{"".join(cells)}</div>'


def html_note(text: str) -> str:
    return f"<p>{escape(text)}</p>"


# --- sections made of numbers already read --------------------------------------------------------

def _column(table: pa.Table, name: str) -> np.ndarray:
    """An index column as numpy (zeros where an index of an earlier release lacks it)."""
    if name not in table.column_names:
        return np.zeros(table.num_rows, dtype=np.int64)
    return table.column(name).to_numpy(zero_copy_only=False)


def sizes_section(tables: Sequence[tuple[str, pa.Table]], seed: int) -> str:
    """Original and stored sizes of each split's images, from its index columns, and their formats."""
    splits, rows = [], []
    for split, index in tables:
        if not index.num_rows:
            continue
        columns = {c: _column(index, c) for c in ("orig_width", "orig_height", "width", "height", "size")}
        splits.append((split, columns))
        formats = pc.value_counts(index.column("orig_format")).to_pylist() if "orig_format" in index.column_names \
            else []
        shares = ", ".join(f"{f['values']} {f['counts'] / index.num_rows:.1%}"
                           for f in sorted(formats, key=lambda f: -f["counts"]))
        rows.append([split, f"{np.median(columns['orig_width']):.0f}x{np.median(columns['orig_height']):.0f}",
                     f"{np.median(columns['width']):.0f}x{np.median(columns['height']):.0f}",
                     int(np.median(columns["size"])), int(columns["size"].max()),
                     f"{_column(index, 'reencoded').mean():.1%}", shares])
    if not splits:
        return html_note("No stored image.")
    return (html_figure(sizes_figure(splits, seed), "original and stored sizes")
            + html_table(["split", "median original size", "median stored size", "median stored bytes",
                          "largest stored bytes", "re-encoded", "source formats"], rows))


def shards_section(splits: Sequence[tuple[str, list[dict]]], target: Optional[int]) -> str:
    """Bytes and samples per shard, from the manifest's shard entries of each split."""
    series, rows = [], []
    for split, entries in splits:
        if not entries:
            continue
        nbytes = np.array([x["bytes"] for x in entries], dtype=np.float64)
        samples = np.array([x["samples"] for x in entries])
        series.append((split, nbytes))
        rows.append([split, len(entries), int(samples.min()), int(np.median(samples)), int(samples.max()),
                     int(nbytes.min()), int(np.median(nbytes)), int(nbytes.max())])
    if not series:
        return html_note("No shard.")
    return (html_figure(shard_bytes_figure(series, target), "bytes per shard")
            + html_table(["split", "shards", "fewest samples", "median samples", "most samples", "fewest bytes",
                          "median bytes", "most bytes"], rows))


def boxes_section(tables: Sequence[tuple[str, pa.Table]]) -> str:
    """Boxes per image and box areas, from each split's `boxes` index column."""
    rows, splits = [], []
    for split, index in tables:
        if "boxes" not in index.column_names or not index.num_rows:
            continue
        column = index.column("boxes")
        counts = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(pc.list_flatten(column)).to_numpy(zero_copy_only=False).reshape(-1, 4)
        area = np.clip(flat[:, 2] - flat[:, 0], 0, 1) * np.clip(flat[:, 3] - flat[:, 1], 0, 1)
        with_boxes = int((counts > 0).sum())
        rows.append([split, index.num_rows, with_boxes, int(counts.sum()),
                     f"{counts.sum() / with_boxes:.2f}" if with_boxes else "",
                     int(_column(index, "loc_blacklisted").sum())])
        if with_boxes:
            splits.append((split, counts, area))
    return (html_table(["split", "images", "with boxes", "boxes", "boxes per image with boxes",
                        "in the localisation blacklist"], rows)
            + (html_figure(boxes_figure(splits), "boxes per image") if splits else html_note("No image has a box.")))
