"""Byte sizes as people write them: '512MB', '1GiB', '200KB', '1000000'.

This module imports no other module of the project.
"""
from __future__ import annotations

import re

__all__ = ["parse_byte_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_byte_size(text) -> int:
    """'512MB' -> 512_000_000; 'KB/MB/GB' are powers of 1000, 'KiB/MiB/GiB' of 1024; an int
    is taken as it is."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 512MB, 1GiB, 200KB, 1000000)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]
    if value < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return int(value)
