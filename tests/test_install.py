"""The installed PIL must be pillow-simd with libjpeg-turbo (see README "pillow-simd")."""
import subprocess
import sys
from importlib import metadata

import PIL
from PIL import features


def test_pil_is_pillow_simd_with_libjpeg_turbo():
    assert PIL.__version__.endswith(".post0"), f"PIL {PIL.__version__} is stock Pillow, not pillow-simd"
    assert features.check_feature("libjpeg_turbo")
    # The formats the pipeline keeps need their codecs compiled in (Makefile: the -dev packages).
    for codec in ("jpg", "zlib", "webp", "libtiff", "littlecms2"):
        assert features.check(codec), f"pillow-simd was built without {codec}"
    assert metadata.version("pillow-simd") == PIL.__version__
    # The shim named 'pillow' ships no modules: PIL's files belong to pillow-simd.
    pil_files = [str(f) for f in metadata.files("pillow-simd") if str(f).startswith("PIL/")]
    assert "PIL/Image.py" in pil_files
    shim_files = [str(f) for f in (metadata.files("pillow") or []) if str(f).startswith("PIL/")]
    assert shim_files == []


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
