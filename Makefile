# Everything installs into .venv in the repo; `make demo` and `make test` install first when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pillow-simd builds from source: AVX2 resize kernels where the CPU has them.
SIMD_CC := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo "cc -mavx2" || echo "cc")

# The lowest Apache Beam release the project supports (setup.py's floor); `make test` runs the newest.
BEAM_LOWEST := 2.67.0
LOW_VENV := .venv-beam-$(BEAM_LOWEST)

.PHONY: install install-beam-lowest demo lint test test-fast test-beam-lowest bench bench-rebuild bench-remote rebuild clean test-readers bench-read browser

install: $(STAMP)

# The main venv also has the readers extra (Hugging Face datasets), which the lowest Beam cannot have.
MAIN_EXTRAS := test,readers

$(STAMP): setup.py packaging/pillow-simd-shim/setup.py packaging/install.sh Makefile
	$(call make_venv,$(VENV),,$(MAIN_EXTRAS))
	touch $(STAMP)

# $(call make_venv,FOLDER,EXTRA_REQUIREMENT[,EXTRAS[,OPTIONS]]): a venv with the project (editable), its
# test tools (EXTRAS: the project's extras, "test" when not given) and pillow-simd, by packaging/install.sh,
# the script that the Dockerfile's SDK worker image runs too (OPTIONS: more of its options, e.g. --gcp).
define make_venv
	SIMD_CC="$(SIMD_CC)" bash packaging/install.sh --python $(PYTHON) --venv $(1) --editable --extras '$(or $(3),test)' $(4) $(2)
endef

demo: install
	$(VENV)/bin/imagenet-shards demo --out demo-out

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Debian's chromium, for the headless browser test of the HTML report (tests/test_report.py): installed
# when missing and run as root, like the codec headers; otherwise a warning, and that one test is skipped.
browser:
	@sh packaging/install-chromium.sh

# Each test gets its own temporary folder under a TMPDIR of this run (tests never share the machine's /tmp).
test: lint browser
	TMPDIR=$$(mktemp -d) $(VENV)/bin/pytest -q tests

# The unit tests only: no Beam pipeline, no build through the command line (under a minute).
test-fast: install
	TMPDIR=$$(mktemp -d) $(VENV)/bin/pytest -q -m "not beam and not e2e" tests

# The suite against the lowest Apache Beam release the project supports, less three kinds of test
# that run once, in `make test`: the command line's own work around the graph (marked "driver"),
# the reading side (marked "readers": the reading API, verify and report import no Beam), and the
# builds that check how inputs are read, selected and labelled (marked "inputs": they run the graph
# that the builds of tests/test_build_e2e.py run on both releases). CI stays within its budget so.
test-beam-lowest: install-beam-lowest
	TMPDIR=$$(mktemp -d) $(LOW_VENV)/bin/pytest -q -m "not driver and not readers and not inputs" tests

install-beam-lowest: $(LOW_VENV)/.installed

$(LOW_VENV)/.installed: setup.py packaging/pillow-simd-shim/setup.py packaging/install.sh Makefile
	$(call make_venv,$(LOW_VENV),'apache-beam==$(BEAM_LOWEST)')
	$(LOW_VENV)/bin/python -c "import apache_beam; assert apache_beam.__version__ == '$(BEAM_LOWEST)', apache_beam.__version__"
	touch $@

bench: install
	$(PY) -m benchmarks.bench

# Scheduled rebuilds: up to date, incremental (1% removed, 1% added) and resumed against a full build.
bench-rebuild: install
	$(PY) -m benchmarks.rebuild

# The same build from local disk and from a loopback HTTP server with byte ranges, 0 and 20 ms before
# each request: times and requests per member (README "Object storage").
bench-remote: install
	$(PY) -m benchmarks.remote

# Memory and time per sample outside the codecs: builds of 50k, 200k and 1M tiny generated JPEGs (official
# layout, kept under bench-out/scale/), the slopes between them and their projection to ImageNet-21k
# (README "Scale"). SAMPLES: other sizes, e.g. SAMPLES=200000,1000000.
.PHONY: bench-scale
bench-scale: install
	$(PY) -m benchmarks.scale --samples $(or $(SAMPLES),50000,200000,1000000)

# A scheduled rebuild (cron, systemd, Airflow): "up to date" and exit 0 when nothing changed, a new
# version published when something did, a stopped build resumed. ARGS: more build options.
rebuild: install
	@test -n "$(SOURCE)" && test -n "$(OUT)" || { echo "usage: make rebuild SOURCE=<folder or URL> OUT=<dataset root> [ARGS='--keep 5 ...']" >&2; exit 2; }
	$(VENV)/bin/imagenet-shards build "$(SOURCE)" --out "$(OUT)" --no-progress $(ARGS)

# A build on Google Cloud Dataflow (README "Running on Dataflow"), its workers in the SDK image that the
# Dockerfile builds. The driver runs from a venv of its own, made by the same script with what Dataflow
# needs (Beam's Google Cloud extra, gcsfs). PROJECT, REGION, BUCKET (a name or gs:// URL: the job's
# temporary and staged files, and OUT by default) and SOURCE (gs://...) are required; IMAGE defaults to the
# tag that README's docker commands give, OUT to gs://BUCKET/imagenet-shards; ARGS: more options.
DATAFLOW_VENV := .venv-dataflow
DATAFLOW_PY := $(DATAFLOW_VENV)/bin/python
MACHINE_TYPE ?= n2-standard-4
MAX_WORKERS ?= 32
DATAFLOW_BUCKET = gs://$(patsubst gs://%,%,$(patsubst %/,%,$(BUCKET)))
DATAFLOW_OUT = $(or $(OUT),$(DATAFLOW_BUCKET)/imagenet-shards)
# The image's tag names the versions it must share with the driver: the tool's, Beam's and Python's.
DATAFLOW_TAG = $(shell test -x $(DATAFLOW_PY) && $(DATAFLOW_PY) -c "import importlib.metadata as m, sys; print('%s-beam%s-py%d.%d' % (m.version('imagenet-shards'), m.version('apache-beam'), *sys.version_info[:2]))")
IMAGE ?= $(REGION)-docker.pkg.dev/$(PROJECT)/imagenet-shards/worker:$(DATAFLOW_TAG)

# Checked before anything is installed.
ifneq ($(filter dataflow,$(MAKECMDGOALS)),)
ifeq ($(and $(PROJECT),$(REGION),$(BUCKET),$(SOURCE)),)
$(error usage: make dataflow PROJECT=<project> REGION=<region> BUCKET=<bucket> SOURCE=gs://<archives> [IMAGE=<worker image>] [OUT=gs://...] [MACHINE_TYPE=n2-standard-4] [MAX_WORKERS=32] [ARGS='...'])
endif
endif

.PHONY: dataflow
dataflow: $(DATAFLOW_VENV)/.installed
	$(DATAFLOW_VENV)/bin/imagenet-shards build "$(SOURCE)" --out "$(DATAFLOW_OUT)" --no-progress \
	  --runner DataflowRunner --project "$(PROJECT)" --region "$(REGION)" \
	  --temp_location "$(DATAFLOW_BUCKET)/tmp" --staging_location "$(DATAFLOW_BUCKET)/staging" \
	  --sdk_container_image "$(IMAGE)" --sdk_location container \
	  --machine_type "$(MACHINE_TYPE)" --max_num_workers "$(MAX_WORKERS)" --experiments shuffle_mode=service $(ARGS)

$(DATAFLOW_VENV)/.installed: setup.py packaging/pillow-simd-shim/setup.py packaging/install.sh Makefile
	$(call make_venv,$(DATAFLOW_VENV),,test,--gcp)
	touch $@

clean:
	rm -rf demo-out bench-out .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# The readers that need PyTorch, in a venv of their own so that `make test` never installs it: .stream()
# through a torch DataLoader with worker processes, decoded to tensors, timm's webdataset reader, and wids
# with torch itself (make test runs wids with stand-ins for the two torch modules it imports).
# torch and torchvision are pinned to a pair that imports together (PyPI's torchvision needs its own
# torch release); on the development machines pip takes both from their disk.
READERS_VENV := .venv-readers
READERS_TORCH := 'torch==2.14.1' 'torchvision==0.29.1' 'timm>=1.0'

test-readers: $(READERS_VENV)/.installed
	TMPDIR=$$(mktemp -d) $(READERS_VENV)/bin/pytest -q tests/test_readers_torch.py tests/test_readers.py -k "torch or wids"

$(READERS_VENV)/.installed: setup.py packaging/pillow-simd-shim/setup.py Makefile
	$(call make_venv,$(READERS_VENV),$(READERS_TORCH),test)
	$(READERS_VENV)/bin/python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
	touch $@

# The loader benchmark (README "Reading the dataset"): the stream, plain webdataset and loose files
# through DataLoader workers against the decode ceiling; get(key) and query latencies.
bench-read: $(READERS_VENV)/.installed
	$(READERS_VENV)/bin/python -m benchmarks.read
