"""The allocator settings of the build's processes (pipeline/local_runner.py)."""
import os
import subprocess
import sys

from pipeline.local_runner import MALLOC_DEFAULTS, tune_malloc


def test_tune_malloc_sets_the_defaults_keeps_the_users_and_the_children_inherit_them(monkeypatch):
    for name in MALLOC_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # a user's own value
    tune_malloc()
    expected = {**MALLOC_DEFAULTS, "MALLOC_TRIM_THRESHOLD_": "65536"}
    assert {name: os.environ[name] for name in MALLOC_DEFAULTS} == expected
    child = subprocess.run([sys.executable, "-c", f"import os; print([os.environ[n] for n in {list(expected)!r}])"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == repr(list(expected.values()))


def test_tune_malloc_ignores_a_value_that_is_not_a_number(monkeypatch):
    for name in MALLOC_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "lots")
    tune_malloc()  # no error: glibc ignores such a value too
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "lots"
