"""Engine micro-benchmark: get, set, delete and insert from a second process against py-lmdb
and a dict.

100k random 16 B keys with 100 B values, in random order. The parent process creates a fresh
region and an LMDB environment and fills both; a second process (this script with --worker)
opens them and times every operation, so shmkv's reads cross a process boundary as they do in
use. shmkv runs twice in that process: with the engine the installation picked (the compiled
core, "shmkv") and with the pure-Python reference ("shmkv-py"). The targets are in TARGETS.

    python bench/bench_engine.py            # full run, writes bench/results/engine-*.md/.json
    python bench/bench_engine.py --quick    # smoke run, writes nothing unless --out is given

Not a test module: pytest collects only tests/ (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _report  # bench/ is sys.path[0] when this file is run as a script

import shmkv

try:
    import lmdb
except ImportError:  # a peer, not a dependency: skipped with a note
    lmdb = None

HERE = Path(__file__).resolve().parent
OP_SHMKV_GET, OP_LMDB_GET_TXN = ("shmkv", "get"), ("lmdb", "get, per-op read txn")
# (what, system/op measured, system/op it is compared with, the most the ratio may be)
TARGETS = [
    ("get <= 0.35x py-lmdb per-op read txn", OP_SHMKV_GET, OP_LMDB_GET_TXN, 0.35),
    ("get <= 1.5x an in-process dict.get", OP_SHMKV_GET, ("dict", "get"), 1.5),
    ("hot-key get <= 2x dict.get of a hot key", ("shmkv", "get, hot key"),
     ("dict", "get, hot key"), 2.0),
    ("get_many(100) per key <= 0.5x a get", ("shmkv", "get_many(100), per key"), OP_SHMKV_GET,
     0.5),
    ("set <= 0.25x py-lmdb per-op write txn", ("shmkv", "set"), ("lmdb", "put, per-op write txn"),
     0.25),
    ("pure-Python get no slower than before the compiled core (vs py-lmdb per-op: <= 1.7x)",
     ("shmkv-py", "get"), OP_LMDB_GET_TXN, 1.7),
]


# --- data ---------------------------------------------------------------------------------
def make_data(n: int, key_bytes: int, value_bytes: int, seed: int) -> tuple[list[bytes],
                                                                           list[bytes]]:
    """n distinct random keys and n random values; the same for the same seed, so the parent
    and the worker build identical data without passing it between them."""
    if 256 ** key_bytes < 2 * n:
        raise SystemExit(f"--key-bytes {key_bytes} is too short for {n} distinct random keys")
    rng = random.Random(seed)
    keys: dict[bytes, None] = {}
    while len(keys) < n:
        keys[rng.randbytes(key_bytes)] = None
    return list(keys), [rng.randbytes(value_bytes) for _ in range(n)]


def round_values(values: list[bytes], rnd: int) -> list[bytes]:
    # Each round writes values that differ from the previous round's (first byte = round
    # number), so the check after the gets proves they read this round's sets.
    mark = bytes([rnd & 0xFF])
    return [mark + v[1:] for v in values]


def arena_bytes_for(n: int, key_bytes: int, value_bytes: int) -> int:
    # entry header + key + value, rounded by the allocator; twice that because an overwrite
    # allocates the new block before it frees the old one, plus slack for small runs.
    return 2 * n * (64 + key_bytes + value_bytes) + (4 << 20)


def lmdb_map_size(n: int, key_bytes: int, value_bytes: int) -> int:
    # LMDB is copy-on-write: generous headroom; the map is sparse, so this costs nothing.
    return max(256 << 20, 16 * n * (key_bytes + value_bytes + 64))


def open_lmdb(path: str, map_size: int) -> Any:
    # sync/metasync off: no fsync per commit, so LMDB is a memory cache like shmkv, not a
    # durable store; writemap: writes go straight to the map, LMDB's fastest put (measured
    # here: ~1.3 us against ~5 us without). Both processes must open it with the same flags.
    return lmdb.open(path, map_size=map_size, sync=False, metasync=False, writemap=True)


# --- timing -------------------------------------------------------------------------------
def time_batches(body: Callable[[Any], None], batches: Sequence[Any]) -> list[int]:
    """ns taken by body(batch) for each batch. One timer pair per batch of ops rather than
    per op: perf_counter_ns itself costs ~50-80 ns, as much as the op being timed."""
    pc = time.perf_counter_ns
    out: list[int] = []
    append = out.append
    for batch in batches:
        t0 = pc()
        body(batch)
        append(pc() - t0)
    return out


def hot_gets(get: Callable[[bytes], Any]) -> Callable[[list[bytes]], None]:
    def body(batch: list[bytes]) -> None:
        key = batch[0]
        for _ in batch:
            get(key)
    return body


def many_gets(get_many: Callable[[list[bytes]], Any]) -> Callable[[list[bytes]], None]:
    def body(batch: list[bytes]) -> None:
        get_many(batch)
    return body


def open_pure(region: str) -> shmkv.Cache:
    """A handle that runs the pure-Python reader, whatever engine the installation picked
    (bench only: the engine is otherwise chosen once, at import)."""
    from shmkv import backend, reader
    chosen = backend.Reader, backend.Writer
    backend.Reader, backend.Writer = reader.Reader, None
    try:
        return shmkv.Cache.open(region)
    finally:
        backend.Reader, backend.Writer = chosen


def gets(get: Callable[[bytes], Any]) -> Callable[[list[bytes]], None]:
    def body(batch: list[bytes]) -> None:
        for k in batch:
            get(k)
    return body


def sets(set_: Callable[[bytes, bytes], Any]) -> Callable[[list[tuple[bytes, bytes]]], None]:
    def body(batch: list[tuple[bytes, bytes]]) -> None:
        for k, v in batch:
            set_(k, v)
    return body


def deletes(delete: Callable[[bytes], Any]) -> Callable[[list[bytes]], None]:
    def body(batch: list[bytes]) -> None:
        for k in batch:
            delete(k)
    return body


def timed_with_events(cache: shmkv.Cache, body: Callable[[Any], None],
                      batches: Sequence[Any]) -> list[int]:
    """time_batches with keyspace events on, as a node runs every write."""
    cache.enable_events(True)
    try:
        return time_batches(body, batches)
    finally:
        cache.enable_events(False)


def churn(system: str, set_: Callable[[bytes, bytes], Any], delete: Callable[[bytes], Any],
          gb: list, sb: list) -> dict[tuple[str, str], Any]:
    """Every key of the round deleted, then inserted again (new keys: a new block each): the
    "delete" and "insert (new keys)" rows."""
    out = {(system, "delete"): summarize_pass(time_batches(deletes(delete), gb), gb)}
    out[(system, "insert (new keys)")] = summarize_pass(time_batches(sets(set_), sb), sb)
    return out


def lmdb_gets_per_txn(env: Any) -> Callable[[list[bytes]], None]:
    begin = env.begin

    def body(batch: list[bytes]) -> None:
        for k in batch:
            with begin() as t:
                t.get(k)
    return body


def lmdb_deletes_per_txn(env: Any) -> Callable[[list[bytes]], None]:
    begin = env.begin

    def body(batch: list[bytes]) -> None:
        for k in batch:
            with begin(write=True) as t:
                t.delete(k)
    return body


def lmdb_puts_per_txn(env: Any) -> Callable[[list[tuple[bytes, bytes]]], None]:
    begin = env.begin

    def body(batch: list[tuple[bytes, bytes]]) -> None:
        for k, v in batch:
            with begin(write=True) as t:
                t.put(k, v)
    return body


def summarize_pass(batch_ns: list[int], batches: Sequence[Sequence[Any]]) -> dict[str, float]:
    per_op = [ns / len(b) for ns, b in zip(batch_ns, batches)]
    stats = _report.percentiles(per_op)
    n = sum(len(b) for b in batches)
    stats["ops_per_s"] = n / (sum(batch_ns) / 1e9)
    return stats


def check(label: str, get: Callable[[bytes], Any], keys: list[bytes], want: list[bytes]) -> None:
    bad = sum(1 for k, v in zip(keys, want) if get(k) != v)
    if bad:
        raise SystemExit(f"{label}: {bad} of {len(keys)} gets returned a wrong value")


# --- the second process -------------------------------------------------------------------
def worker(args: argparse.Namespace) -> dict[str, Any]:
    keys, values = make_data(args.keys, args.key_bytes, args.value_bytes, args.seed)
    order_rng = random.Random(args.seed + 1)  # op order: its own stream, apart from the data
    cache = shmkv.Cache.open(args.region)
    pure = open_pure(args.region)
    env = open_lmdb(args.lmdb_dir, args.lmdb_map_size) if args.lmdb_dir else None
    floor: dict[bytes, bytes] = dict(zip(keys, values))  # in-process floor, same overwrites
    try:
        # The parent filled both stores: check that before timing anything.
        check("shmkv (parent's sets)", cache.get, keys, values)
        if env is not None:
            with env.begin() as t:
                check("lmdb (parent's sets)", t.get, keys, values)

        def run_shmkv(gb: list, sb: list, ks: list, vs: list) -> dict[tuple[str, str], Any]:
            out = {("shmkv", "set"): summarize_pass(time_batches(sets(cache.set), sb), sb),
                   ("shmkv", "get"): summarize_pass(time_batches(gets(cache.get), gb), gb),
                   ("shmkv", "get, hot key"):
                       summarize_pass(time_batches(hot_gets(cache.get), gb), gb),
                   ("shmkv", "get_many(100), per key"):
                       summarize_pass(time_batches(many_gets(cache.get_many), gb), gb)}
            out[("shmkv", "set, events on")] = summarize_pass(
                timed_with_events(cache, sets(cache.set), sb), sb)
            out.update(churn("shmkv", cache.set, cache.delete, gb, sb))
            check("shmkv", cache.get, ks, vs)
            return out

        def run_shmkv_py(gb: list, sb: list, ks: list, vs: list) -> dict[tuple[str, str], Any]:
            # its own sets first (the same Python write path): the round's values, whichever
            # system ran before it
            out = {("shmkv-py", "set"): summarize_pass(time_batches(sets(pure.set), sb), sb),
                   ("shmkv-py", "get"): summarize_pass(time_batches(gets(pure.get), gb), gb)}
            out[("shmkv-py", "set, events on")] = summarize_pass(
                timed_with_events(pure, sets(pure.set), sb), sb)
            out.update(churn("shmkv-py", pure.set, pure.delete, gb, sb))
            check("shmkv-py", pure.get, ks, vs)
            return out

        def run_lmdb(gb: list, sb: list, ks: list, vs: list) -> dict[tuple[str, str], Any]:
            out = {("lmdb", "put, per-op write txn"):
                       summarize_pass(time_batches(lmdb_puts_per_txn(env), sb), sb),
                   OP_LMDB_GET_TXN: summarize_pass(time_batches(lmdb_gets_per_txn(env), gb), gb)}
            with env.begin() as t:  # one snapshot for every get, taken after this round's puts
                out[("lmdb", "get, reused read txn")] = summarize_pass(
                    time_batches(gets(t.get), gb), gb)
                check("lmdb (reused read txn)", t.get, ks, vs)
            out[("lmdb", "delete, per-op write txn")] = summarize_pass(
                time_batches(lmdb_deletes_per_txn(env), gb), gb)
            out[("lmdb", "insert (new keys), per-op write txn")] = summarize_pass(
                time_batches(lmdb_puts_per_txn(env), sb), sb)
            with env.begin() as t:
                check("lmdb", t.get, ks, vs)
            return out

        def run_dict(gb: list, sb: list, ks: list, vs: list) -> dict[tuple[str, str], Any]:
            out = {("dict", "set"): summarize_pass(time_batches(sets(floor.__setitem__), sb), sb),
                   ("dict", "get"): summarize_pass(time_batches(gets(floor.get), gb), gb),
                   ("dict", "get, hot key"):
                       summarize_pass(time_batches(hot_gets(floor.get), gb), gb)}
            out.update(churn("dict", floor.__setitem__, floor.pop, gb, sb))
            check("dict", floor.get, ks, vs)
            return out

        systems: list[Callable[..., dict[tuple[str, str], Any]]] = [run_shmkv, run_shmkv_py]
        if env is not None:
            systems.append(run_lmdb)
        systems.append(run_dict)

        # Warm-up, untimed: fault in pages and caches so round 1 is not penalised.
        warm = keys[:10_000]
        for _ in range(2):
            gets(cache.get)(warm)
            if env is not None:
                lmdb_gets_per_txn(env)(warm)

        B = args.batch
        overhead = _report.percentiles(time_batches(lambda b: None, [keys[i:i + B] for i in
                                                                    range(0, len(keys), B)]))
        rounds: list[dict[str, Any]] = []
        gc.disable()  # a collection inside a timed batch would land on whichever system ran
        try:
            for rnd in range(args.repeat):
                order = list(range(len(keys)))
                order_rng.shuffle(order)  # one order per round, the same for every system
                ks = [keys[i] for i in order]
                vals = round_values(values, rnd + 1)
                vs = [vals[i] for i in order]
                pairs = list(zip(ks, vs))
                gb = [ks[i:i + B] for i in range(0, len(ks), B)]
                sb = [pairs[i:i + B] for i in range(0, len(pairs), B)]
                # Rotate which system goes first so that drifts in machine load (and whatever
                # one system leaves in the caches for the next) fall on each in turn.
                shift = rnd % len(systems)
                result: dict[str, Any] = {"order": []}
                for run in systems[shift:] + systems[:shift]:
                    gc.collect()
                    stats = run(gb, sb, ks, vs)
                    result["order"].append(run.__name__.removeprefix("run_"))
                    for (system, op), s in stats.items():
                        result[f"{system}|{op}"] = s
                rounds.append(result)
        finally:
            gc.enable()
        return {"rounds": rounds, "batch": B, "timer_overhead_ns_per_batch": overhead["median"]}
    finally:
        cache.close()
        pure.close()
        if env is not None:
            env.close()


# --- the parent ---------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return _report.percentiles(xs)["median"]


def combine(rounds: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """One row per (system, op): the median over rounds of each per-round figure."""
    rank = {"shmkv": 0, "shmkv-py": 1, "lmdb": 2, "dict": 3}  # fixed, whatever ran first
    labels = sorted((k for k in rounds[0] if k != "order"),
                    key=lambda k: rank.get(k.split("|", 1)[0], 9))
    rows = []
    for label in labels:
        system, op = label.split("|", 1)
        per = [r[label] for r in rounds]
        rows.append({
            "system": system, "op": op, "n": n,
            "median_ns": median([p["median"] for p in per]),
            "p90_ns": median([p["p90"] for p in per]),
            "p99_ns": median([p["p99"] for p in per]),
            "max_ns": median([p["max"] for p in per]),
            "ops_per_s": median([p["ops_per_s"] for p in per]),
            "per_round_median_ns": [p["median"] for p in per],
        })
    base = {r["op"]: r["median_ns"] for r in rows if r["system"] == "shmkv"}
    for r in rows:
        op = r["op"]
        kind = "set, events on" if op == "set, events on" else \
            "set" if op.startswith(("set", "put")) else \
            "delete" if op.startswith("delete") else \
            "insert (new keys)" if op.startswith("insert") else \
            "get, hot key" if op == "get, hot key" else "get"
        r["ratio"] = r["median_ns"] / base[kind] if kind in base else None
    return rows


def target_lines(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The verdict on each of TARGETS, from the median of per-round medians, with the same
    ratio round by round (runs made moments apart): when the two disagree the difference is
    within the machine's noise, and the line says so instead of a yes or no."""
    by = {(r["system"], r["op"]): r for r in rows}
    lines, results = [], []
    for what, measured, peer, most in TARGETS:
        if measured not in by or peer not in by:
            lines.append(f"Target `{what}`: not evaluated (a system is not installed).")
            results.append({"target": what, "verdict": "not evaluated"})
            continue
        m, p = by[measured], by[peer]
        ratio = m["median_ns"] / p["median_ns"]
        per_round = [a / b for a, b in zip(m["per_round_median_ns"], p["per_round_median_ns"])]
        held = sum(1 for x in per_round if x <= most)
        majority = 2 * held > len(per_round)
        if ratio <= most and majority:
            verdict = "MET"
        elif ratio > most and not majority:
            verdict = "NOT MET"
        else:
            verdict = "NOT RELIABLY MET (table ratio and round-by-round ratios disagree)"
        lines.append(f"Target `{what}`: {verdict}: {ratio:.2f}x (round by round "
                     f"{', '.join(f'{x:.2f}x' for x in per_round)}).")
        results.append({"target": what, "verdict": verdict, "ratio": ratio,
                        "per_round_ratios": per_round, "rounds_held": held})
    return lines, results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="shmkv engine micro-benchmark: get/set from a second process against "
                    "py-lmdb (per-op and reused read txn) and a plain dict.",
        epilog="Peers: py-lmdb (pip install lmdb); if it is not importable it is skipped with "
               "a note. This script installs nothing.")
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--key-bytes", type=int, default=16)
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds; each figure is the median over rounds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=100, help="ops per timer reading")
    p.add_argument("--out", default=None,
                   help="results directory (default: bench/results/, or none with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2,000 keys, 2 rounds, no results file unless --out")
    # Internal: the measuring process.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--region", help=argparse.SUPPRESS)
    p.add_argument("--lmdb-dir", help=argparse.SUPPRESS)
    p.add_argument("--lmdb-map-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.keys, args.repeat = min(args.keys, 2_000), min(args.repeat, 2)
    if args.keys < 1 or args.repeat < 1 or args.batch < 1 or args.value_bytes < 1:
        p.error("--keys, --repeat, --batch and --value-bytes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        json.dump(worker(args), sys.stdout)
        return 0

    command = shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    n, kb, vb = args.keys, args.key_bytes, args.value_bytes
    region = f"shmkvbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # LMDB on tmpfs when there is one: both stores then live in memory.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    lmdb_dir = tempfile.mkdtemp(prefix="shmkvbench-lmdb-", dir=shm) if lmdb else None
    map_size = lmdb_map_size(n, kb, vb)
    keys, values = make_data(n, kb, vb, args.seed)
    print(f"# {n:,} keys of {kb} B, values of {vb} B, {args.repeat} round(s), seed {args.seed}",
          file=sys.stderr)
    t_start = time.monotonic()
    try:
        # max_keys: the index at its usual load, but with room for the hashing's spread on
        # small (--quick) runs, where a stripe may otherwise fill and evict a key
        cache = shmkv.Cache.create(region, arena_bytes=arena_bytes_for(n, kb, vb),
                                   max_keys=max(n, 8192))
        try:
            for k, v in zip(keys, values):
                cache.set(k, v)
        finally:
            cache.close()
        if lmdb_dir:
            env = open_lmdb(lmdb_dir, map_size)
            try:
                with env.begin(write=True) as t:
                    for k, v in zip(keys, values):
                        t.put(k, v)
            finally:
                env.close()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--region", region,
               "--keys", str(n), "--key-bytes", str(kb), "--value-bytes", str(vb),
               "--repeat", str(args.repeat), "--seed", str(args.seed), "--batch", str(args.batch)]
        if lmdb_dir:
            cmd += ["--lmdb-dir", lmdb_dir, "--lmdb-map-size", str(map_size)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode:
            print(f"worker failed with exit status {proc.returncode}", file=sys.stderr)
            return 1
        result = json.loads(proc.stdout)
    finally:
        shmkv.Cache.unlink(region)
        if lmdb_dir:
            shutil.rmtree(lmdb_dir, ignore_errors=True)
    elapsed = time.monotonic() - t_start

    rows = combine(result["rounds"], n)
    table = _report.markdown_table(rows)
    verdicts, target = target_lines(rows)
    B = result["batch"]
    notes = [
        *verdicts,
        f"Engine: shmkv = {shmkv.backend.ENGINE!r} (the installation's: compiled reads, and "
        "compiled writes: set/cas/incr in place or into a free block, delete, events), "
        "shmkv-py = the pure-Python reference engine, in the same process.",
        "Ratio = the system's median / shmkv's median for the same kind of op (get, hot-key "
        "get, set/put, set with events on, delete, insert): above 1 is slower than shmkv. The machine is a shared, noisy VM: "
        "compare ratios, not absolute times.",
        "Timed in a second process: the parent created and filled both stores, the worker "
        "opened them; every timed set/put overwrites an existing key with a same-size value; "
        "\"set, events on\" is that with keyspace events on (as a node runs); \"delete\" "
        "then deletes every key of the round and \"insert (new keys)\" puts them back.",
        f"Timing: perf_counter_ns around batches of {B} ops, per-op ns = batch time / {B}; "
        f"median and p99 are over those batch means (p99 therefore understates single-op "
        f"tails). Timer and call overhead, {result['timer_overhead_ns_per_batch']:.0f} ns per "
        f"batch (~{result['timer_overhead_ns_per_batch'] / B:.1f} ns per op), is included, "
        "the same for every system. ops/s = ops / summed batch time.",
        f"{args.repeat} round(s), each in a fresh random order, systems rotated each round "
        "(orders: " + "; ".join(", ".join(r["order"]) for r in result["rounds"]) + "); each "
        "figure is the median of the per-round figures. GC off during timed passes. Every "
        "get was checked against the round's values, outside the timed passes.",
    ]
    if lmdb:
        notes += [
            "LMDB opened with sync=False, metasync=False, writemap=True (durability off, no fsync "
            "per commit, writes straight to the map: its fastest put) "
            f"in a directory on {'tmpfs' if shm else 'the temp filesystem'}, to make it a "
            "like-for-like memory cache.",
            "lmdb 'reused read txn': one read txn for the whole pass; it reads a stale snapshot "
            "(writes committed after it began are invisible), so it is a lower bound, not what "
            "a cache that must see other processes' writes can do.",
        ]
    else:
        notes.append("lmdb is not installed (pip install lmdb): skipped.")
    notes.append("dict: a plain in-process dict, not shared; the floor for a Python call.")

    print(table)
    print()
    for line in notes:
        print(f"- {line}")
    print(f"\n(total {elapsed:.0f} s)", file=sys.stderr)

    out_dir = args.out if args.out is not None else (None if args.quick else HERE / "results")
    if out_dir is not None:
        summary = {"params": {"keys": n, "key_bytes": kb, "value_bytes": vb,
                              "repeat": args.repeat, "seed": args.seed, "batch": B},
                   "targets": target, "engine": shmkv.backend.ENGINE, "rows": rows,
                   "timer_overhead_ns_per_batch": result["timer_overhead_ns_per_batch"],
                   "rounds": result["rounds"]}
        md, js = _report.write_results(out_dir, "engine", "shmkv engine micro-benchmark",
                                       command, table, notes, summary)
        print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
