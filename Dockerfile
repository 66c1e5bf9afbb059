# The SDK worker image for Dataflow and other Beam runners (README "Running on Dataflow"): Apache Beam's
# own Python SDK image (its worker boot program stays the entrypoint) with imagenet-shards and pillow-simd
# installed by packaging/install.sh, the script that `make install` runs, so that the workers get what
# every `make test` tests. Build it with the driver's Python and Beam versions (the workers unpickle the
# driver's code, and their Beam release must be the driver's):
#
#   docker build --build-arg PYTHON_VERSION=3.11 --build-arg BEAM_VERSION=2.77.0 -t IMAGE .
#
# SIMD_CC builds pillow-simd's AVX2 resize kernels, which every CPU of Dataflow's n2, n2d, c2, c3 and
# e2 machines has; `--build-arg SIMD_CC=cc` builds an image for machines without AVX2.
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}

ARG BEAM_VERSION
ARG SIMD_CC="cc -mavx2"

COPY . /opt/imagenet-shards
# The image's own Python (no venv), the project installed as a copy, with what a build on Dataflow
# needs (--gcp: Beam's Google Cloud extra and gcsfs), and the image's Beam release kept as it is.
RUN SIMD_CC="${SIMD_CC}" bash /opt/imagenet-shards/packaging/install.sh --python python --gcp \
        "apache-beam==${BEAM_VERSION}" \
    && rm -rf /var/lib/apt/lists/* /root/.cache
