"""Miniature ILSVRC2012 releases in the official layout: the demo's input and the tests' fixtures.

`make_sample_release(dest)` writes, under `dest`:

- ``ILSVRC2012_img_train.tar``: a tar of per-class tars ``<wnid>.tar`` (sorted), each holding flat
  ``<wnid>_<n>.JPEG`` members in a shuffled order (``n`` is not fixed width and not consecutive);
- ``ILSVRC2012_img_val.tar``: flat ``ILSVRC2012_val_%08d.JPEG`` members in a shuffled (not sorted) order;
- ``ILSVRC2012_devkit_t12.tar.gz``: ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (the
  real 50,000-line file), ``.../data/ILSVRC2012_validation_blacklist.txt`` and a short ``readme.txt``;
- ``ILSVRC2012_img_test_v10102019.tar`` (only when ``test_images > 0``): flat ``ILSVRC2012_test_%08d.JPEG``;
- ``ILSVRC2012_bbox_train_v2.tar.gz`` and ``ILSVRC2012_bbox_val_v3.tgz`` (unless ``boxes=False``): the
  Pascal VOC XML of the bounding boxes.

The classes and validation images are chosen so that the REAL ground truth applies: the train classes are
the first ``classes`` distinct WNIDs met walking the real ground truth in order, and the validation images
are the first indices of that file whose WNID is one of them (so validation names are sparse, as in a real
subset). Images are distinct variants (a random crop, resized to an ImageNet-like size) of the CC0 and
public-domain photos bundled in ``pipeline/data/photos`` (see ATTRIBUTION.md there).

With ``plant_faults=True`` the release also holds the oddities a converter must survive (CMYK and PNG data
named .JPEG, as in the real train tar; truncated, empty and non-image files; a decompression bomb; links; byte
duplicates; ...). Each member's expected fate is in ``SampleRelease.expected``. With ``near_duplicates=True``
it also holds a photograph and five near-duplicates of it (re-encoded, resized, cropped, brightened, saved as
PNG; in val and in another class) and other photographs of one subject (``SampleRelease.near_duplicates``,
``.other_photographs``). `export_layout` copies a release into the other layouts the tool reads (Kaggle's,
ImageFolder, ImageNet-21k's).

The output is a pure function of the arguments (and of the Pillow/libjpeg build): two calls with the same
seed write byte-identical archives (fixed tar mtimes, owners and order; a fixed gzip header).

The modules, by job: bundle (the files of pipeline/data), photos (the photo maker and the odd bytes),
archives (the tar, gzip and devkit writers), expected (the records of what a release holds), planner (the
choice of classes, the names and the planted faults), near_copies (the planted near-duplicates), release
(make_sample_release), annotations (the bbox archives) and layouts (export_layout).
`python -m pipeline.sample DEST` writes a release from the command line.
"""
from pipeline.sample.annotations import BBOX_TRAIN, BBOX_VAL
from pipeline.sample.archives import (
    DEVKIT_BLACKLIST_MEMBER,
    DEVKIT_GT_MEMBER,
    DEVKIT_TAR,
    TEST_TAR,
    TRAIN_TAR,
    VAL_TAR,
    Member,
    devkit_bytes,
    gzip_bytes,
    read_member,
    tar_bytes,
    tar_info,
    write_tar,
)
from pipeline.sample.bundle import PHOTOS
from pipeline.sample.expected import PLANTED_CASES, ExpectedSample, SampleRelease
from pipeline.sample.layouts import LAYOUTS, export_layout
from pipeline.sample.near_copies import NEAR_COPIES, NEAR_DUPLICATE_CASES, NearCopy
from pipeline.sample.photos import EncodedVariant, PhotoMaker, Variant
from pipeline.sample.planner import ClassesAndVal, Planner, ValSlot, choose_classes_and_val
from pipeline.sample.release import make_sample_release

__all__ = [
    "ExpectedSample",
    "SampleRelease",
    "make_sample_release",
    "export_layout",
    "LAYOUTS",
    "TRAIN_TAR",
    "VAL_TAR",
    "DEVKIT_TAR",
    "TEST_TAR",
    "DEVKIT_GT_MEMBER",
    "DEVKIT_BLACKLIST_MEMBER",
    "BBOX_TRAIN",
    "BBOX_VAL",
    "PHOTOS",
    "PLANTED_CASES",
    "NEAR_COPIES",
    "NEAR_DUPLICATE_CASES",
    "NearCopy",
    # The parts the benchmark builds its own corpus from.
    "PhotoMaker",
    "Variant",
    "EncodedVariant",
    "Planner",
    "ValSlot",
    "ClassesAndVal",
    "choose_classes_and_val",
    "Member",
    "tar_info",
    "write_tar",
    "tar_bytes",
    "gzip_bytes",
    "read_member",
    "devkit_bytes",
]
