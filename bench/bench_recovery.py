"""How long the first open of a region file takes after each kind of stop (recovery.py): a clean
close (the marker: nothing to do), every process SIGKILLed in the same boot (the locks' repair
only), and a power loss (no marker, another boot: the region is rebuilt from its arena). Also
the clean close itself (its flush of the file, then the marker).

The region is a file in a temporary directory on the disk (not /dev/shm), filled with N keys
of 16 B and 100 B values. A "power loss" is what one leaves in the file, written into it by
hand: the marker zeroed and the boot id of another boot.

    python bench/bench_recovery.py                 # 1M keys; writes bench/results/recovery-*
    python bench/bench_recovery.py --keys 100000 --quick

Not a test module.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time

import _report  # bench/ is sys.path[0] when this file is run as a script

import shmkv
from shmkv import layout as L
from shmkv import recovery


def _fill(path: str, keys: int) -> float:
    """Store the keys; returns how long the close took (the last handle: flush, marker)."""
    arena_bytes = keys * 200 + (16 << 20)
    c = shmkv.Cache.create(path, arena_bytes=arena_bytes, max_keys=keys)
    value = os.urandom(100)
    for i in range(keys):
        c.set(b"key-%012d" % i, value)
    start = time.perf_counter()
    c.close()
    return time.perf_counter() - start


def _patch(path: str, off: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def _timed_open(path: str) -> tuple[float, dict | None, int]:
    start = time.perf_counter()
    c = shmkv.Cache.open(path)
    elapsed = time.perf_counter() - start
    report, items = c._region.recovery, len(c)
    start = time.perf_counter()
    c.close()
    return elapsed, report, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="print only, write nothing")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="shmkv-bench-recovery-", dir=os.getcwd())
    path = os.path.join(directory, "r.shmkv")
    rows, notes = [], []
    try:
        rows.append(("clean close after the writes (flush + marker)", _fill(path, args.keys),
                     args.keys))
        size_mb = os.path.getsize(path) / 1e6
        elapsed, report, items = _timed_open(path)
        assert report is None and items == args.keys
        rows.append(("open after a clean close", elapsed, items))
        _patch(path, L.H_CLEAN_MARKER, bytes(8))  # processes died: no marker, same boot
        elapsed, report, items = _timed_open(path)
        assert report is None and items == args.keys
        rows.append(("open after every process died", elapsed, items))
        _patch(path, L.H_CLEAN_MARKER, bytes(8))
        _patch(path, L.H_BOOT_ID, struct.pack("<Q", recovery.boot_id() ^ 1))
        elapsed, report, items = _timed_open(path)
        assert report is not None and items == args.keys, (report, items)
        rows.append(("open after a power loss (rebuild)", elapsed, items))
        notes.append(f"region file {size_mb:.0f} MB on the disk under {os.getcwd()}; "
                     f"recovery report: {report}")
    finally:
        shmkv.Cache.unlink(path)
        os.rmdir(directory)
    table = "\n".join(["| what | keys | seconds | keys/s |", "|---|---:|---:|---:|"]
                      + [f"| {w} | {n:,} | {t:.3f} | {n / t:,.0f} |" for w, t, n in rows])
    print(table)
    print("\n".join(f"- {n}" for n in notes))
    if not args.quick:
        command = "python bench/bench_recovery.py " + " ".join(
            a for a in sys.argv[1:])
        md, js = _report.write_results(args.out, "recovery", "First open of a region file "
                                       "after each kind of stop", command.strip(), table, notes,
                                       {"rows": rows, "keys": args.keys})
        print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
