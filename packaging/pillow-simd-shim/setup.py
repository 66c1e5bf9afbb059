"""An empty distribution named ``pillow`` whose only job is to pull in pillow-simd.

Why: apache-beam requires ``pillow``, and pip treats ``pillow-simd`` as a different
project. Listing both installs both, stock Pillow is unpacked last and silently
replaces pillow-simd's ``PIL`` package. Installing this shim in the same pip call as
the project satisfies beam's ``pillow`` requirement with no modules of its own, so
the only ``PIL`` on disk is pillow-simd's (see ../../README.md, "Installation").
"""
from setuptools import setup

setup(
    name="pillow",
    version="12.1.1.post0+simd",
    description="Shim: satisfies 'pillow' requirements with pillow-simd (no modules of its own).",
    py_modules=[],
    packages=[],
    install_requires=["pillow-simd==12.1.1.post0"],
)
