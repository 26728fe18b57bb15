"""Helpers shared by tests and by the worker processes they start (importable by name:
pytest puts tests/ on sys.path, and workers get it through PYTHONPATH)."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

TEST_PREFIX = "shmkvtest-"


def new_region_name() -> str:
    return f"{TEST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:10]}"


def leftovers() -> list[str]:
    """Regions this test session created (their names carry its pid) still in /dev/shm.
    Another session's regions are not ours to judge or remove, even if it runs meanwhile."""
    mine = f"{TEST_PREFIX}{os.getpid()}-"
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith(mine))


def region_objects(name: str) -> list[str]:
    """The /dev/shm entries of one shm-named region."""
    return sorted(f for f in os.listdir("/dev/shm") if f == name)


class FakeClock:
    """A clock for TTL tests: unix nanoseconds that move only when the test says so."""

    def __init__(self, start_ns: int = 1_700_000_000 * 10**9) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


# --- real processes -----------------------------------------------------------------------
# Workers are forked: they open the region by name, as unrelated processes would.
ctx = mp.get_context("fork")
JOIN_TIMEOUT_S = 120


def patterned(key: str, writer: int, seq: int, length: int) -> bytes:
    prefix = f"{key}|{writer}|{seq}|".encode()
    body = hashlib.sha256(prefix).digest()
    return (prefix + body * (length // 32 + 1))[: max(length, len(prefix))]


def is_whole(key: str, value: bytes) -> bool:
    parts = value.split(b"|", 3)
    if len(parts) != 4 or parts[0] != key.encode():
        return False
    writer, seq = int(parts[1]), int(parts[2])
    return value == patterned(key, writer, seq, len(value))


def torn_reads(writer: subprocess.Popen, stop, get, lengths, reads: int,
               min_reads: int | None = None, seconds: float = 0.0) -> tuple[str, list, set, int]:
    """Read get() back to back while the writer process rewrites the value: once it has
    printed "ready", `reads` times, or, given min_reads, at least min_reads times and then only
    until `seconds` have passed; then stop() it and wait for it to exit (0) with its report,
    killing it if anything failed. (its output, torn, seen, reads done): torn, (length, sorted
    distinct bytes) of each value that is not one byte repeated to one of `lengths`; seen, the
    first bytes of all values read."""
    if min_reads is None:
        min_reads = reads
    torn: list = []
    seen: set = set()
    done = 0
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        deadline = time.monotonic() + seconds
        while done < reads and (done < min_reads or time.monotonic() < deadline):
            done += 1
            v = get()
            if len(v) not in lengths or v != v[:1] * len(v):
                torn.append((len(v), sorted(set(v))))
            seen.add(v[:1])
        stop()
        out, _ = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0
    return out, torn, seen, done


def run_workers(target, args_list: list[tuple]) -> list:
    """Start one process per args tuple; return what each put on the queue, in order."""
    queue = ctx.Queue()
    procs = [ctx.Process(target=_report, args=(queue, i, target, args))
             for i, args in enumerate(args_list)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=JOIN_TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(JOIN_TIMEOUT_S)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    return [r for _, r in sorted(results, key=lambda item: item[0])]


def _report(queue, i: int, target, args: tuple) -> None:
    try:
        queue.put((i, target(*args)))
    except BaseException as exc:  # the parent must hear about it, not hang
        queue.put((i, f"worker failed: {exc!r}"))
        raise


# --- the node's Prometheus endpoint -----------------------------------------------------------
SCRAPE_TIMEOUT_S = 10.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """{(sample name, sorted labels): value} of one scrape."""
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


UNTIL_S = 30.0


def until(condition: Callable[[], object], what: str, timeout_s: float = UNTIL_S) -> None:
    """Poll condition until it holds; fail saying what did not happen."""
    import pytest  # here: the worker processes that import this module need no pytest

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"within {timeout_s} s: {what}")
        time.sleep(0.005)
