"""Byte counts as people write them: `65536`, `64M`, `1G`, `512KiB`.

One parser for every place a size comes from (a CLI option, an SHMKV_* variable, a config
file), so that `--arena-bytes 64M` and `SHMKV_ARENA_BYTES=64M` can never disagree. Suffixes are
binary (K = 1024), as /dev/shm sizes are page multiples and nobody means 10**6 there.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """A byte count: plain, or with a binary suffix (64M = 64 MiB, 1G, 512KiB, ...).

    An int is returned as it is (a default that goes through the same parser); anything else
    that is not a size raises ValueError.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a size: use bytes, or a number with K, M, G, T")
    return int(match[1]) << (10 * " KMGT".index(match[2].upper() or " "))
