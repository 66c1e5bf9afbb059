# Everything installs into .venv in the repo; `make demo` and `make test` install first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pillow-simd builds from source: AVX2 resize kernels where the CPU has them.
SIMD_CC := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo "cc -mavx2" || echo "cc")

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): setup.py packaging/pillow-simd-shim/setup.py Makefile
	@# pillow-simd compiles against these codec headers (JPEG, zlib/PNG, WebP, TIFF, LittleCMS).
	@dpkg -s libjpeg62-turbo-dev zlib1g-dev libwebp-dev libtiff-dev liblcms2-dev >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq libjpeg62-turbo-dev zlib1g-dev libwebp-dev libtiff-dev liblcms2-dev) || \
	    echo "warning: install the codec headers above (Debian package names) for pillow-simd"; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# One pip call: the shim named 'pillow' satisfies apache-beam's Pillow requirement with pillow-simd.
	@# --no-cache-dir so pip never reuses a pillow-simd wheel built with other compiler flags.
	CC="$(SIMD_CC)" $(PY) -m pip install -q --no-cache-dir ./packaging/pillow-simd-shim -e '.[test]'
	$(PY) -m pip check
	$(PY) -c "import PIL, PIL.features as f; assert PIL.__version__.endswith('.post0') and f.check_feature('libjpeg_turbo'), PIL.__version__"
	touch $(STAMP)

demo: install
	$(VENV)/bin/imagenet-shards demo --out demo-out

test: install
	$(VENV)/bin/pytest -q tests

bench: install
	$(PY) -m pipeline.bench

clean:
	rm -rf demo-out bench-out .pytest_cache build *.egg-info
