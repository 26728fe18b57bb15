"""shmkv side by side with what users would pick instead, in one run (issue 6).

Systems: shmkv, py-lmdb (a txn per op: the like-for-like peer), Redis over a unix socket
(redis-py, hiredis parser), memcached over a unix socket (pymemcache),
multiprocessing.Manager().dict(), and a plain dict (single-process workloads only). The
script sets each one up itself (peers.py): a fresh region, an LMDB env on tmpfs, servers on
sockets in a private temp dir; everything is stopped and removed at the end, also on Ctrl-C.

Workloads, all over 16 B keys (hex text: memcached's protocol refuses control bytes) and
100 B values, seeded:
  1. single-process get/set latency, 100k keys in random order: median, p99, ops/s
  2. one writer + one reader process at once: ops/s each
  3. two reader processes: ops/s each, and the scaling over one reader alone
  4. large values (1 MiB, 64 MiB): set, get (a copy), view (zero copy, where there is one)
  5. 90% get / 10% set on Zipf-distributed keys from two processes: ops/s in total
Every measuring process is a fresh one (multiprocessing "spawn"); the processes of a workload
start their timed part together at a barrier and read one clock (perf_counter_ns, which on
Linux is CLOCK_MONOTONIC, the same for every process).

    python bench/bench_peers.py --json peers.json --markdown peers.md   # full run, < 10 min
    python bench/bench_peers.py --quick                                 # ~1 min smoke run

Not a test module: pytest collects only tests/ (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import multiprocessing
import os
import queue
import random
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import _report  # bench/ is sys.path[0] when this file is run as a script
import peers
from bench_engine import (arena_bytes_for, check, combine, gets, lmdb_map_size, make_data,
                          round_values, sets, summarize_pass, time_batches)
from bench_eviction import zipf_ranks

MIB = 1 << 20
OPS_PER_CYCLE = 1 << 16  # pre-drawn ops a throughput process cycles through
CHECK_SAMPLE = 1000  # keys read back (untimed) after each pass, to prove the sets landed
PROCESS_TIMEOUT_S = 900.0
BARRIER_TIMEOUT_S = 120.0
# The targets (the compiled core's issue; Redis's from the bench suite's)
REDIS_X_TARGET = 50.0
LMDB_GET_MOST = 0.35  # shmkv get / py-lmdb per-op read txn get
WRITER_READER_X = 3.0  # shmkv ops/s / py-lmdb ops/s, writer and reader alike
READERS_SCALING = 1.8  # 2 readers' total / 1 reader alone
LMDB_SYSTEM = "py-lmdb"
# How the table names py-lmdb's ops, so nobody mistakes them for a reused snapshot txn.
OP_LABELS = {LMDB_SYSTEM: ("get, per-op read txn", "put, per-op write txn")}


@dataclass(frozen=True)
class Params:
    keys: int
    key_bytes: int
    value_bytes: int
    seed: int
    batch: int              # ops per clock reading for in-process systems
    repeat: int             # rounds of workload 1
    round_trip_ops: int     # ops per pass in workload 1 for systems with a socket round trip
    duration_s: float       # timed part of workloads 2, 3 and 5
    zipf_alpha: float
    set_pct: int            # of the ops in workload 5
    large_bytes: tuple[int, ...]
    large_reps: int


# --- data ---------------------------------------------------------------------------------
def text_data(p: Params) -> tuple[list[bytes], list[bytes]]:
    """bench_engine's seeded keys, hex-encoded to key_bytes of text, and its values. The same
    for the same seed, so every process rebuilds them instead of receiving them."""
    raw, values = make_data(p.keys, p.key_bytes // 2, p.value_bytes, p.seed)
    return [k.hex().encode() for k in raw], values


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def batch_for(spec: peers.Spec, p: Params) -> int:
    # A socket round trip takes tens of µs: a clock reading per op (~60 ns) is then noise, and
    # gives true per-op percentiles. In-process ops take ~1 µs, so those are timed in batches.
    return 1 if spec.round_trip else p.batch


def size_label(value_bytes: int) -> str:
    return f"{value_bytes // MIB} MiB" if value_bytes % MIB == 0 else f"{value_bytes:,} B"


# --- running measuring processes together ---------------------------------------------------
def _child(job: Callable[[Any], dict[str, Any]], barrier: Any, results: Any, slot: int) -> None:
    try:
        results.put((slot, job(barrier)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        barrier.abort()  # the siblings waiting at the barrier give up instead of hanging
        results.put((slot, {"error": traceback.format_exc()}))


def run_together(jobs: Sequence[Callable[[Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run each job(barrier) in a fresh process and return their results in order. Fresh
    ("spawn") processes inherit no client, mapping or LMDB env from this one."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(jobs), timeout=BARRIER_TIMEOUT_S)
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(job, barrier, results, i), daemon=True)
             for i, job in enumerate(jobs)]
    try:
        for proc in procs:
            proc.start()
        return _collect(procs, results)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def _collect(procs: list[Any], results: Any) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while len(out) < len(procs):
        try:
            slot, result = results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for i, p in enumerate(procs) if i not in out and p.exitcode is not None]
            if dead:  # gone without a word: killed, or crashed in C
                raise RuntimeError(f"a measuring process died (exit code {dead[0].exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"measuring processes still busy after {PROCESS_TIMEOUT_S} s")
            continue
        if "error" in result:
            raise RuntimeError("a measuring process failed:\n" + result["error"])
        out[slot] = result
    return [out[i] for i in range(len(procs))]


# --- workload 1: single-process latency -----------------------------------------------------
def latency_job(specs: Sequence[peers.Spec], p: Params, barrier: Any) -> dict[str, Any]:
    """Rounds of a set pass then a get pass per system, in one process, every system on the
    same random order; systems rotate each round so load drifts fall on each in turn."""
    keys, values = text_data(p)
    order_rng = random.Random(p.seed + 1)
    clients = [(spec, spec.open()) for spec in specs]
    try:
        for spec, client in clients:
            if not spec.shared:  # the parent filled the shared stores; a dict is this process's
                client.fill(zip(keys, values))
            gets(client.get)(keys[:1000])  # warm-up, untimed: fault in pages, open sockets
        barrier.wait()
        rounds = []
        gc.disable()  # a collection inside a timed batch would land on whichever system ran
        try:
            for rnd in range(p.repeat):
                order = list(range(p.keys))
                order_rng.shuffle(order)
                vals = round_values(values, rnd + 1)
                pairs = [(keys[i], vals[i]) for i in order]
                shift = rnd % len(clients)
                result: dict[str, Any] = {"order": []}
                for spec, client in clients[shift:] + clients[:shift]:
                    result["order"].append(spec.name)
                    result.update(latency_pass(spec, client, pairs, p, rnd))
                rounds.append(result)
        finally:
            gc.enable()
        overhead = _report.percentiles(time_batches(lambda b: None, batched(keys, p.batch)))
        return {"rounds": rounds, "timer_overhead_ns_per_batch": overhead["median"]}
    finally:
        for _, client in clients:
            client.close()


def latency_pass(spec: peers.Spec, client: peers.Client, pairs: list[tuple[bytes, bytes]],
                 p: Params, rnd: int) -> dict[str, dict[str, float]]:
    """One set pass and one get pass over (the first round_trip_ops of) pairs."""
    timed = pairs if not spec.round_trip else pairs[:p.round_trip_ops]
    size = batch_for(spec, p)
    set_batches = batched(timed, size)
    get_batches = batched([k for k, _ in timed], size)
    get_op, set_op = OP_LABELS.get(spec.name, ("get", "set"))
    gc.collect()
    out = {f"{spec.name}|{set_op}": summarize_pass(time_batches(sets(client.set), set_batches),
                                                   set_batches),
           f"{spec.name}|{get_op}": summarize_pass(time_batches(gets(client.get), get_batches),
                                                   get_batches)}
    for stats in out.values():
        stats["n"] = len(timed)
    sample = random.Random(p.seed + rnd).sample(timed, min(CHECK_SAMPLE, len(timed)))
    check(spec.name, client.get, [k for k, _ in sample], [v for _, v in sample])
    return out


def latency_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """combine()'s rows (median over rounds; ratio = median / shmkv's median for the same kind
    of op), in SYSTEMS order, with each row's own op count."""
    rounds = result["rounds"]
    rows = combine(rounds, 0)
    for row in rows:
        row["n"] = rounds[0][f"{row['system']}|{row['op']}"]["n"]
    kind = {"get": 0, "set": 1, "put": 1}
    rows.sort(key=lambda r: (peers.SYSTEMS.index(r["system"]), kind[r["op"][:3]]))
    return rows


# --- workloads 2, 3 and 5: processes running at once --------------------------------------
def draw_ops(role: str, keys: list[bytes], values: list[bytes], p: Params,
             proc_seed: int) -> list[tuple[bytes, bytes | None]]:
    """OPS_PER_CYCLE (key, value) pairs; value None means a get. Drawn before the clock starts:
    drawing a Zipf key costs more than a shmkv get."""
    rng = np.random.default_rng(proc_seed)
    if role == "mixed":
        # Both processes share one rank -> key mapping (seeded by p.seed), so they contend on
        # the same hot keys; their draws differ (proc_seed).
        to_key = np.random.default_rng(p.seed + 2).permutation(len(keys))
        idx = to_key[zipf_ranks(OPS_PER_CYCLE, len(keys), p.zipf_alpha, rng)]
        is_set = rng.random(OPS_PER_CYCLE) < p.set_pct / 100
    else:
        idx = rng.integers(0, len(keys), OPS_PER_CYCLE)
        is_set = np.full(OPS_PER_CYCLE, role == "set")
    return [(keys[i], values[i] if s else None) for i, s in zip(idx.tolist(), is_set.tolist())]


def mixed_ops(client: peers.Client) -> Callable[[Sequence[tuple[bytes, bytes | None]]], None]:
    get, set_ = client.get, client.set

    def body(batch: Sequence[tuple[bytes, bytes | None]]) -> None:
        for key, value in batch:
            if value is None:
                get(key)
            else:
                set_(key, value)
    return body


def run_for(duration_s: float, batches: Sequence[Any], body: Callable[[Any], None],
            batch_size: int) -> dict[str, Any]:
    """Run body over batches, cycling, until duration_s has passed; the clock is read once
    per batch, which gives each batch's time at no extra cost."""
    pc = time.perf_counter_ns
    batch_ns: list[int] = []
    append = batch_ns.append
    n_batches = len(batches)
    start_ns = now_ns = pc()
    deadline_ns = start_ns + int(duration_s * 1e9)
    i = 0
    while now_ns < deadline_ns:
        body(batches[i % n_batches])
        t = pc()
        append(t - now_ns)
        now_ns = t
        i += 1
    stats = _report.percentiles(ns / batch_size for ns in batch_ns)
    ops = i * batch_size
    return {"ops": ops, "start_ns": start_ns, "end_ns": now_ns,
            "ops_per_s": ops * 1e9 / (now_ns - start_ns), "median": stats["median"],
            "p99": stats["p99"], "batch": batch_size}


def throughput_job(spec: peers.Spec, p: Params, role: str, proc_seed: int,
                   barrier: Any) -> dict[str, Any]:
    keys, values = text_data(p)
    ops = draw_ops(role, keys, values, p, proc_seed)
    size = batch_for(spec, p)
    batches = batched(ops, size)
    client = spec.open()
    try:
        body = mixed_ops(client)
        body(batches[0])  # warm-up, untimed: connect, fault in the mapping
        gc.disable()
        try:
            barrier.wait()
            return run_for(p.duration_s, batches, body, size)
        finally:
            gc.enable()
    finally:
        client.close()


def run_roles(spec: peers.Spec, p: Params, roles: Sequence[tuple[str, int]]) -> list[dict]:
    return run_together([functools.partial(throughput_job, spec, p, role, seed)
                         for role, seed in roles])


def throughput_row(system: str, op: str, r: dict[str, Any]) -> dict[str, Any]:
    return {"system": system, "op": op, "n": r["ops"], "median_ns": r["median"],
            "p99_ns": r["p99"], "ops_per_s": r["ops_per_s"], "ratio": None}


def total_row(system: str, op: str, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"system": system, "op": op, "n": sum(r["ops"] for r in parts), "median_ns": None,
            "p99_ns": None, "ops_per_s": sum(r["ops_per_s"] for r in parts), "ratio": None}


def throughput_ratios(rows: list[dict[str, Any]]) -> None:
    """ratio = shmkv's ops/s / the system's, for the same op: above 1 the system is slower
    than shmkv, as in the latency tables."""
    base = {r["op"]: r["ops_per_s"] for r in rows if r["system"] == "shmkv"}
    for r in rows:
        if r["op"] in base and r["ops_per_s"]:
            r["ratio"] = base[r["op"]] / r["ops_per_s"]


def start_skew_us(runs: Sequence[Sequence[dict[str, Any]]]) -> float:
    """The largest gap between the first and last process of a run to start its clock."""
    gaps = [max(r["start_ns"] for r in run) - min(r["start_ns"] for r in run)
            for run in runs if len(run) > 1]
    return max(gaps, default=0) / 1e3


def writer_reader(specs: Sequence[peers.Spec], p: Params) -> tuple[list[dict], list[list]]:
    rows, runs = [], []
    for spec in specs:
        writer, reader = run_roles(spec, p, [("set", p.seed + 10), ("get", p.seed + 11)])
        rows += [throughput_row(spec.name, "writer (set)", writer),
                 throughput_row(spec.name, "reader (get)", reader)]
        runs.append([writer, reader])
    throughput_ratios(rows)
    return rows, runs


def two_readers(specs: Sequence[peers.Spec], p: Params) -> tuple[list[dict], list[list],
                                                                 dict[str, float]]:
    rows, runs, scaling = [], [], {}
    for spec in specs:
        (alone,) = run_roles(spec, p, [("get", p.seed + 20)])
        pair = run_roles(spec, p, [("get", p.seed + 21), ("get", p.seed + 22)])
        both = total_row(spec.name, "2 readers, total", pair)
        rows += [throughput_row(spec.name, "1 reader alone", alone),
                 throughput_row(spec.name, "2 readers, reader A", pair[0]),
                 throughput_row(spec.name, "2 readers, reader B", pair[1]), both]
        runs.append(pair)
        scaling[spec.name] = both["ops_per_s"] / alone["ops_per_s"]
    throughput_ratios(rows)
    return rows, runs, scaling


def mixed_zipf(specs: Sequence[peers.Spec], p: Params) -> tuple[list[dict], list[list]]:
    rows, runs = [], []
    for spec in specs:
        pair = run_roles(spec, p, [("mixed", p.seed + 30), ("mixed", p.seed + 31)])
        rows += [throughput_row(spec.name, "process A", pair[0]),
                 throughput_row(spec.name, "process B", pair[1]),
                 total_row(spec.name, "total", pair)]
        runs.append(pair)
    throughput_ratios(rows)
    return rows, runs


# --- workload 4: large values -------------------------------------------------------------
def timed_ns(fn: Callable[[], Any]) -> tuple[int, Any]:
    """One call's ns, and what it returned (released after the clock stops, so freeing a
    large copy is not counted as part of making it)."""
    t0 = time.perf_counter_ns()
    out = fn()
    return time.perf_counter_ns() - t0, out


def view_ends(client: peers.Client, key: bytes) -> tuple[int, int, int]:
    """Open a zero-copy view, read its first and last byte and its length, close it."""
    with client.view(key) as mv:
        return mv[0], mv[-1], len(mv)


def large_job(specs: Sequence[peers.Spec], p: Params, barrier: Any) -> dict[str, Any]:
    rng = random.Random(p.seed + 40)
    clients = [(spec, spec.open()) for spec in specs]
    try:
        barrier.wait()
        out: dict[str, Any] = {}
        for value_bytes in p.large_bytes:
            first = rng.randbytes(value_bytes)
            # Two values, alternated, so that every set really replaces the stored one.
            pair = (first, bytes([first[0] ^ 0xFF]) + first[1:])
            for spec, client in clients:
                out[f"{spec.name}|{value_bytes}"] = large_values(client, pair, p.large_reps)
        return out
    finally:
        for _, client in clients:
            client.close()


def large_values(client: peers.Client, pair: tuple[bytes, bytes], reps: int) -> dict:
    key = b"large:%d" % len(pair[0])
    ns: dict[str, list[int]] = {"set": [], "get": [], "view": []}
    for rep in range(reps):
        want = pair[rep % 2]
        ns["set"].append(timed_ns(lambda: client.set(key, want))[0])
        t, got = timed_ns(lambda: client.get(key))
        ns["get"].append(t)
        if got != want:
            raise SystemExit(f"large get of {len(want):,} B returned a wrong value")
        del got
        if client.view is not None:
            t, (first, last, length) = timed_ns(lambda: view_ends(client, key))
            ns["view"].append(t)
            if (first, last, length) != (want[0], want[-1], len(want)):
                raise SystemExit(f"large view of {len(want):,} B saw a wrong value")
    return ns


def large_rows(specs: Sequence[peers.Spec], result: dict[str, Any],
               p: Params) -> list[dict[str, Any]]:
    rows = []
    for value_bytes in p.large_bytes:
        label = size_label(value_bytes)
        for op, what in (("set", "set"), ("get", "get (copy)"), ("view", "view (zero-copy)")):
            for spec in specs:
                ns = result[f"{spec.name}|{value_bytes}"][op]
                if ns:
                    stats = _report.percentiles(ns)
                    rows.append({"system": spec.name, "op": f"{what} {label}", "n": len(ns),
                                 "median_ns": stats["median"], "p99_ns": stats["p99"],
                                 "ops_per_s": 1e9 * len(ns) / sum(ns), "ratio": None})
                elif spec.name == "shmkv":
                    rows.append({"system": "shmkv", "op": f"{what} {label}",
                                 "na": "n/a (not available)"})
    base = {r["op"]: r["median_ns"] for r in rows if r["system"] == "shmkv" and not r.get("na")}
    for r in rows:
        if r["op"] in base and not r.get("na"):
            r["ratio"] = r["median_ns"] / base[r["op"]]
    return rows


# --- targets ------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


Rows = dict[tuple[str, str], dict[str, Any]]


def by_system_op(rows: list[dict[str, Any]]) -> Rows:
    return {(r["system"], r["op"]): r for r in rows}


def not_evaluated(name: str, system: str) -> dict[str, Any]:
    return {"target": name, "verdict": f"not evaluated ({system} skipped)"}


def redis_target(lat: Rows) -> dict[str, Any]:
    name = f"shmkv get >= {REDIS_X_TARGET:.0f}x faster than redis-py+hiredis (unix socket)"
    redis_get, shmkv_get = lat.get(("redis", "get")), lat[("shmkv", "get")]
    if redis_get is None:
        return not_evaluated(name, "redis")
    x = redis_get["median_ns"] / shmkv_get["median_ns"]
    return {"target": name, "verdict": verdict(x >= REDIS_X_TARGET), "ratio": x,
            "numbers": f"redis get {redis_get['median_ns']:,.0f} ns / shmkv get "
                       f"{shmkv_get['median_ns']:,.0f} ns = {x:,.1f}x (median per op; "
                       f"parser: {peers.redis_parser()})"}


def lmdb_get_target(lat: Rows) -> dict[str, Any]:
    name = f"shmkv get at most {LMDB_GET_MOST:.2f}x py-lmdb's per-op read txn"
    lmdb_get = lat.get((LMDB_SYSTEM, OP_LABELS[LMDB_SYSTEM][0]))
    shmkv_get = lat[("shmkv", "get")]
    if lmdb_get is None:
        return not_evaluated(name, LMDB_SYSTEM)
    x = shmkv_get["median_ns"] / lmdb_get["median_ns"]
    # Round by round too: the two medians above come from different moments of a noisy run.
    per_round = [a / b for a, b in zip(shmkv_get["per_round_median_ns"],
                                       lmdb_get["per_round_median_ns"])]
    return {"target": name, "verdict": verdict(x <= LMDB_GET_MOST), "ratio": x,
            "per_round_ratios": per_round,
            "numbers": f"shmkv get {shmkv_get['median_ns']:,.0f} ns / py-lmdb get "
                       f"{lmdb_get['median_ns']:,.0f} ns = {x:.2f}x (needs <= "
                       f"{LMDB_GET_MOST}); round by round "
                       + ", ".join(f"{r:.2f}x" for r in per_round)}


def writer_reader_target(thr: Rows) -> dict[str, Any]:
    name = (f"1 writer + 1 reader: shmkv's writer and reader both at least "
            f"{WRITER_READER_X:.0f}x py-lmdb's ops/s")
    if (LMDB_SYSTEM, "writer (set)") not in thr:
        return not_evaluated(name, LMDB_SYSTEM)
    ops = ("writer (set)", "reader (get)")
    x = {op: thr[("shmkv", op)]["ops_per_s"] / thr[(LMDB_SYSTEM, op)]["ops_per_s"] for op in ops}
    return {"target": name, "verdict": verdict(min(x.values()) >= WRITER_READER_X),
            "ratio": min(x.values()),
            "numbers": "; ".join(f"{op}: shmkv {thr[('shmkv', op)]['ops_per_s']:,.0f} vs "
                                 f"py-lmdb {thr[(LMDB_SYSTEM, op)]['ops_per_s']:,.0f} ops/s = "
                                 f"{x[op]:.2f}x" for op in ops)}


def readers_scaling_target(scaling: dict[str, float]) -> dict[str, Any]:
    name = f"2 reader processes: at least {READERS_SCALING:.1f}x the ops/s of one"
    x = scaling["shmkv"]
    return {"target": name, "verdict": verdict(x >= READERS_SCALING), "ratio": x,
            "numbers": f"shmkv 2 readers' total / 1 reader alone = {x:.2f}x"}


def targets(lat_rows: list[dict[str, Any]], wr_rows: list[dict[str, Any]],
            scaling: dict[str, float]) -> list[dict]:
    """The targets, each with its verdict and the numbers behind it."""
    lat = by_system_op(lat_rows)
    return [redis_target(lat), lmdb_get_target(lat), writer_reader_target(by_system_op(wr_rows)),
            readers_scaling_target(scaling)]


def targets_md(results: list[dict[str, Any]]) -> str:
    return "\n".join(f"- **{t['verdict']}**: {t['target']}. {t.get('numbers', '')}".rstrip()
                     for t in results)


# --- the run ------------------------------------------------------------------------------
def sizing_for(p: Params) -> peers.Sizing:
    large_total = sum(p.large_bytes)
    return peers.Sizing(
        # Headroom over the key count: with max_keys = n, a small run (--quick) now and then
        # fills one index stripe past its limit and evicts, which a check then reports.
        max_keys=p.keys * 3 // 2 + len(p.large_bytes) + 64,
        data_bytes=p.keys * (p.key_bytes + p.value_bytes),
        max_value_bytes=max((p.value_bytes, *p.large_bytes)),
        # An overwrite of a large value builds the new one before freeing the old: room for
        # both, plus slack.
        shmkv_arena_bytes=arena_bytes_for(p.keys, p.key_bytes, p.value_bytes)
        + 3 * large_total,
        # LMDB is copy-on-write and its map is sparse: headroom costs nothing.
        lmdb_map_bytes=lmdb_map_size(p.keys, p.key_bytes, p.value_bytes) + 8 * large_total,
    )


def fill_shared(specs: Sequence[peers.Spec], p: Params) -> None:
    """Load every shared store with the same keys and values, untimed, and check a sample."""
    keys, values = text_data(p)
    sample = random.Random(p.seed).sample(range(p.keys), min(CHECK_SAMPLE, p.keys))
    for spec in specs:
        client = spec.open()
        try:
            client.fill(zip(keys, values))
            check(f"{spec.name} (fill)", client.get, [keys[i] for i in sample],
                  [values[i] for i in sample])
        finally:
            client.close()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_workloads(specs: list[peers.Spec], p: Params) -> dict[str, Any]:
    shared = [s for s in specs if s.shared]
    log(f"# filling {', '.join(s.name for s in shared)} with {p.keys:,} keys")
    fill_shared(shared, p)
    log("# 1. single-process latency")
    (lat,) = run_together([functools.partial(latency_job, specs, p)])
    log("# 2. one writer + one reader")
    wr_rows, wr_runs = writer_reader(shared, p)
    log("# 3. two readers")
    rd_rows, rd_runs, scaling = two_readers(shared, p)
    log("# 5. mixed 90/10 Zipf, two processes")
    mx_rows, mx_runs = mixed_zipf(shared, p)
    log("# 4. large values")
    (large,) = run_together([functools.partial(large_job, shared, p)])
    lat_rows = latency_rows(lat)
    return {
        "latency": {"rows": lat_rows, "rounds": lat["rounds"],
                    "timer_overhead_ns_per_batch": lat["timer_overhead_ns_per_batch"]},
        "writer_reader": {"rows": wr_rows, "runs": wr_runs},
        "two_readers": {"rows": rd_rows, "runs": rd_runs, "scaling": scaling},
        "mixed_zipf": {"rows": mx_rows, "runs": mx_runs},
        "large": {"rows": large_rows(shared, large, p), "ns": large},
        "start_skew_us": start_skew_us(wr_runs + rd_runs + mx_runs),
        "targets": targets(lat_rows, wr_rows, scaling),
    }


def timing_line(specs: Sequence[peers.Spec], p: Params) -> str:
    per_op = [s.name for s in specs if s.round_trip]
    batched_ = [s.name for s in specs if not s.round_trip]
    return (f"Timing: perf_counter_ns per op for {', '.join(per_op) or '-'} (a socket round "
            f"trip each); per batch of {p.batch} ops for {', '.join(batched_)}, per-op ns = "
            f"batch ns / {p.batch}, so their p99 is over batch means.")


def sections_md(res: dict[str, Any], specs: list[peers.Spec], p: Params) -> str:
    shared = ", ".join(s.name for s in specs if s.shared)
    per_op = ", ".join(s.name for s in specs if s.round_trip)
    sampled = (f"{per_op} time the first {min(p.keys, p.round_trip_ops):,} ops of each "
               "round's order. " if per_op and p.round_trip_ops < p.keys else "")
    lat = res["latency"]
    scaling = ", ".join(f"{k} {v:.2f}x" for k, v in res["two_readers"]["scaling"].items())
    parts = [
        f"## 1. Single-process get/set latency ({p.keys:,} keys of {p.key_bytes} B, values of "
        f"{p.value_bytes} B, random order)",
        f"{p.repeat} round(s), systems rotated each round; each figure is the median over "
        f"rounds. {sampled}{timing_line(specs, p)} Timer overhead "
        f"{lat['timer_overhead_ns_per_batch']:.0f} ns per reading. Ratio = median / shmkv's "
        "median: above 1 is slower than shmkv.",
        _report.markdown_table(lat["rows"]),
        f"## 2. One writer + one reader process, {p.duration_s:g} s ({shared})",
        "Uniform random keys; each process's ops/s over its own clock span. Ratio = shmkv's "
        "ops/s / the system's: above 1 is slower than shmkv.",
        _report.markdown_table(res["writer_reader"]["rows"]),
        f"## 3. Two reader processes, {p.duration_s:g} s each run",
        f"Scaling (2 readers' total / 1 reader alone): {scaling}.",
        _report.markdown_table(res["two_readers"]["rows"]),
        f"## 4. Large values ({', '.join(size_label(b) for b in p.large_bytes)}), "
        f"{p.large_reps} reps, one process",
        "Each op timed alone. set alternates two values so every set replaces the stored one; "
        "get returns a copy; view = open a zero-copy view, read its first and last byte and "
        "its length, close it (shmkv `with cache.view(key) as mv:`, py-lmdb "
        "`begin(buffers=True)`). redis, memcached and Manager().dict() have no zero-copy read.",
        _report.markdown_table(res["large"]["rows"]),
        f"## 5. Mixed {100 - p.set_pct}% get / {p.set_pct}% set, Zipf({p.zipf_alpha:g}) keys, "
        f"2 processes, {p.duration_s:g} s",
        _report.markdown_table(res["mixed_zipf"]["rows"]),
        "## Targets",
        targets_md(res["targets"]),
    ]
    return "\n\n".join(parts)


def general_notes(p: Params, res: dict[str, Any], skipped: list[str]) -> list[str]:
    import shmkv.backend
    return skipped + [
        f"shmkv engine: {shmkv.backend.ENGINE!r} (reads compiled when 'c'; writes are the "
        "compiled fast path where it applies, the Python write path otherwise).",
        f"Processes of workloads 2, 3 and 5 start their timed part at a barrier; the largest "
        f"start gap between two of them was {res['start_skew_us']:,.0f} µs. Each reads "
        "perf_counter_ns (CLOCK_MONOTONIC: one clock for all processes) after every batch "
        f"(1 op for round-trip systems, {p.batch} ops for the others).",
        "py-lmdb: sync=False, metasync=False, writemap=True (no fsync per commit), env on "
        "tmpfs, a txn per op (one extra Python function per op, ~30-40 ns); Redis: --save '' "
        "--appendonly no; memcached: pymemcache with noreply off (a set waits for the "
        "server's reply). All servers on unix sockets in a private temp dir, started and "
        "stopped by this script.",
        f"Redis parser: {peers.redis_parser()}. dict: a plain in-process dict, the floor for "
        "a Python call; single-process workloads only.",
        f"Seeded: --seed {p.seed} (keys, values, orders, Zipf draws). Every pass of workload 1 "
        f"reads back {CHECK_SAMPLE} of the keys it set (untimed); workload 4 checks every get "
        "and view.",
        "The machine is shared and noisy: compare ratios, not absolute times.",
    ]


def print_report(body_md: str, notes: Sequence[str]) -> None:
    print(body_md)
    print("\n## Notes\n")
    for line in notes:
        print(f"- {line}")


# --- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[Params, argparse.Namespace]:
    how = "; ".join(f"{name}: {how}" for name, how in peers.HOW_TO_GET.items())
    ap = argparse.ArgumentParser(
        description="shmkv side by side with py-lmdb, Redis, memcached, "
                    "multiprocessing.Manager().dict() and a plain dict, in one run.",
        epilog=f"Peers, when installed ({how}). This script installs nothing; a missing peer "
               "is skipped with a note in the output. Servers run on unix sockets in a temp "
               "dir, started and stopped by the script; a system-wide server is never used.")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--key-bytes", type=int, default=16, help="even: keys are hex text")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=100,
                    help="ops per clock reading for in-process systems")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of workload 1")
    ap.add_argument("--round-trip-ops", type=int, default=20_000,
                    help="ops per pass of workload 1 for socket systems (~50-150 µs each)")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="timed part of each run of workloads 2, 3 and 5")
    ap.add_argument("--zipf-alpha", type=float, default=0.99)
    ap.add_argument("--set-pct", type=int, default=10, help="sets in workload 5, in percent")
    ap.add_argument("--large-mib", type=float, nargs="+", default=[1, 64],
                    help="value sizes of workload 4, in MiB")
    ap.add_argument("--large-reps", type=int, default=10)
    ap.add_argument("--systems", default=",".join(peers.SYSTEMS),
                    help="comma-separated subset of: " + ", ".join(peers.SYSTEMS))
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    ap.add_argument("--markdown", metavar="PATH", help="write the markdown report here")
    ap.add_argument("--quick", action="store_true",
                    help="~1 minute smoke run: 2,000 keys, 1 round, 1 s runs, 3 large reps")
    args = ap.parse_args(argv)
    if args.quick:
        args.keys, args.repeat = min(args.keys, 2_000), 1
        args.round_trip_ops, args.seconds = min(args.round_trip_ops, 2_000), min(args.seconds, 1)
        args.large_reps = min(args.large_reps, 3)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "shmkv" not in wanted or not set(wanted) <= set(peers.SYSTEMS):
        ap.error(f"--systems must include shmkv and name only: {', '.join(peers.SYSTEMS)}")
    if min(args.keys, args.repeat, args.batch, args.value_bytes, args.round_trip_ops,
           args.large_reps) < 1 or args.seconds <= 0 or min(args.large_mib) <= 0:
        ap.error("counts, sizes and --seconds must be positive")
    if args.key_bytes < 6 or args.key_bytes % 2:
        ap.error("--key-bytes must be even and at least 6 (keys are hex text)")
    if not 0 <= args.set_pct <= 100:
        ap.error("--set-pct must be between 0 and 100")
    args.wanted = wanted
    return Params(
        keys=args.keys, key_bytes=args.key_bytes, value_bytes=args.value_bytes, seed=args.seed,
        batch=args.batch, repeat=args.repeat, round_trip_ops=args.round_trip_ops,
        duration_s=args.seconds, zipf_alpha=args.zipf_alpha, set_pct=args.set_pct,
        large_bytes=tuple(int(m * MIB) for m in args.large_mib), large_reps=args.large_reps,
    ), args


def _exit_on_sigterm(signum: int, _: Any) -> None:
    # SystemExit unwinds through the ExitStack, so servers, region and temp dir go too.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p, args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    t_start = time.monotonic()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # tmpfs: LMDB lives in memory
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shmkv-peers-",
                                                                   dir=shm)))
        specs, skipped = peers.start_systems(stack, tmp, sizing_for(p), args.wanted)
        log(f"# systems: {', '.join(s.name for s in specs)}"
            + "".join(f"\n# {note}" for note in skipped))
        res = run_workloads(specs, p)
    elapsed_s = time.monotonic() - t_start

    body = sections_md(res, specs, p)
    notes = general_notes(p, res, skipped) + [f"Total wall time: {elapsed_s:.0f} s."]
    print_report(body, notes)
    if args.json or args.markdown:
        info = _report.machine_info(_report.PACKAGES + peers.PEER_PACKAGES)
        info["packages"].update(peers.server_versions())
        summary = {"params": asdict(p), "systems": [s.name for s in specs],
                   "skipped": skipped, "wall_time_s": elapsed_s, **res}
        _report.write_report(args.markdown, args.json, title="shmkv vs peers", command=command,
                             body_md=body, notes=notes, summary=summary, info=info)
        log(f"wrote {' and '.join(x for x in (args.markdown, args.json) if x)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
