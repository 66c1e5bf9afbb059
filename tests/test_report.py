"""`imagenet-shards report OUT` (pipeline/reading/report.py): one self-contained HTML file.

A real build of a release with planted faults (rejects of every kind, byte duplicates, a label that
its boxes disagree with, broken annotation files) and planted near-duplicates gets its report. The
report must be one file that references nothing outside itself, hold every section, and say what
the manifest and the index say. Then headless Chromium renders it: the screenshot must not be blank,
and every image of the page must have loaded. For that check, the test appends a script to a copy
of the report (the report itself has no script and no test hook): once the page has loaded, the
script writes which images are not `complete` with a `naturalWidth` above zero into the page, and
`chromium --dump-dom` prints the page with that verdict. The copy also holds one image that cannot
load, so that the check is shown to catch one.
"""
import argparse
import base64
import html.parser
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageStat

from pipeline.reading import plots
from pipeline.reading.report import REPORT_NAME, SECTIONS, add_report_arguments, run_report, write_report

# The reading side of a finished build: no Beam in the code under test, so `make test-beam-lowest` leaves it out.
pytestmark = pytest.mark.readers

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make test` installs Debian's chromium through "
                             "packaging/install-chromium.sh when run as root)")

# Appended to a copy of the report: after the load event, the images that did not load, as JSON in the page.
IMAGE_CHECK = """<img src="data:image/png;base64,AAAA" alt="deliberately-broken">
<script>window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.alt; });
  var out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken});
  document.body.appendChild(out);
});</script>"""


@pytest.fixture(scope="module")
def built(built_with_near_copies):
    """The release with planted faults, byte duplicates, boxes and near-duplicates, built once for the
    session (conftest)."""
    return built_with_near_copies


def report_command(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture(scope="module")
def report(built):
    """The report written where it goes by default, through the command's own entry point."""
    said = []
    assert run_report(report_command(built.root), said.append) == 0
    path = built.out / REPORT_NAME
    assert said == [said[0]] and str(path) in said[0], said
    return path


class Page(html.parser.HTMLParser):
    """Every tag with its attributes, the sections' ids and text, and the page's text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list = []
        self.text: list = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def sections(text: str) -> dict:
    """{section id: its HTML}."""
    return dict(re.findall(r'<section id="([a-z]+)">(.*?)</section>', text, flags=re.S))


# --- the file ----------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_the_report_is_one_file_that_references_nothing_outside_it(built, report):
    text = report.read_text(encoding="utf-8")
    page = Page(text)
    assert sorted(p.name for p in built.out.iterdir() if p.name.startswith(".")) == []  # no temporary left
    assert "http://" not in text and "https://" not in text
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        for name, value in attrs.items():
            if name in ("src", "srcset", "poster", "data", "action", "formaction"):
                assert value.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), (tag, value[:80])
            if name == "href":
                assert value.startswith("#") and value[1:] in SECTIONS, value
            assert not name.startswith("on"), (tag, name)  # no script in an attribute either
    assert "url(" not in text and "@import" not in text
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    for uri in images:
        kind, data = uri.split(",", 1)
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            image.load()
            assert image.format == ("PNG" if "png" in kind else "JPEG")
    assert len(images) > 20


@pytest.mark.e2e
def test_every_section_is_there_and_says_what_the_build_holds(built, report):
    text = report.read_text(encoding="utf-8")
    found = sections(text)
    assert list(found) == list(SECTIONS)
    for key, title in SECTIONS.items():
        assert f"<h2>{title}</h2>" in found[key]
    m = built.manifest
    # The overview's counts are the manifest's.
    for split, s in m["splits"].items():
        row = f"<td>{split}</td>" + "".join(f'<td class="n">{s[k]:,}</td>' for k in ("read", "samples", "rejected"))
        assert row in found["overview"], split
    # Every plot is there.
    for key in ("classes", "sizes", "shards", "rejects", "duplicates", "boxes"):
        assert "data:image/png;base64," in found[key], key
    # Every reject reason, with an example of its own, and each broken annotation file.
    for reason in [*m["rejects_by_reason"], *m["annotation_rejects_by_reason"]]:
        assert f"<td>{reason}</td>" in found["rejects"], reason
    rejected = pq.read_table([str(built.path(p)) for p in m["rejects"] + m["annotation_rejects"]]).to_pylist()
    assert any(f"<td>{r['key']}</td>" in found["rejects"] for r in rejected)
    # Byte duplicates by key, near-duplicate pairs with their thumbnails.
    duplicates = [r for p in m["splits"]["train"]["index"] for r in pq.read_table(built.path(p)).to_pylist()
                  if r["duplicate_of"]]
    assert duplicates and all(f"<td>{r['key']}</td><td>{r['duplicate_of']}</td>" in found["duplicates"]
                              for r in duplicates[:3])
    assert m["near_duplicates"]["pairs"] > 0
    assert found["duplicates"].count('class="pair"') == min(8, m["near_duplicates"]["pairs"])
    # The label that its boxes disagree with, shown with its boxes.
    disagreeing = [r for p in m["splits"]["val"]["index"] for r in pq.read_table(built.path(p)).to_pylist()
                   if r["label_disagrees"]]
    assert len(disagreeing) == m["splits"]["val"]["label_disagreements"] == 1
    assert disagreeing[0]["key"] in found["disagreements"]
    assert f"{len(disagreeing[0]['boxes'])} box" in found["disagreements"]
    # The contact sheet: 24 samples of each split (all of a smaller one), keys of the split's index.
    for split, s in m["splits"].items():
        assert f"<h3>{split}: {min(24, s['samples'])} of {s['samples']:,} samples (seed 0)</h3>" in found["samples"]
    keys = {r["key"] for s in m["splits"].values() for p in s["index"] for r in pq.read_table(
        built.path(p), columns=["key"]).to_pylist()}
    shown = re.findall(r'<figure class="tile"><img src="data:image/jpeg;base64,[^"]+" alt="([^"]+)"', found["samples"])
    assert len(shown) == sum(min(24, s["samples"]) for s in m["splits"].values())
    assert set(shown) <= keys and len(set(shown)) == len(shown)


@pytest.mark.e2e
def test_the_same_seed_gives_the_same_report_and_another_seed_other_samples(built, report, tmp_path):
    again, _ = write_report(str(built.root), str(tmp_path / "again.html"))
    assert Path(again).read_bytes() == report.read_bytes()
    said = []
    assert run_report(report_command(built.out, "--output", tmp_path / "seed7.html", "--seed", "7",
                                     "--samples", "5"), said.append) == 0
    other = sections((tmp_path / "seed7.html").read_text())["samples"]
    assert "<h3>train: 5 of" in other and other != sections(report.read_text())["samples"]


@pytest.mark.e2e
def test_a_build_on_an_object_store_is_reported_there(built):
    """Index files, rejects and images read through fsspec (memory://), and the report written there."""
    fs = fsspec.filesystem("memory")
    for path in built.out.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"/report-store/{path.relative_to(built.out)}", path.read_bytes())
    try:
        output, size = write_report("memory://report-store")
        text = fs.cat_file("/report-store/report.html").decode()
    finally:
        fs.rm("/report-store", recursive=True)
    assert output == "memory://report-store/report.html"
    assert len(text) == size and list(sections(text)) == list(SECTIONS)
    assert text == (built.out / REPORT_NAME).read_text()  # the same seed, the same report


@pytest.mark.e2e
def test_an_older_manifest_without_the_newer_fields_still_gets_a_report(built, tmp_path):
    """A build with the near-duplicate search off, and a manifest without the box counts."""
    copy = tmp_path / "older"
    shutil.copytree(built.out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["near_duplicates"] = None
    for s in manifest["splits"].values():
        for key in ("with_boxes", "boxes", "label_disagreements", "near_duplicates"):
            del s[key]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    text = Path(write_report(str(copy), str(tmp_path / "older.html"))[0]).read_text()
    assert list(sections(text)) == list(SECTIONS)
    assert "The near-duplicate search was off" in sections(text)["duplicates"]


def test_a_folder_without_a_build_is_an_error(tmp_path):
    said = []
    assert run_report(report_command(tmp_path), said.append) == 2
    assert said and said[0].startswith("imagenet-shards: error:") and "no published build" in said[0]
    assert not (tmp_path / REPORT_NAME).exists()


# --- the pieces --------------------------------------------------------------------------------------

def test_text_from_the_inputs_is_escaped():
    hostile = '<script>alert("x")</script>&'
    cell = plots.html_table([hostile], [[hostile, 1234]], caption=hostile)
    assert "<script>" not in cell and "&lt;script&gt;" in cell and '<td class="n">1,234</td>' in cell
    assert "<script>" not in plots.html_note(hostile)
    tile = plots.html_tiles(["data:image/png;base64,AA"], ['"><script>'], ["caption"])
    assert "<script>" not in tile


def test_a_thumbnail_has_its_boxes_drawn_and_a_broken_image_gives_a_tile():
    buffer = io.BytesIO()
    Image.new("RGB", (400, 200), (0, 90, 0)).save(buffer, format="JPEG")
    uri = plots.thumbnail_uri(buffer.getvalue(), [[0.25, 0.25, 0.75, 0.75]])
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert image.size == (plots.THUMBNAIL, plots.THUMBNAIL // 2)
    edge = pixels[pixels.shape[0] // 2, int(0.25 * (image.width - 1))]  # on the box's left edge
    inside = pixels[pixels.shape[0] // 2, image.width // 2]
    assert edge[0] > 180 and edge[1] < 90, edge  # red
    assert inside[0] < 60 and inside[1] > 60, inside  # the image's own green
    broken = plots.thumbnail_uri(b"not a jpeg", [[0, 0, 1, 1]])
    with Image.open(io.BytesIO(base64.b64decode(broken.split(",", 1)[1]))) as image:
        assert image.size == (plots.THUMBNAIL, plots.THUMBNAIL)


# --- in a browser ------------------------------------------------------------------------------------

def chromium(*args, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
@needs_chromium
def test_headless_chromium_renders_the_report_and_every_image_loads(report, tmp_path):
    screenshot = tmp_path / "report.png"
    proc = chromium(f"--screenshot={screenshot}", "--window-size=1280,4000", report.as_uri(),
                    profile=tmp_path / "profile-1")
    assert proc.returncode == 0 and screenshot.exists(), proc.stderr[-2000:]
    with Image.open(screenshot) as shot:
        assert shot.size == (1280, 4000)
        grey = shot.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 20  # a blank page has none
        dark = np.asarray(grey) < 200
        assert dark.mean() > 0.05 and dark[:, 640:].mean() > 0.01  # drawn on, and across the page's width

    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text(encoding="utf-8").replace("</body>", IMAGE_CHECK + "</body>"),
                       encoding="utf-8")
    proc = chromium("--dump-dom", checked.as_uri(), profile=tmp_path / "profile-2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdict = re.search(r'<pre id="image-check">(.*?)</pre>', proc.stdout)
    assert verdict, "the check script did not run: " + proc.stdout[-500:]
    result = json.loads(html.unescape(verdict.group(1)))
    images = report.read_text(encoding="utf-8").count("<img ")
    assert result == {"images": images + 1, "broken": ["deliberately-broken"]}
