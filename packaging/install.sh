#!/usr/bin/env bash
# Installs imagenet-shards with pillow-simd as the only PIL: the one install path, shared by
# `make install` (a virtual environment in the checkout) and the Dockerfile (the SDK worker image
# of Dataflow and other Beam runners), so that the path every `make test` runs is the shipped one.
#
#   packaging/install.sh [--venv DIR] [--python PYTHON] [--editable] [--extras LIST] [--gcp] [REQUIREMENT ...]
#
#   --venv DIR       create (or reuse) a virtual environment in DIR with PYTHON and install into it;
#                    without it, the packages go into PYTHON's own environment (a container image)
#   --python PYTHON  the interpreter (default: $PYTHON, else python3)
#   --editable       install the project as an editable install (a checkout); default: a copy
#   --extras LIST    the project's extras, e.g. test,readers (default: none)
#   --gcp            also what a build on Dataflow needs, on its driver and its workers: Beam's
#                    Google Cloud extra and gcsfs (gs:// through fsspec)
#   REQUIREMENT      more requirements for the same pip call (e.g. apache-beam==2.67.0)
#
# Environment: SIMD_CC, the compiler command that builds pillow-simd (default "cc -mavx2" where
# this CPU has AVX2, else "cc"; an image for other machines says which it wants).
#
# Steps: the codec headers that pillow-simd compiles against (apt-get, when run as root on
# Debian); the environment; one pip call with the shim named "pillow" (packaging/pillow-simd-shim,
# which satisfies apache-beam's Pillow requirement with pillow-simd) and the project, so that
# stock Pillow is never unpacked over pillow-simd; pip check; and the check that PIL is
# pillow-simd with libjpeg-turbo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON:-python3}"
VENV=""
EDITABLE=0
EXTRAS=""
GCP=0
REQUIREMENTS=()

usage() {
    sed -n '6,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --venv) VENV="$2"; shift 2 ;;
        --python) PYTHON_BIN="$2"; shift 2 ;;
        --editable) EDITABLE=1; shift ;;
        --extras) EXTRAS="$2"; shift 2 ;;
        --gcp) GCP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) REQUIREMENTS+=("$1"); shift ;;
    esac
done

# pillow-simd compiles against these codec headers (JPEG, zlib/PNG, WebP, TIFF, LittleCMS).
CODEC_HEADERS=(libjpeg62-turbo-dev zlib1g-dev libwebp-dev libtiff-dev liblcms2-dev)
if ! dpkg -s "${CODEC_HEADERS[@]}" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${CODEC_HEADERS[@]}"
    else
        echo "warning: install the codec headers for pillow-simd (Debian package names): ${CODEC_HEADERS[*]}" >&2
    fi
fi

if [ -n "$VENV" ]; then
    "$PYTHON_BIN" -m venv "$VENV"
    PY="$VENV/bin/python"
else
    PY="$PYTHON_BIN"
fi
"$PY" -m pip install -q --upgrade pip

# Stock Pillow already installed (Beam's SDK image has it) would be uninstalled by pip when the
# shim takes its name, after pillow-simd was unpacked: its files are pillow-simd's PIL. It goes first.
if "$PY" -m pip show pillow 2>/dev/null | grep -q '^Version: ' &&
   ! "$PY" -m pip show pillow 2>/dev/null | grep -q '^Version: .*+simd$'; then
    "$PY" -m pip uninstall -q -y pillow
fi

PROJECT="$ROOT${EXTRAS:+[$EXTRAS]}"
if [ "$EDITABLE" = 1 ]; then
    PROJECT_ARGS=(-e "$PROJECT")
else
    PROJECT_ARGS=("$PROJECT")
fi
if [ "$GCP" = 1 ]; then
    # The Beam release already installed: its Google Cloud extra, not a newer Beam.
    BEAM_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("apache-beam"))' 2>/dev/null || true)"
    REQUIREMENTS+=("apache-beam[gcp]${BEAM_VERSION:+==$BEAM_VERSION}" "gcsfs")
fi
if [ -z "${SIMD_CC:-}" ]; then
    SIMD_CC="cc"
    if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then SIMD_CC="cc -mavx2"; fi
fi

# One pip call: the shim named 'pillow' satisfies apache-beam's Pillow requirement with pillow-simd.
# --no-cache-dir so pip never reuses a pillow-simd wheel built with other compiler flags.
CC="$SIMD_CC" "$PY" -m pip install -q --no-cache-dir "$ROOT/packaging/pillow-simd-shim" "${PROJECT_ARGS[@]}" \
    ${REQUIREMENTS[@]+"${REQUIREMENTS[@]}"}
"$PY" -m pip check
"$PY" -c "import PIL, PIL.features as f; assert PIL.__version__.endswith('.post0') and f.check_feature('libjpeg_turbo'), PIL.__version__"
