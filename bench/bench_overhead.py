"""Space overhead per item: what a region spends on an entry beyond its key and value.

Creates a region sized for --keys keys (max_keys), fills it to exactly that many with 16 B keys
and values of each --value-bytes size (no eviction: the arena has room to spare), and prints
`stats()["overhead_bytes_per_item"]` (entry header, block padding, and the index slot and
access byte of each slot, the index being sized for layout.TARGET_LOAD), with the entry header
size of this layout. Deterministic: no timing.

    python bench/bench_overhead.py                      # 16 B keys; 10, 100, 1000 B values

Not a test module: pytest collects only tests/ (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import os
import uuid

import shmkv
from shmkv import layout as L


def overhead(keys: int, key_bytes: int, value_bytes: int) -> dict[str, object]:
    block = (L.ENTRY_HEADER_BYTES + key_bytes + value_bytes + L.ALIGN - 1) // L.ALIGN * L.ALIGN
    arena_bytes = max(1 << 20, keys * block * 2)
    name = f"shmkv-overhead-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cache = shmkv.Cache.create(name, arena_bytes, max_keys=keys)
    try:
        value = b"v" * value_bytes
        for i in range(keys):
            cache.set(f"{i:0{key_bytes}d}".encode(), value)
        st = cache.stats()
    finally:
        cache.close()
        shmkv.Cache.unlink(name)
    assert st["items"] == keys and st["evictions"] == 0, st
    return {"value_bytes": value_bytes, "items": st["items"],
            "overhead": st["overhead_bytes_per_item"], "engine": st["engine"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--key-bytes", type=int, default=16)
    p.add_argument("--value-bytes", type=int, nargs="+", default=[10, 100, 1000])
    args = p.parse_args()
    print(f"layout {L.LAYOUT_VERSION}, entry header {L.ENTRY_HEADER_BYTES} B, "
          f"{args.keys} keys of {args.key_bytes} B (region filled to max_keys)")
    print(f"{'value B':>8} {'items':>7} {'overhead B/item':>16}  engine")
    for vb in args.value_bytes:
        r = overhead(args.keys, args.key_bytes, vb)
        print(f"{r['value_bytes']:>8} {r['items']:>7} {r['overhead']:>16}  {r['engine']}")


if __name__ == "__main__":
    main()
