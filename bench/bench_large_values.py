"""Remote gets of large values: the node's zero-copy sends (broker/zerocopy.py) against the
copying path they replace, and redis-py GET of the same value from redis-server, same run.

Two nodes serve regions holding the same values (random bytes, one key per size): one with
zero-copy sends from 64 KiB up (SHMKV_ZERO_COPY_MIN_BYTES=65536, pyzmq's own copy threshold:
below it pyzmq copies anyway), one with them off (SHMKV_ZERO_COPY_MIN_BYTES=0: every get copies
the value out of the arena into a new bytes object, as before). One client, one get at a time,
over tcp on loopback (RemoteCache.get; redis-py with hiredis, GET, over tcp). The systems take
turns get by get (--turns get), so that a slow moment of the shared machine falls on all of
them, and each server is idle between two of its gets; or each does a size's gets back to back
(--turns batch): its process stays busy, and a copying node's allocator hands back the block
it just freed, warm. The two differ on this machine (bench/results/large-values-*.md).

What it shows: the node's cost of a large get, which is what zero-copy removes (a fresh
allocation of the value's size, its page faults and a memcpy); what the client does with the
bytes it receives is the same for both nodes. The smallest size at which zero-copy wins is
where ZERO_COPY_MIN_BYTES belongs.

And what zero-copy costs every other get: the ZeroMQ door pins a get's value first, to learn
its size (broker/zerocopy.py), then reads a small one lock-free as before. Measured in this
process, on each engine: the dispatcher's run of a get of a 100-byte value with the door's
ZeroCopy handed in, against without (the node's own work for a get, without the sockets).

    python bench/bench_large_values.py           # writes bench/results/large-values-*.md/.json
    python bench/bench_large_values.py --quick   # smoke run, writes nothing unless --out

Peers: Debian's redis-server and `pip install redis hiredis` (rows skipped when missing).
Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report
from bench_node import REDIS, redis, running_redis

import shmkv
from shmkv import backend, reader
from shmkv.broker.dispatch import Dispatcher
from shmkv.broker.protocol import Request
from shmkv.broker.zerocopy import LEND, ZeroCopy
from shmkv.clients import RemoteCache

SIZES = {"64 KiB": 64 << 10, "256 KiB": 256 << 10, "512 KiB": 512 << 10, "1 MiB": 1 << 20,
         "64 MiB": 64 << 20}
ZERO_COPY, COPY = "shmkv tcp, zero-copy", "shmkv tcp, copy (off)"
BYTES_PER_ROUND = 2 << 30  # gets of a size per round and system: about this many bytes
MAX_GETS = 300
ARENA_BYTES = "160M"


@contextlib.contextmanager
def node(min_bytes: int, values: dict[bytes, bytes]) -> Iterator[str]:
    """A node whose region holds values, zero-copy sends from min_bytes (0: off); yields its
    endpoint."""
    region = f"shmkv-bench-large-{uuid.uuid4().hex[:8]}"
    with shmkv.Cache.create(region, arena_bytes=160 << 20) as c:
        for key, value in values.items():
            c.set(key, value)
    before = os.environ.get("SHMKV_ZERO_COPY_MIN_BYTES")
    os.environ["SHMKV_ZERO_COPY_MIN_BYTES"] = str(min_bytes)  # the node's, at its start
    try:
        with _node.running_node(region, "--ipc-dir", "off", arena_bytes=ARENA_BYTES) as ready:
            yield ready["endpoint"]
    finally:
        shmkv.Cache.unlink(region)  # if the node did not start
        if before is None:
            del os.environ["SHMKV_ZERO_COPY_MIN_BYTES"]
        else:
            os.environ["SHMKV_ZERO_COPY_MIN_BYTES"] = before


def measure(args: argparse.Namespace) -> tuple[dict[str, list[int]], list[str]]:
    rng = random.Random(args.seed)
    values = {label.encode(): rng.randbytes(size) for label, size in SIZES.items()}
    samples: dict[str, list[int]] = {}
    notes: list[str] = []
    clock = time.perf_counter_ns
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-large-") as tmp, \
            node(64 << 10, values) as zero_copy, node(0, values) as copy, \
            running_redis(Path(tmp)) as redis_port:
        systems: dict[str, Callable[[bytes], object]] = {}
        closers = []
        for name, endpoint in ((ZERO_COPY, zero_copy), (COPY, copy)):
            client = RemoteCache(endpoint, timeout_s=60)
            closers.append(client.close)
            systems[name] = client.get
        if redis_port is not None:
            peer = redis.Redis(host="127.0.0.1", port=redis_port)
            closers.append(peer.close)
            peer.mset(values)
            systems[REDIS] = peer.get
        else:
            notes.append("redis missing (apt-get install redis-server; pip install redis "
                         "hiredis): its rows are absent")
        try:
            for _ in range(args.rounds):
                for label, size in SIZES.items():
                    key = label.encode()
                    gets = max(5, min(MAX_GETS, args.bytes_per_round // size))
                    for name, get in systems.items():
                        assert get(key) == values[key], f"{name} answered another value"
                    turns = [list(systems.items())] * gets if args.turns == "get" else \
                        [[one] * gets for one in systems.items()]
                    for turn in turns:
                        for name, get in turn:
                            t0 = clock()
                            get(key)
                            samples.setdefault(f"{name}|{label}", []).append(clock() - t0)
        finally:
            for close in closers:
                close()
    return samples, notes


def small_get_cost(args: argparse.Namespace) -> dict[str, list[int]]:
    """ns of the dispatcher's get of a 100-byte value, without and with the door's ZeroCopy,
    on each engine (the pure-Python one as tests/conftest.py switches to it)."""
    samples: dict[str, list[int]] = {}
    engines = [("c", backend.Reader, backend.Writer), ("python", reader.Reader, None)]
    for engine, reader_type, writer_type in engines:
        if engine == "c" and backend.ENGINE != "c":
            continue
        saved = backend.Reader, backend.Writer
        backend.Reader, backend.Writer = reader_type, writer_type
        region = f"shmkv-bench-large-{uuid.uuid4().hex[:8]}"
        try:
            with shmkv.Cache.create(region, arena_bytes=1 << 20) as c:
                c.set(b"small", b"s" * 100)
                dispatcher, zero_copy = Dispatcher(c, {"max_reply_bytes": 1 << 30}), ZeroCopy()

                def plain() -> object:
                    return dispatcher.run(Request(1, "get", "", {}, [b"small"], 1 << 30))

                def lending() -> object:
                    return dispatcher.run(Request(1, "get", "", {LEND: zero_copy}, [b"small"],
                                                  1 << 30))
                assert plain() == lending() == (True, [b"s" * 100])
                for _ in range(args.rounds):
                    for name, op in (("lock-free get", plain), ("pin first", lending)):
                        samples.setdefault(f"{engine}|{name}", []).extend(
                            _report.time_each(op, args.small_gets))
        finally:
            backend.Reader, backend.Writer = saved
            shmkv.Cache.unlink(region)
    return samples


def small_rows(samples: dict[str, list[int]]) -> tuple[list[dict[str, object]], list[str]]:
    rows: list[dict[str, object]] = []
    checks: list[str] = []
    for engine in ("c", "python"):
        if f"{engine}|lock-free get" not in samples:
            continue
        p_plain = _report.percentiles(samples[f"{engine}|lock-free get"])
        p_pin = _report.percentiles(samples[f"{engine}|pin first"])
        for name, p in (("lock-free get", p_plain), ("pin first", p_pin)):
            rows.append(_report.row(f"node's get, {engine} engine, in process",
                                    f"100 B, {name}", len(samples[f"{engine}|{name}"]), p,
                                    p_plain["median"]))
        checks.append(f"a small get on the {engine} engine: pin first costs "
                      f"{(p_pin['median'] - p_plain['median']) / 1000:.2f} us more "
                      "(median, in process: the node's work without its sockets)")
    return rows, checks


def report(samples: dict[str, list[int]]) -> tuple[list[dict[str, object]], list[str]]:
    """Rows (ratio against the copying node's median of the same size), and the ratios."""
    rows: list[dict[str, object]] = []
    checks: list[str] = []
    for label in SIZES:
        base = _report.percentiles(samples[f"{COPY}|{label}"])["median"]
        med = {}
        for name in (ZERO_COPY, COPY, REDIS):
            found = samples.get(f"{name}|{label}")
            if found is None:
                continue
            p = _report.percentiles(found)
            med[name] = p["median"]
            rows.append(_report.row(name, f"get {label}", len(found), p, base))
        line = (f"get {label}: zero-copy {med[ZERO_COPY] / med[COPY]:.2f}x the copying "
                "node's median")
        if REDIS in med:
            line += (f"; vs redis-py GET: zero-copy {med[ZERO_COPY] / med[REDIS]:.2f}x, "
                     f"copy {med[COPY] / med[REDIS]:.2f}x")
        checks.append(line)
    return rows, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", choices=("get", "batch"), default="get",
                        help="systems take turns every get, or every size (see above)")
    parser.add_argument("--small-gets", type=int, default=20_000,
                        help="gets of a 100-byte value per round and engine, in process")
    parser.add_argument("--bytes-per-round", type=int, default=BYTES_PER_ROUND,
                        help="gets of each size per round and system: about this many bytes "
                        f"(at most {MAX_GETS}, at least 5)")
    _report.add_run_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.bytes_per_round, args.small_gets = 1, 256 << 20, 2_000
    load = os.getloadavg()
    samples, notes = measure(args)
    rows, checks = report(samples)
    more_rows, more_checks = small_rows(small_get_cost(args))
    rows, checks = [*rows, *more_rows], [*checks, *more_checks]
    notes = [*checks, "ratio column = median / the copying node's median of the same size "
             "(below 1: faster than copying); in-process rows: / the lock-free get's",
             "turns: " + ("the systems take turns every get" if args.turns == "get" else
                          "each system does a size's gets back to back"),
             "one client, one get at a time, tcp on loopback; client and servers share the "
             "machine's cores; the client's own copy of what it receives is in every row",
             "load average before / after the run: " + " / ".join(
                 ", ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg())),
             *notes]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    name = "large-values" if args.turns == "get" else "large-values-batch"
    _report.print_and_save(name, "Remote gets of large values: zero-copy sends vs "
                           "copies vs redis-server", rows, notes, out)


if __name__ == "__main__":
    main()
