"""transforms/annotations.py: VOC XML -> normalised boxes, hostile XML refused, archives streamed."""
import io
import pickle
import random
import tarfile
import time
import uuid
from pathlib import Path

import fsspec
import pytest

import transforms.annotations as annotations_mod
from transforms import records
from transforms.annotations import (
    ANNOTATION_REASONS,
    Annotation,
    Box,
    boxes_in_pixels,
    iter_annotation_archive,
    parse_voc_xml,
)
from transforms.keys import annotation_key
from transforms.records import AnnotationRejected

XML_DIR = Path(__file__).parent / "data" / "xml"


def voc(objects=(), width="500", height="375", filename="n01440764_96", size=True, extra=""):
    """A VOC annotation like ImageNet's. objects: (name, xmin, ymin, xmax, ymax) of strings, or
    (name, None) for an object without <bndbox>."""
    parts = ["<annotation>", "\t<folder>n01440764</folder>", f"\t<filename>{filename}</filename>",
             "\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>"]
    if size:
        parts.append(f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>")
    parts.append("\t<segmented>0</segmented>")
    for obj in objects:
        name = obj[0]
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>"
                     "\n\t\t<difficult>0</difficult>")
        if obj[1] is not None:
            xmin, ymin, xmax, ymax = obj[1:]
            parts.append(f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n\t\t\t<xmax>{xmax}</xmax>"
                         f"\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>")
        parts.append("\t</object>")
    parts.append(extra)
    parts.append("</annotation>\n")
    return "\n".join(parts).encode()


def coords(box: Box):
    return (box.xmin, box.ymin, box.xmax, box.ymax)


def flat(boxes):
    """[(x0, y0, x1, y1), ...] or Boxes -> one flat list (pytest.approx does not nest)."""
    return [v for b in boxes for v in (coords(b) if isinstance(b, Box) else b)]


def rejected(data: bytes, key: str = "k") -> AnnotationRejected:
    with pytest.raises(AnnotationRejected) as info:
        parse_voc_xml(data, key)
    assert info.value.reason in ANNOTATION_REASONS
    return info.value


# --- the real example files -----------------------------------------------------------

# (file stem, <size> W, H, [(name, xmin, ymin, xmax, ymax) in pixels as written in the file]).
# Expected normalised boxes are these numbers divided by W and H (worked out below, by hand).
REAL = [
    ("ILSVRC2012_val_00000001", 500, 375, [("n01751748", 111, 108, 441, 193)]),
    ("ILSVRC2012_val_00026567", 500, 375, [("n02256656", 163, 200, 246, 269), ("n02256656", 147, 43, 409, 329)]),
    ("n01440764_96", 500, 375, [("n01440764", 34, 128, 430, 305)]),
    ("n02437312_10028", 500, 375, [("n02437312", 213, 127, 316, 329)]),
    ("fall11_n07805966_18", 500, 375, [("n07805966", 150, 52, 430, 326)]),
    ("fall11_n00007846_6247", 500, 333, [("n00007846", 161, 52, 285, 247)]),
    ("fall11_n03820318_101", 500, 333, [("n03820318", 19, 43, 499, 214)]),
    ("fall11_n04070727_7", 500, 400, [("Television", 74, 0, 490, 398)]),
    ("stanforddogs_n02085620_7", 250, 188, [("Chihuahua", 71, 1, 192, 180)]),
    ("stanforddogs_n02086646_45", 500, 380, [("Blenheim_spaniel", 24, 20, 465, 355)]),
    ("stanforddogs_n02085782_17", 393, 425, [("Japanese_spaniel", 48, 102, 367, 367)]),
]

# A few of the divisions written out, as a check on the formula itself (x / W, y / H, no +1).
HAND = {
    "n01440764_96": [(0.068, 128 / 375, 0.86, 305 / 375)],  # 34/500, 430/500
    "ILSVRC2012_val_00000001": [(0.222, 0.288, 0.882, 193 / 375)],  # 111/500, 108/375, 441/500
    "fall11_n03820318_101": [(0.038, 43 / 333, 0.998, 214 / 333)],  # xmax 499 = W - 1 -> 0.998, not 1
    "fall11_n04070727_7": [(0.148, 0.0, 0.98, 0.995)],  # 74/500, 0/400, 490/500, 398/400
    "stanforddogs_n02085620_7": [(0.284, 1 / 188, 0.768, 180 / 188)],  # 71/250, 192/250
}


def test_every_example_file_is_covered():
    assert sorted(p.stem for p in XML_DIR.glob("*.xml")) == sorted(r[0] for r in REAL)


@pytest.mark.parametrize("stem,width,height,objects", REAL, ids=[r[0] for r in REAL])
def test_real_example(stem, width, height, objects):
    path = XML_DIR / f"{stem}.xml"
    key = annotation_key(str(path))
    assert key == stem
    ann = parse_voc_xml(path.read_bytes(), key)
    assert isinstance(ann, Annotation)
    assert (ann.key, ann.width, ann.height) == (stem, width, height)
    assert ann.dropped_boxes == 0
    assert [b.name for b in ann.boxes] == [o[0] for o in objects]
    expected = [(x0 / width, y0 / height, x1 / width, y1 / height) for _, x0, y0, x1, y1 in objects]
    assert flat(ann.boxes) == pytest.approx(flat(expected), abs=1e-12)
    if stem in HAND:
        assert flat(ann.boxes) == pytest.approx(flat(HAND[stem]), abs=1e-12)
    names = tuple(dict.fromkeys(o[0] for o in objects))
    assert ann.names == names
    assert ann.wnids() == tuple(n for n in names if n.startswith("n0"))
    for b in ann.boxes:
        assert 0.0 <= b.xmin < b.xmax <= 1.0 and 0.0 <= b.ymin < b.ymax <= 1.0


def test_examples_with_human_labels_have_no_wnids():
    for stem in ("fall11_n04070727_7", "stanforddogs_n02085620_7"):
        ann = parse_voc_xml((XML_DIR / f"{stem}.xml").read_bytes(), stem)
        assert ann.names and ann.wnids() == ()


# --- oddities ---------------------------------------------------------------------------


def test_float_coordinates():
    ann = parse_voc_xml(voc([("n01440764", "34.0", "128.5", "430.25", "305")]), "k")
    assert coords(ann.boxes[0]) == pytest.approx((34 / 500, 128.5 / 375, 430.25 / 500, 305 / 375))


def test_whitespace_around_values_and_names():
    ann = parse_voc_xml(voc([(" n01440764\n", " 34 ", "\n128\t", "430", "305")], width=" 500 "), "k")
    assert coords(ann.boxes[0]) == pytest.approx((34 / 500, 128 / 375, 430 / 500, 305 / 375))
    assert ann.boxes[0].name == "n01440764" and ann.wnids() == ("n01440764",)


def test_integral_float_size_is_accepted():
    ann = parse_voc_xml(voc([("n01440764", "50", "75", "100", "150")], width="500.0", height="375.0"), "k")
    assert (ann.width, ann.height) == (500, 375)
    assert isinstance(ann.width, int)


def test_min_max_swapped():
    ann = parse_voc_xml(voc([("n01440764", "430", "305", "34", "128")]), "k")
    assert coords(ann.boxes[0]) == pytest.approx((34 / 500, 128 / 375, 430 / 500, 305 / 375))
    assert ann.dropped_boxes == 0


def test_only_x_swapped():
    ann = parse_voc_xml(voc([("n01440764", "430", "128", "34", "305")]), "k")
    assert coords(ann.boxes[0]) == pytest.approx((34 / 500, 128 / 375, 430 / 500, 305 / 375))


def test_box_outside_the_image_is_clipped():
    # like n03127925/n03127925_147.xml: the box runs past the image
    ann = parse_voc_xml(voc([("n03127925", "-20", "-5", "612", "400")]), "k")
    assert coords(ann.boxes[0]) == (0.0, 0.0, 1.0, 1.0)
    ann = parse_voc_xml(voc([("n03127925", "100", "-5", "612", "200")]), "k")
    assert coords(ann.boxes[0]) == pytest.approx((0.2, 0.0, 1.0, 200 / 375))
    assert ann.dropped_boxes == 0


def test_box_wholly_outside_is_dropped():
    ann = parse_voc_xml(voc([("n01440764", "600", "10", "700", "100"), ("n01440764", "10", "-50", "100", "-1")]), "k")
    assert ann.boxes == () and ann.dropped_boxes == 2
    assert ann.names == ("n01440764",)  # names describe every object, dropped ones too


@pytest.mark.parametrize("box", [("34", "128", "34", "305"), ("34", "128", "430", "128"), ("0", "0", "0", "0"),
                                 ("500", "0", "520", "375")], ids=["x", "y", "point", "on-right-edge"])
def test_zero_area_box_is_dropped_and_counted(box):
    ann = parse_voc_xml(voc([("n01440764", "10", "20", "30", "40"), ("n01440764", *box),
                             ("n01440764", "50", "60", "70", "80")]), "k")
    assert flat(ann.boxes) == pytest.approx([10 / 500, 20 / 375, 30 / 500, 40 / 375,
                                             50 / 500, 60 / 375, 70 / 500, 80 / 375])
    assert ann.dropped_boxes == 1


def test_object_without_bndbox_is_dropped():
    ann = parse_voc_xml(voc([("n01440764", None), ("n01440764", "10", "20", "30", "40")]), "k")
    assert len(ann.boxes) == 1 and ann.dropped_boxes == 1


def test_no_objects():
    ann = parse_voc_xml(voc([]), "k")
    assert ann.boxes == () and ann.dropped_boxes == 0 and ann.names == () and ann.wnids() == ()


def test_filename_with_percent_s_is_ignored():
    data = voc([("n01440764", "34", "128", "430", "305")], filename="%s")
    key = annotation_key("n01440764/n01440764_96.xml")
    assert key == "n01440764_96"
    ann = parse_voc_xml(data, key)
    assert ann.key == "n01440764_96"
    # <filename> plays no part at all
    assert parse_voc_xml(voc([("n01440764", "34", "128", "430", "305")], filename="other"), key) == ann


def test_breed_name_is_kept_raw_and_is_not_a_wnid():
    ann = parse_voc_xml(voc([("Scottish_deerhound", "10", "20", "300", "200"), ("n02092002", "1", "2", "3", "4"),
                             ("Scottish_deerhound", "5", "6", "7", "8")]), "k")
    assert [b.name for b in ann.boxes] == ["Scottish_deerhound", "n02092002", "Scottish_deerhound"]
    assert ann.names == ("Scottish_deerhound", "n02092002")
    assert ann.wnids() == ("n02092002",)


@pytest.mark.parametrize("name", ["n0144076", "n014407640", "N01440764", "xn01440764", "n01440764a", ""])
def test_wnids_need_exactly_n_and_8_digits(name):
    ann = parse_voc_xml(voc([(name, "1", "2", "3", "4")]), "k")
    assert ann.wnids() == ()
    assert ann.boxes[0].name == name


def test_size_different_from_the_jpeg_normalises_by_size():
    # The annotator saw 500x375; the stored JPEG is 1000x750 (or a 256-pixel resize).
    data = voc([("n01440764", "34", "128", "430", "305")], width="500", height="375")
    ann = parse_voc_xml(data, "k")
    assert coords(ann.boxes[0]) == pytest.approx((34 / 500, 128 / 375, 430 / 500, 305 / 375))
    assert boxes_in_pixels(ann.boxes, 1000, 750) == [pytest.approx([68, 256, 860, 610])]
    assert boxes_in_pixels(ann.boxes, 256, 192) == [pytest.approx([34 * 256 / 500, 128 * 192 / 375,
                                                                   430 * 256 / 500, 305 * 192 / 375])]


@pytest.mark.parametrize("data", [
    voc([("n01440764", "1", "2", "3", "4")], size=False),
    voc([("n01440764", "1", "2", "3", "4")], extra="<size><width>500</width><height>375</height></size>",
        size=False).replace(b"<annotation>", b"<annotation><wrapper>").replace(b"</annotation>",
                                                                               b"</wrapper></annotation>"),
    voc([("n01440764", "1", "2", "3", "4")]).replace(b"\t\t<width>500</width>\n", b""),
    voc([("n01440764", "1", "2", "3", "4")]).replace(b"\t\t<height>375</height>\n", b""),
    voc([("n01440764", "1", "2", "3", "4")], width="0"),
    voc([("n01440764", "1", "2", "3", "4")], height="-375"),
    voc([("n01440764", "1", "2", "3", "4")], width=""),
    voc([("n01440764", "1", "2", "3", "4")], width="five hundred"),
    voc([("n01440764", "1", "2", "3", "4")], width="nan"),
    voc([("n01440764", "1", "2", "3", "4")], width="inf"),
    voc([("n01440764", "1", "2", "3", "4")], width="499.5"),
], ids=["missing", "not-a-child-of-root", "no-width", "no-height", "zero", "negative", "blank", "words", "nan", "inf",
        "fraction"])
def test_unusable_size_is_no_size(data):
    assert rejected(data).reason == "no_size"


@pytest.mark.parametrize("box", [("abc", "2", "3", "4"), ("1", "", "3", "4"), ("1", "2", "nan", "4"),
                                 ("1", "2", "3", "inf"), ("1", "2", "3", "0x10"), ("1,5", "2", "3", "4")],
                         ids=["words", "blank", "nan", "inf", "hex", "comma"])
def test_non_numeric_coordinates_are_bad_coordinates(box):
    e = rejected(voc([("n01440764", "10", "20", "30", "40"), ("n01440764", *box)]))
    assert e.reason == "bad_coordinates"


def test_bndbox_missing_a_coordinate_is_bad_coordinates():
    data = voc([("n01440764", "10", "20", "30", "40")]).replace(b"\t\t\t<ymax>40</ymax>\n", b"")
    e = rejected(data)
    assert e.reason == "bad_coordinates" and "ymax" in e.detail


# --- hostile and broken XML -------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><size><width>500</width><height>375</height></size>
<object><name>&lol9;</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>
</annotation>
"""


def test_billion_laughs_is_forbidden_quickly():
    start = time.perf_counter()
    e = rejected(BILLION_LAUGHS)
    assert e.reason == "forbidden_xml"
    assert time.perf_counter() - start < 0.5
    assert len(e.detail) <= 200 and "lol" in e.detail  # the DOCTYPE's name, nothing expanded


PASSWD_ENTITY = (b'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
                 b"<annotation><folder>&xxe;</folder><size><width>500</width><height>375</height></size>"
                 b"<object><name>&xxe;</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>"
                 b"</bndbox></object></annotation>")


@pytest.mark.parametrize("data", [
    PASSWD_ENTITY,
    b'<!DOCTYPE annotation SYSTEM "file:///etc/passwd"><annotation/>',
    b'<!DOCTYPE annotation [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><annotation/>',
    b'<!DOCTYPE annotation PUBLIC "-//x//y" "http://127.0.0.1:9/evil.dtd"><annotation/>',
    b'<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "http://127.0.0.1:9/x">]><annotation>&xxe;</annotation>',
], ids=["general-entity", "external-dtd", "parameter-entity", "public-dtd", "http-entity"])
def test_external_references_are_forbidden_and_never_read(data):
    e = rejected(data)
    assert e.reason == "forbidden_xml"
    passwd = Path("/etc/passwd").read_text(errors="replace") if Path("/etc/passwd").exists() else ""
    for line in passwd.splitlines():
        if line.strip():
            assert line not in e.detail and line not in str(e)
    assert "root:" not in e.detail


@pytest.mark.parametrize("data", [
    b"<!DOCTYPE annotation><annotation><size><width>500</width><height>375</height></size></annotation>",
    b'<!DOCTYPE annotation [<!ELEMENT annotation ANY>]><annotation/>',
    b'<!DOCTYPE annotation [<!ENTITY w "500">]><annotation><size><width>&w;</width></size></annotation>',
    b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE x []>\n<annotation/>',
], ids=["bare", "element-decl", "internal-entity", "empty-subset"])
def test_any_dtd_is_forbidden(data):
    assert rejected(data).reason == "forbidden_xml"


@pytest.mark.parametrize("data", [
    b"<annotation>",
    b"<annotation><size></annotation>",
    b"not xml at all",
    b"<annotation>&undefined;</annotation>",
    b"<a></a><b></b>",
    b"\x00\x01\x02",
    b"\xff\xfe\xfd",
    b"   ",
    b'<?xml version="1.0" encoding="no-such-codec"?><annotation/>',
    b'<?xml version="1.0" encoding="utf-16"?><annotation/>',
    (XML_DIR / "n01440764_96.xml").read_bytes()[:-20],
], ids=["unclosed", "mismatched", "text", "undefined-entity", "two-roots", "control", "bad-utf8", "blank",
        "unknown-encoding", "wrong-encoding", "cut-off"])
def test_malformed_xml(data):
    assert rejected(data).reason == "malformed_xml"


def test_empty():
    e = rejected(b"")
    assert e.reason == "empty"


def test_xml_declaration_and_utf8_bom_are_fine():
    body = voc([("n01440764", "34", "128", "430", "305")])
    plain = parse_voc_xml(body, "k")
    assert parse_voc_xml(b'<?xml version="1.0" encoding="utf-8"?>\n' + body, "k") == plain
    assert parse_voc_xml(b"\xef\xbb\xbf" + body, "k") == plain
    assert parse_voc_xml(body.decode().encode("utf-16"), "k") == plain


def test_rejection_pickles_and_reasons_match_records():
    e = AnnotationRejected("no_size", "no <size>")
    back = pickle.loads(pickle.dumps(e))
    assert (back.reason, back.detail) == ("no_size", "no <size>") and str(back) == "no_size: no <size>"
    with pytest.raises(ValueError):
        AnnotationRejected("nonsense", "")
    assert tuple(ANNOTATION_REASONS) == tuple(records.REJECT_REASONS["annotation"])
    assert set(ANNOTATION_REASONS) == {"empty", "malformed_xml", "forbidden_xml", "no_size", "bad_coordinates"}


def test_annotation_pickles():
    ann = parse_voc_xml((XML_DIR / "ILSVRC2012_val_00026567.xml").read_bytes(), "ILSVRC2012_val_00026567")
    assert pickle.loads(pickle.dumps(ann)) == ann


# --- fuzz: nothing but an Annotation or AnnotationRejected, ever -------------------------


def _fuzz_inputs(rng: random.Random):
    real = [p.read_bytes() for p in sorted(XML_DIR.glob("*.xml"))]
    hostile = [BILLION_LAUGHS, PASSWD_ENTITY]
    for data in real + hostile:
        for cut in range(0, len(data) + 1, 7):  # truncated at every 7th byte
            yield data[:cut]
        for _ in range(40):  # a few bytes flipped
            b = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b)
        for _ in range(20):  # a slice removed or duplicated
            i, j = sorted(rng.randrange(len(data)) for _ in range(2))
            yield data[:i] + data[j:]
            yield data[:j] + data[i:]
    for _ in range(500):  # random bytes
        yield bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    tokens = [b"<annotation>", b"</annotation>", b"<size>", b"</size>", b"<width>", b"</width>", b"<height>",
              b"</height>", b"<object>", b"</object>", b"<bndbox>", b"</bndbox>", b"<xmin>", b"</xmin>", b"<ymin>",
              b"</ymin>", b"<xmax>", b"</xmax>", b"<ymax>", b"</ymax>", b"<name>", b"</name>", b"500", b"-1", b"1e308",
              b"nan", b"0.5", b"&amp;", b"&#0;", b"&#x41;", b"<![CDATA[1]]>", b"<!-- c -->", b"<?pi x?>",
              b"<!DOCTYPE a>", b"\xc3\xa9", b"\xff", b" ", b"\n", b"<", b">", b"/"]
    for _ in range(1500):  # random token soups, mostly well-formed-ish
        yield b"".join(rng.choice(tokens) for _ in range(rng.randint(1, 40)))
    for _ in range(300):  # valid structure, random values
        choices = ["0", "1", "-5", "1e9", "", "x", "nan", "3.5", "499", "  7 ", "+2", "1_000"]
        vals = [rng.choice(choices) for _ in range(6)]
        yield voc([("n01440764", *vals[:4])], width=vals[4], height=vals[5])


def test_fuzz_never_raises_anything_else():
    rng = random.Random(20240613)
    n = 0
    reasons = set()
    for data in _fuzz_inputs(rng):
        n += 1
        try:
            ann = parse_voc_xml(data, "k")
        except AnnotationRejected as e:
            assert e.reason in ANNOTATION_REASONS
            assert isinstance(e.detail, str) and len(e.detail) <= 200
            reasons.add(e.reason)
        except BaseException as e:  # pragma: no cover - the failure being tested for
            pytest.fail(f"{type(e).__name__}: {e} for input {data[:200]!r}")
        else:
            assert ann.width > 0 and ann.height > 0
            for b in ann.boxes:
                assert 0.0 <= b.xmin < b.xmax <= 1.0 and 0.0 <= b.ymin < b.ymax <= 1.0
    assert n > 4000
    assert reasons == set(ANNOTATION_REASONS)


def test_deeply_nested_elements():
    depth = 100_000
    data = b"<annotation>" + b"<a>" * depth + b"</a>" * depth + b"</annotation>"
    assert rejected(data).reason == "no_size"
    assert rejected(b"<a>" * depth).reason == "malformed_xml"


def test_parse_speed():
    files = [(p.stem, p.read_bytes()) for p in sorted(XML_DIR.glob("*.xml"))]
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        for key, data in files:
            parse_voc_xml(data, key)
    per_file = (time.perf_counter() - start) / (rounds * len(files))
    # ~544k train XMLs: a generous bound that still catches an accidental slow path
    assert per_file < 2e-3, f"{per_file * 1e6:.0f} µs per file"


# --- keys and pixels --------------------------------------------------------------------


@pytest.mark.parametrize("path,key", [
    ("n01440764/n01440764_96.xml", "n01440764_96"),
    ("ILSVRC2012_val_00000001.xml", "ILSVRC2012_val_00000001"),
    ("ILSVRC/Annotations/CLS-LOC/val/ILSVRC2012_val_00026567.xml", "ILSVRC2012_val_00026567"),
    ("n00007846.tar.gz/Annotation/n00007846/n00007846_6247.xml", "n00007846_6247"),
    ("dir/odd.name.xml", "odd_name"),
    ("dir/n01440764_96", "n01440764_96"),
])
def test_annotation_key(path, key):
    assert annotation_key(path) == key


def test_boxes_in_pixels_round_trip():
    for stem, _width, _height, objects in REAL:
        ann = parse_voc_xml((XML_DIR / f"{stem}.xml").read_bytes(), stem)
        assert boxes_in_pixels(ann.boxes, ann.width, ann.height) == [
            pytest.approx([x0, y0, x1, y1], abs=1e-9) for _, x0, y0, x1, y1 in objects]
        # tuples (as BoxesRef carries them) work the same
        tuples = [coords(b) for b in ann.boxes]
        assert boxes_in_pixels(tuples, ann.width, ann.height) == boxes_in_pixels(ann.boxes, ann.width, ann.height)
    # a clipped box comes back as the clipped box
    ann = parse_voc_xml(voc([("n1", "-10", "20", "600", "300")]), "k")
    assert boxes_in_pixels(ann.boxes, 500, 375) == [pytest.approx([0, 20, 500, 300])]
    assert boxes_in_pixels([], 10, 10) == []


# --- reading archives and folders -------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _real(stem: str) -> bytes:
    return (XML_DIR / f"{stem}.xml").read_bytes()


def _inner_tar_gz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            _add(tar, name, data)
    return buf.getvalue()


@pytest.fixture
def annotation_tar_gz(tmp_path):
    """Like ILSVRC2012_bbox_train_v2.tar.gz: per-synset folders, plus noise and a nested tar."""
    path = tmp_path / "bbox_train.tar.gz"
    inner = _inner_tar_gz({"Annotation/n00007846/n00007846_6247.xml": _real("fall11_n00007846_6247"),
                           "Annotation/n00007846/readme.txt": b"x"})
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "n01440764", kind=tarfile.DIRTYPE)
        _add(tar, "n01440764/n01440764_96.xml", _real("n01440764_96"))
        _add(tar, "n01440764/notes.txt", b"not xml")
        _add(tar, "n02437312/deeper/still/n02437312_10028.xml", _real("n02437312_10028"))
        _add(tar, "n02437312/link.xml", kind=tarfile.SYMTYPE, linkname="deeper/still/n02437312_10028.xml")
        _add(tar, "n02437312/image.JPEG", b"\xff\xd8\xff" + b"\x00" * 2000)
        _add(tar, "val/ILSVRC2012_val_00000001.XML", _real("ILSVRC2012_val_00000001"))
        _add(tar, "broken/bad.xml", b"<annotation>")
        _add(tar, "broken/empty.xml", b"")
        _add(tar, "fall11/n00007846.tar.gz", inner)
        _add(tar, "top.xml", _real("fall11_n04070727_7"))
    return path


EXPECTED_TAR = [
    ("n01440764/n01440764_96.xml", "n01440764_96"),
    ("n02437312/deeper/still/n02437312_10028.xml", "n02437312_10028"),
    ("val/ILSVRC2012_val_00000001.XML", "ILSVRC2012_val_00000001"),
    ("broken/bad.xml", None),
    ("broken/empty.xml", None),
    ("fall11/n00007846.tar.gz/Annotation/n00007846/n00007846_6247.xml", "fall11_n00007846_6247"),
    ("top.xml", "fall11_n04070727_7"),
]


class _NoSeek(io.RawIOBase):
    """A forward-only stream: proves the archive is read once, front to back."""

    def __init__(self, f):
        self._f = f

    def readable(self):
        return True

    def seekable(self):
        return False

    def seek(self, *a):
        raise io.UnsupportedOperation("seek")

    def tell(self):
        raise io.UnsupportedOperation("tell")

    def readinto(self, b):
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self):
        self._f.close()
        super().close()


def _check_members(items):
    assert [p for p, _ in items] == [p for p, _ in EXPECTED_TAR]
    for (_path, data), (_, stem) in zip(items, EXPECTED_TAR):
        if stem is not None:
            assert data == _real(stem)
    assert items[3][1] == b"<annotation>" and items[4][1] == b""


def test_iter_tar_gz_streams_xml_members_at_any_depth(annotation_tar_gz, monkeypatch):
    real_open = annotations_mod.open_input
    opened = []

    def no_seek_open(url):
        opened.append(url)
        return _NoSeek(real_open(url))

    monkeypatch.setattr(annotations_mod, "open_input", no_seek_open)
    items = list(iter_annotation_archive(str(annotation_tar_gz)))
    assert opened == [str(annotation_tar_gz)]
    _check_members(items)
    keys = [annotation_key(p) for p, _ in items]
    assert keys[:3] == ["n01440764_96", "n02437312_10028", "ILSVRC2012_val_00000001"]
    assert keys[5] == "n00007846_6247"


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_iter_other_tar_kinds(tmp_path, suffix, mode):
    path = tmp_path / f"ann{suffix}"
    with tarfile.open(path, mode) as tar:
        _add(tar, "a/n01440764_96.xml", _real("n01440764_96"))
        _add(tar, "a/b.txt", b"x")
    assert list(iter_annotation_archive(str(path))) == [("a/n01440764_96.xml", _real("n01440764_96"))]


def test_iter_multi_member_gzip(tmp_path):
    """gzip allows concatenated members (e.g. pigz, or `cat a.gz b.gz`)."""
    import gzip
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "a/n01440764_96.xml", _real("n01440764_96"))
    raw = buf.getvalue()
    path = tmp_path / "multi.tar.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert list(iter_annotation_archive(str(path))) == [("a/n01440764_96.xml", _real("n01440764_96"))]


def test_iter_empty_tar(tmp_path):
    path = tmp_path / "empty.tar.gz"
    with tarfile.open(path, "w:gz"):
        pass
    assert list(iter_annotation_archive(str(path))) == []


def test_iter_tar_via_fsspec_url(annotation_tar_gz):
    url = f"memory://ann-{uuid.uuid4().hex}/bbox.tar.gz"
    fs = fsspec.filesystem("memory")
    fs.pipe(url, annotation_tar_gz.read_bytes())
    try:
        _check_members(list(iter_annotation_archive(url)))
        _check_members(list(iter_annotation_archive(annotation_tar_gz.as_uri())))
    finally:
        fs.rm(url)


def test_cut_off_archive_raises(annotation_tar_gz, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    data = annotation_tar_gz.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="not a readable tar"):
        list(iter_annotation_archive(str(cut)))
    # a plain tar cut exactly at a header boundary: tarfile alone would just stop there
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        _add(tar, "a/n01440764_96.xml", _real("n01440764_96"))
        _add(tar, "a/n02437312_10028.xml", _real("n02437312_10028"))
    data = plain.read_bytes()
    assert list(iter_annotation_archive(str(plain)))[1][0] == "a/n02437312_10028.xml"
    one_member = 512 + -(-len(_real("n01440764_96")) // 512) * 512  # header + data padded to whole blocks
    assert data[one_member + 257: one_member + 262] == b"ustar"  # the second header starts there
    for cut_at in (one_member, one_member + 100, one_member + 512 + 10):
        cut.write_bytes(data[:cut_at])
        with pytest.raises(RuntimeError, match="not a readable tar"):
            list(iter_annotation_archive(str(cut)))
    # garbage where the second header should be
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:one_member] + b"garbage!" * 64 + data[one_member + 512:])
    with pytest.raises(RuntimeError, match="not a readable tar"):
        list(iter_annotation_archive(str(bad)))
    # a gzip whose CRC is wrong
    gz = bytearray(annotation_tar_gz.read_bytes())
    gz[-8] ^= 0xFF
    cut.write_bytes(bytes(gz))
    with pytest.raises(RuntimeError, match="not a readable tar"):
        list(iter_annotation_archive(str(cut)))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tar at all" * 50)
    with pytest.raises(RuntimeError, match="not a readable tar"):
        list(iter_annotation_archive(str(junk)))


def _make_folder(root: Path):
    (root / "train" / "n01440764").mkdir(parents=True)
    (root / "train" / "n02437312").mkdir(parents=True)
    (root / "val").mkdir(parents=True)
    (root / "train" / "n01440764" / "n01440764_96.xml").write_bytes(_real("n01440764_96"))
    (root / "train" / "n01440764" / "notes.txt").write_bytes(b"x")
    (root / "train" / "n02437312" / "n02437312_10028.xml").write_bytes(_real("n02437312_10028"))
    (root / "val" / "ILSVRC2012_val_00000001.xml").write_bytes(_real("ILSVRC2012_val_00000001"))
    (root / "val" / "ILSVRC2012_val_00026567.xml").write_bytes(_real("ILSVRC2012_val_00026567"))
    (root / "val" / "subdir.xml").mkdir()  # a folder named like an XML is not a file


EXPECTED_FOLDER = [
    ("train/n01440764/n01440764_96.xml", "n01440764_96"),
    ("train/n02437312/n02437312_10028.xml", "n02437312_10028"),
    ("val/ILSVRC2012_val_00000001.xml", "ILSVRC2012_val_00000001"),
    ("val/ILSVRC2012_val_00026567.xml", "ILSVRC2012_val_00026567"),
]


def test_iter_folder(tmp_path):
    root = tmp_path / "Annotations" / "CLS-LOC"
    _make_folder(root)
    for url in (str(root), str(root) + "/", root.as_uri()):
        items = list(iter_annotation_archive(url))
        assert [p for p, _ in items] == [p for p, _ in EXPECTED_FOLDER]
        assert [d for _, d in items] == [_real(s) for _, s in EXPECTED_FOLDER]


def test_iter_folder_via_fsspec(tmp_path):
    local = tmp_path / "src"
    _make_folder(local)
    base = f"memory://ann-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe(f"{base}/{path.relative_to(local).as_posix()}", path.read_bytes())
    try:
        items = list(iter_annotation_archive(base))
        assert [p for p, _ in items] == [p for p, _ in EXPECTED_FOLDER]
        assert [d for _, d in items] == [_real(s) for _, s in EXPECTED_FOLDER]
    finally:
        fs.rm(base, recursive=True)


def test_iter_single_xml_file():
    path = XML_DIR / "n01440764_96.xml"
    assert list(iter_annotation_archive(str(path))) == [("n01440764_96.xml", path.read_bytes())]


def test_archive_to_annotations_end_to_end(annotation_tar_gz):
    """What the Beam stage does with each member: key from the path, parse, or reject."""
    out = {}
    for path, data in iter_annotation_archive(str(annotation_tar_gz)):
        try:
            out[annotation_key(path)] = parse_voc_xml(data, annotation_key(path))
        except AnnotationRejected as e:
            out[annotation_key(path)] = e.reason
    assert out["bad"] == "malformed_xml" and out["empty"] == "empty"
    assert out["n01440764_96"].boxes[0].name == "n01440764"
    assert out["n00007846_6247"].wnids() == ("n00007846",)
    assert out["top"].names == ("Television",) and out["top"].wnids() == ()
