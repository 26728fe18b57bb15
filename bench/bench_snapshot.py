"""Snapshot and restore throughput of shmkv against Redis's BGSAVE and restart load, in one run,
and what a snapshot costs a writer that keeps writing meanwhile.

Cases (seeded random values, incompressible: Redis's LZF finds nothing to squeeze):
  small  1M keys of 16 B with 100 B values
  large  16,384 keys of 16 B with 64 KiB values (1 GiB of values)

For each case, each system holds the same data and, round by round:
  shmkv  snapshot   Cache.snapshot(path): temp file, fsync, rename, fsync of the directory
         restore    Cache.create(sized from the snapshot) + Cache.restore(path)
  Redis  BGSAVE     from the command until INFO persistence says rdb_bgsave_in_progress:0
         load       a fresh redis-server started on the RDB, until INFO says loading:0
Both write their files into the same temp dir (on the same file system), and each figure is the
median of the rounds; the ratio is Redis's time over shmkv's (above 1: shmkv is faster).

Writer p99 (small case): a writer process overwrites random keys of the region back to back,
timing each set; the main process then takes snapshots. The sets made while a snapshot ran are
compared with the sets of an equal stretch right before it (target: p99 at most 2x).

    python bench/bench_snapshot.py --out bench/results     # full run (~10 min), writes results
    python bench/bench_snapshot.py --quick                  # smoke run, writes nothing
    python bench/bench_snapshot.py --profile                # + cProfile of one snapshot

Everything it creates (regions, servers, files) is removed at the end, also on Ctrl-C.
Not a test module: pytest collects only tests/ (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import _report  # bench/ is sys.path[0] when this file is run as a script
import peers
import shmkv

MIB = 1 << 20
GIB = 1 << 30
KEY_BYTES = 16
VALUE_POOL = 256  # distinct random values per case, reused across keys
POLL_S = 0.0005  # how often Redis's INFO is asked while a save or a load runs
REDIS_TIMEOUT_S = 600.0
FILL_CHUNK = 1000
P99_TARGET = 2.0


@dataclass(frozen=True)
class Case:
    name: str
    keys: int
    value_bytes: int
    arena_bytes: int

    @property
    def payload_bytes(self) -> int:
        return self.keys * (KEY_BYTES + self.value_bytes)


CASES = {
    "small": Case("1M x 100 B", 1_000_000, 100, 512 * MIB),
    "large": Case("16k x 64 KiB (1 GiB)", 16_384, 64 << 10, 1536 * MIB),
}
QUICK = {
    "small": Case("100k x 100 B", 100_000, 100, 64 * MIB),
    "large": Case("1k x 64 KiB", 1024, 64 << 10, 128 * MIB),
}


def key(i: int) -> bytes:
    return b"key:%012d" % i


def values(case: Case, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(case.value_bytes) for _ in range(VALUE_POOL)]


def pairs(case: Case):
    pool = values(case)
    for i in range(case.keys):
        yield key(i), pool[i % VALUE_POOL]


# --- shmkv -------------------------------------------------------------------------------
def shmkv_rounds(case: Case, work: Path, rounds: int, stack: contextlib.ExitStack,
                 profile: bool) -> tuple[dict[str, list[float]], str, list[str]]:
    name = f"shmkvbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    source = shmkv.Cache.create(name, arena_bytes=case.arena_bytes,
                                max_keys=int(case.keys * 1.2))
    stack.callback(shmkv.Cache.unlink, name)
    stack.callback(source.close)
    for k, v in pairs(case):
        source.set(k, v)
    path = str(work / "shmkv.snp")
    times: dict[str, list[float]] = {"snapshot": [], "restore": []}
    notes: list[str] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        report = source.snapshot(path)
        times["snapshot"].append(time.perf_counter() - t0)
        assert report["keys"] == case.keys, report
    file_bytes = os.path.getsize(path)
    profile_text = ""
    if profile:
        profile_text = "--- snapshot ---\n" + _profiled(lambda: source.snapshot(path))
    source.close()
    shmkv.Cache.unlink(name)  # room for the restored copies
    target = f"{name}-r"
    for _ in range(rounds):
        try:
            t0 = time.perf_counter()
            with shmkv.Cache.create(target, **shmkv.Cache.sizes_for_snapshot(path)) as fresh:
                report = fresh.restore(path)
                times["restore"].append(time.perf_counter() - t0)
                assert report["keys"] == case.keys, report
                assert fresh.get(key(case.keys - 1)) == values(case)[(case.keys - 1)
                                                                     % VALUE_POOL]
        finally:
            shmkv.Cache.unlink(target)
    if profile:
        try:
            with shmkv.Cache.create(target, **shmkv.Cache.sizes_for_snapshot(path)) as fresh:
                profile_text += "\n--- restore ---\n" + _profiled(lambda: fresh.restore(path))
        finally:
            shmkv.Cache.unlink(target)
    notes.append(f"{case.name}: shmkv snapshot file {file_bytes / MIB:,.1f} MiB")
    os.unlink(path)
    return times, profile_text, notes


def _profiled(run: Any) -> str:
    """The top of a cProfile of run(), by own time."""
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue().strip()


def writer_p99(case: Case, work: Path, snapshots: int, stack: contextlib.ExitStack) \
        -> dict[str, Any]:
    """p99 of a writer process's sets while snapshots run, against the equal stretch before
    each snapshot."""
    name = f"shmkvbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    source = shmkv.Cache.create(name, arena_bytes=case.arena_bytes,
                                max_keys=int(case.keys * 1.2))
    stack.callback(shmkv.Cache.unlink, name)
    stack.callback(source.close)
    for k, v in pairs(case):
        source.set(k, v)
    ctx = multiprocessing.get_context("spawn")
    samples = 1 << 24  # (start ns, duration ns) pairs: room for minutes of sets
    shared = ctx.RawArray("q", 2 * samples)
    count = ctx.RawValue("q", 0)
    stop = ctx.Event()
    proc = ctx.Process(target=_writer, args=(name, case.keys, case.value_bytes, shared, count,
                                             stop))
    proc.start()
    windows: list[tuple[int, int]] = []
    try:
        while count.value < 100_000:  # warmed up
            time.sleep(0.01)
        path = str(work / "p99.snp")
        for _ in range(snapshots):
            time.sleep(0.5)
            t0 = time.perf_counter_ns()
            source.snapshot(path)
            windows.append((t0, time.perf_counter_ns()))
        time.sleep(0.2)
    finally:
        stop.set()
        proc.join(60)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    os.unlink(path)
    n = count.value
    data = np.frombuffer(shared, dtype=np.int64)[:2 * n].reshape(n, 2)
    during, before = [], []
    for t0, t1 in windows:
        span = t1 - t0
        during.append(data[(data[:, 0] >= t0) & (data[:, 0] < t1), 1])
        before.append(data[(data[:, 0] >= t0 - span) & (data[:, 0] < t0), 1])
    res = {}
    for label, parts in (("without snapshot", before), ("during snapshot", during)):
        ns = np.concatenate(parts)
        stats = _report.percentiles(ns.tolist())
        res[label] = {"n": int(ns.size), "median_ns": stats["median"], "p99_ns": stats["p99"],
                      "max_ns": stats["max"],
                      "ops_per_s": ns.size / (sum(t1 - t0 for t0, t1 in windows) / 1e9)}
    res["p99_ratio"] = res["during snapshot"]["p99_ns"] / res["without snapshot"]["p99_ns"]
    res["snapshot_s"] = [round((t1 - t0) / 1e9, 3) for t0, t1 in windows]
    return res


def _writer(name: str, n_keys: int, value_bytes: int, shared: Any, count: Any,
            stop: Any) -> None:
    out = np.frombuffer(shared, dtype=np.int64)
    limit = out.size // 2
    rng = np.random.default_rng(7)
    picks = [key(int(i)) for i in rng.integers(0, n_keys, 1 << 16)]
    value = bytes(value_bytes)
    clock = time.perf_counter_ns
    with shmkv.Cache.open(name) as c:
        set_ = c.set
        i = 0
        while not stop.is_set() and i < limit:
            t0 = clock()
            set_(picks[i & 0xFFFF], value)
            t1 = clock()
            out[2 * i] = t0
            out[2 * i + 1] = t1 - t0
            i += 1
            if not i & 0x3FF:
                count.value = i
        count.value = i


# --- Redis --------------------------------------------------------------------------------
def redis_rounds(case: Case, work: Path, rounds: int) -> tuple[dict[str, list[float]], int]:
    import redis

    rdir = work / "redis"
    rdir.mkdir()
    times: dict[str, list[float]] = {"snapshot": [], "restore": []}
    server = peers.start_redis(rdir)
    try:
        client = redis.Redis(unix_socket_path=str(rdir / "redis.sock"))
        batch: dict[bytes, bytes] = {}
        for k, v in pairs(case):
            batch[k] = v
            if len(batch) == FILL_CHUNK:
                client.mset(batch)
                batch = {}
        if batch:
            client.mset(batch)
        assert client.dbsize() == case.keys
        for _ in range(rounds):
            t0 = time.perf_counter()
            client.bgsave()
            _wait_info(client, "rdb_bgsave_in_progress", 0)
            times["snapshot"].append(time.perf_counter() - t0)
            assert client.info("persistence")["rdb_last_bgsave_status"] == "ok"
        client.close()
    finally:
        server.stop()
    rdb_bytes = (rdir / "dump.rdb").stat().st_size
    for _ in range(rounds):
        (rdir / "redis.sock").unlink(missing_ok=True)
        t0 = time.perf_counter()
        server = _start_redis_on_rdb(rdir)
        try:
            client = _connect(rdir / "redis.sock")
            _wait_info(client, "loading", 0)
            times["restore"].append(time.perf_counter() - t0)
            assert client.dbsize() == case.keys
            client.close()
        finally:
            server.stop()
    return times, rdb_bytes


def _start_redis_on_rdb(rdir: Path) -> peers.Server:
    """A redis-server started as peers.start_redis does, loading dir/dump.rdb; returns at
    once (the caller times the load)."""
    sock = rdir / "redis.sock"
    argv = [shutil.which("redis-server") or "redis-server", "--port", "0",
            "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", "",
            "--appendonly", "no", "--dir", str(rdir), "--daemonize", "no"]
    return peers.Server("redis-server", argv, rdir / "redis-load.log", lambda: True)


def _connect(sock: Path) -> Any:
    import redis

    deadline = time.monotonic() + REDIS_TIMEOUT_S
    while not sock.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not open its socket")
        time.sleep(POLL_S)
    return redis.Redis(unix_socket_path=str(sock))


def _wait_info(client: Any, field: str, want: int) -> None:
    deadline = time.monotonic() + REDIS_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if client.info("persistence").get(field) == want:
                return
        except Exception:  # the socket is there before the server accepts on it
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f"redis never reported {field}:{want}")


# --- report -------------------------------------------------------------------------------
def throughput_rows(case: Case, shm: dict[str, list[float]],
                    red: dict[str, list[float]] | None) -> list[dict[str, Any]]:
    rows = []
    mb = case.payload_bytes / 1e6
    for op, peer_op in (("snapshot", "BGSAVE"), ("restore", "restart load")):
        s = statistics.median(shm[op])
        r = statistics.median(red[op]) if red else None
        rows.append({"case": case.name, "system": "shmkv", "op": op, "s": s,
                     "rounds": [round(x, 3) for x in shm[op]], "mb_s": mb / s,
                     "keys_s": case.keys / s, "ratio": None if r is None else r / s})
        if red:
            rows.append({"case": case.name, "system": "redis", "op": peer_op, "s": r,
                         "rounds": [round(x, 3) for x in red[op]], "mb_s": mb / r,
                         "keys_s": case.keys / r, "ratio": 1.0})
    return rows


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | system | op | median s | rounds (s) | MB/s | keys/s | Redis time / "
             "shmkv time |", "|---|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        ratio = "-" if r["system"] != "shmkv" or r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['case']} | {r['system']} | {r['op']} | {r['s']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in r['rounds'])} | {r['mb_s']:,.0f} | "
                     f"{r['keys_s']:,.0f} | {ratio} |")
    return "\n".join(lines)


def p99_table(res: dict[str, Any]) -> str:
    lines = ["| writer's set | n | median ns | p99 ns | max ns | ops/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for label in ("without snapshot", "during snapshot"):
        r = res[label]
        lines.append(f"| {label} | {r['n']:,} | {r['median_ns']:,.0f} | {r['p99_ns']:,.0f} | "
                     f"{r['max_ns']:,.0f} | {r['ops_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small cases, 1 round, no results")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="small,large", help="comma-separated: small, large")
    ap.add_argument("--p99-snapshots", type=int, default=3,
                    help="snapshots taken while the writer runs (0: skip)")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile one snapshot and one restore per case")
    ap.add_argument("--out", help="directory for the results (.md and .json)")
    ap.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    args = ap.parse_args(argv)
    cases = QUICK if args.quick else CASES
    rounds = 1 if args.quick else args.rounds
    redis_reason = None if not args.no_redis else "--no-redis"
    if redis_reason is None:
        redis_reason = peers.missing_reason("redis")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    profiles: dict[str, str] = {}
    p99: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shmkvsnap-",
                                                                    dir=args.dir)))
        for which in args.cases.split(","):
            case = cases[which]
            print(f"{case.name}: shmkv ...", file=sys.stderr, flush=True)
            with contextlib.ExitStack() as case_stack:
                shm, profile_text, case_notes = shmkv_rounds(case, work, rounds, case_stack,
                                                             args.profile)
            notes += case_notes
            if profile_text:
                profiles[case.name] = profile_text
            red = None
            if redis_reason is None:
                print(f"{case.name}: redis ...", file=sys.stderr, flush=True)
                red, rdb_bytes = redis_rounds(case, work, rounds)
                notes.append(f"{case.name}: Redis RDB file {rdb_bytes / MIB:,.1f} MiB")
                shutil.rmtree(work / "redis")
            rows += throughput_rows(case, shm, red)
            if which == "small" and args.p99_snapshots:
                print(f"{case.name}: writer p99 ...", file=sys.stderr, flush=True)
                with contextlib.ExitStack() as case_stack:
                    p99 = writer_p99(case, work, args.p99_snapshots, case_stack)
    if redis_reason:
        notes.append(f"Redis skipped: {redis_reason}")
    notes.append(f"files written to a temp dir on {_fs_of(args.dir or tempfile.gettempdir())}; "
                 "both systems fsync")
    body = ["## Throughput (MB/s counts key + value bytes)", "", throughput_table(rows), ""]
    if p99:
        verdict = "met" if p99["p99_ratio"] <= P99_TARGET else "**NOT met**"
        body += ["## A writer's set latency while a snapshot runs (small case)", "",
                 p99_table(p99), "",
                 f"p99 during / without: {p99['p99_ratio']:.2f}x (target <= {P99_TARGET}x: "
                 f"{verdict}); snapshots took {p99['snapshot_s']} s", ""]
    for name, text in profiles.items():
        body += [f"## cProfile of one snapshot and one restore, {name} (top 12 by own time)",
                 "", "```",
                 text.strip(), "```", ""]
    md = "\n".join(body)
    print(md)
    print("\n".join(f"- {n}" for n in notes))
    if args.out and not args.quick:
        command = "python " + " ".join(shlex.quote(a) for a in
                                       ["bench/bench_snapshot.py", *sys.argv[1:]])
        info = _report.machine_info(_report.PACKAGES + peers.PEER_PACKAGES)
        stem = Path(args.out) / f"snapshot-vm-{time.strftime('%Y%m%d', time.gmtime())}"
        Path(args.out).mkdir(parents=True, exist_ok=True)
        _report.write_report(f"{stem}.md", f"{stem}.json", title="shmkv snapshots vs Redis",
                             command=command, body_md=md, notes=notes,
                             summary={"rows": rows, "writer_p99": p99,
                                      "redis_server": peers.server_versions()["redis-server"]},
                             info=info)
        print(f"wrote {stem}.md and {stem}.json")
    return 0


def _fs_of(path: str) -> str:
    best = ("?", "")
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            dev, mount, fstype = line.split()[:3]
            if os.path.abspath(path).startswith(mount) and len(mount) > len(best[1]):
                best = (f"{fstype} ({dev} on {mount})", mount)
    return best[0]


if __name__ == "__main__":
    sys.exit(main())
