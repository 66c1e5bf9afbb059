"""imagenet-shards: ImageNet archives -> WebDataset shards + Parquet index, on Apache Beam.

This file also serves Beam's ``--setup_file`` so remote workers (Dataflow) install
the same two packages, ``pipeline`` and ``transforms``.

PIL must be pillow-simd: install with ``make install`` (it installs the shim in
packaging/pillow-simd-shim in the same pip call; see README "Installation").
"""
from setuptools import find_packages, setup

setup(
    name="imagenet-shards",
    version="0.1.0",
    description="Ingest ImageNet archives into deterministic WebDataset shards with a Parquet index.",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    package_data={"pipeline": ["data/*.txt", "data/*.md", "data/photos/*"],
                  "transforms": ["data/*.txt", "data/*.md", "data/*.tsv.gz"]},
    include_package_data=True,
    install_requires=[
        "apache-beam>=2.67,<3",  # CI tests the lowest (make test-beam-lowest) and the newest
        "pillow>=12.1.1,<13",  # satisfied by pillow-simd through the shim, see above
        "pyarrow>=17,<26",  # beam caps pyarrow below 26; pinning avoids a backtrack
        "webdataset>=1.0.2,<2",
        "fsspec>=2024.6",
        "numpy>=1.26",
        "opencv-python-headless>=4.9",  # headless: the GUI build aborts without a display
        "defusedxml>=0.7",
        "tqdm>=4.66",
        "psutil>=5.9",  # stopping the local runner's workers on SIGINT / SIGTERM
        "matplotlib>=3.9",  # the plots of `imagenet-shards report` (pipeline/reading/report.py)
    ],
    extras_require={
        # duckdb, polars and wids: tests/test_readers.py reads a build through each of them
        "test": ["pytest>=8", "moto[server]>=5", "s3fs>=2024.6", "ruff>=0.6", "mypy>=1.10",
                 "duckdb>=1.1", "polars>=1.0", "wids>=0.1.11"],
        # Hugging Face datasets, which tests/test_readers.py reads a build with too. Not in "test": the
        # lowest Apache Beam (make test-beam-lowest) caps pyarrow below 19, and datasets 4.1+ needs 21.
        "readers": ["datasets>=3.0"],
    },
    entry_points={"console_scripts": ["imagenet-shards=pipeline.cli:main"]},
)
