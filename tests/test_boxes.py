"""Boxes through --exif-transpose: the same region of the picture, whatever the orientation."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, version_of
from PIL import Image

from transforms.boxes import orient_boxes
from transforms.image import EXIF_TRANSPOSE

pytestmark = pytest.mark.inputs  # see pytest.ini


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_boxes_follows_pils_transpose(orientation):
    w, h = 160, 90
    box = (0.1, 0.2, 0.45, 0.9)
    pixels = np.zeros((h, w), np.uint8)
    pixels[int(box[1] * h):int(box[3] * h), int(box[0] * w):int(box[2] * w)] = 255
    im = Image.fromarray(pixels)
    if orientation in EXIF_TRANSPOSE:
        im = im.transpose(EXIF_TRANSPOSE[orientation])
    x0, y0, x1, y1 = im.getbbox()
    want = (x0 / im.width, y0 / im.height, x1 / im.width, y1 / im.height)
    (got,) = orient_boxes([box], orientation)
    assert got == pytest.approx(want, abs=1.5 / 90)


@pytest.mark.e2e
def test_exif_transpose_build_rotates_pixels_and_boxes(release, tmp_path):
    out = tmp_path / "out"
    run_cli("build", release.root, "--out", out, "--no-progress", "--max-reject-rate", "0.5", "--splits", "val",
            "--exif-transpose", check_code=0)
    out = version_of(out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["exif_transpose"] is True
    rows = pq.read_table([str(out / p) for p in m["splits"]["val"]["index"]]).to_pylist()
    rotated = [r for r in rows if r["exif_orientation"] == 6]
    assert rotated, "the sample plants an EXIF-rotated val image"
    for r in rotated:
        e = release.expected["val"][r["key"]]
        assert (r["width"], r["height"]) == (r["orig_height"], r["orig_width"])  # shown upright: sides swap
        assert r["reencoded"]
        assert len(r["boxes"]) == len(e.boxes) > 0
        for got, want in zip(r["boxes"], orient_boxes(e.boxes, 6)):
            assert got == pytest.approx(want, abs=1e-6)
    for r in rows:
        if r["exif_orientation"] in (None, 1):
            unchanged = (r["width"], r["height"]) == (r["orig_width"], r["orig_height"])
            assert unchanged or max(r["width"], r["height"]) == 512
