"""What a hostile or stuck party costs the other clients of a node: the latency of a plain
RemoteCache.get (16 B key, 100 B value) from this process, while

  * quiet: nothing else happens (the baseline);
  * lock wait: another client's set waits for a stripe lock that a stopped local process
    holds (SIGSTOP): the node parks it and retries it while serving others (broker/waits.py);
    it is sent again each time it is answered LockTimeout;
  * never reads: another client sends gets of a 1 MB value and never reads the replies;
  * 1M frames: another client sends a message of a million empty frames, which the node reads
    and drops; gets are timed from its sending to its error reply (--floods such messages).

The node's peak RSS (VmHWM) at the end is in the notes.

    python bench/bench_hostile.py           # writes bench/results/hostile-<host>-<date>.*
    python bench/bench_hostile.py --quick   # smoke run, writes nothing unless --out is given

Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report
import zmq

from shmkv.broker import protocol
from shmkv.clients import RemoteCache

BASE = "quiet"
HOLDER = textwrap.dedent("""
    import os, signal, sys
    import shmkv
    cache = shmkv.Cache.open(sys.argv[1])
    cache._lock_and_find(sys.argv[2].encode())  # holds the key's stripe lock
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
""")


@contextlib.contextmanager
def running_node() -> Iterator[tuple[str, dict[str, Any]]]:
    region = f"shmkv-bench-hostile-{uuid.uuid4().hex[:8]}"
    with _node.running_node(region, "--ipc-dir", "off") as ready:
        yield region, ready


@contextlib.contextmanager
def stopped_holder(region: str, key: str) -> Iterator[None]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, region, key],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"  # type: ignore[union-attr]
        yield
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def dealer(endpoint: str) -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status
                    if line.startswith("VmHWM:"))


def measure(args: argparse.Namespace, drops: list[float]) -> tuple[dict[str, list[int]], int]:
    """Samples per case, and the node's peak RSS; drops gets the seconds from sending each
    1M-frame message to its error reply."""
    samples: dict[str, list[int]] = {}
    with running_node() as (region, ready), \
            RemoteCache(ready["endpoint"], timeout_s=30) as remote:
        endpoint = ready["endpoint"]
        remote.set("free", bytes(100))
        remote.set("big", bytes(1 << 20))
        get = lambda: remote.get("free")  # noqa: E731
        for _ in range(args.rounds):
            samples.setdefault(BASE, []).extend(_report.time_each(get, args.gets))
            with stopped_holder(region, "held"), dealer(endpoint) as waiting:
                set_held = protocol.encode_request(1, "set", {"timeout_ms": 600_000},
                                                   [b"held", b"v"])
                waiting.send_multipart(set_held)
                time.sleep(0.05)  # let it arrive and be parked: the case measured
                lock_samples = []
                for _ in range(args.gets):
                    if waiting.poll(0):  # answered LockTimeout at its deadline: again
                        waiting.recv_multipart()
                        waiting.send_multipart(set_held)
                    lock_samples.extend(_report.time_each(get, 1))
                samples.setdefault("lock wait", []).extend(lock_samples)
            with dealer(endpoint) as hostile:
                ask_big = protocol.encode_request(1, "get", {}, [b"big"])
                flood = []
                for _ in range(args.gets):
                    hostile.send_multipart(ask_big)
                    flood.extend(_report.time_each(get, 1))
                samples.setdefault("never reads", []).extend(flood)
            with dealer(endpoint) as hostile:
                frames = protocol.encode_request(1, "get", {}, [b"k"]) + [b""] * 1_000_000
                for _ in range(args.floods):
                    started = time.perf_counter()
                    hostile.send_multipart(frames)
                    # gets until its error reply: the node has read and dropped it all
                    while not hostile.poll(0):
                        samples.setdefault("1M frames", []).extend(_report.time_each(get, 1))
                    hostile.recv_multipart()
                    drops.append(time.perf_counter() - started)
        return samples, peak_rss(ready["pid"])


def report(samples: dict[str, list[int]]) -> list[dict[str, Any]]:
    base = _report.percentiles(samples[BASE])["median"]
    rows = []
    for name, s in samples.items():
        p = _report.percentiles(s)
        rows.append({"system": name, "op": "get", "n": len(s), "median_ns": p["median"],
                     "p99_ns": p["p99"], "ops_per_s": 1e9 / p["median"],
                     "ratio": p["median"] / base})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gets", type=int, default=2_000, help="gets per case per round")
    parser.add_argument("--floods", type=int, default=3, help="1M-frame messages per round")
    _report.add_run_arguments(parser, seed=False)
    args = parser.parse_args()
    if args.quick:
        args.gets, args.floods, args.rounds = 300, 1, 1
    drops: list[float] = []
    samples, peak = measure(args, drops)
    notes = [f"ratio = median / the median of {BASE} gets",
             "the client, the node, the holder and the hostile client share the 2 cores",
             "lock wait: the set is parked; each retry costs the loop up to 1 ms (TRY_LOCK_S) "
             "every 2 ms (RETRY_S)",
             "1M frames: gets from sending each message to its error reply, which took "
             f"{', '.join(f'{d:.2f}' for d in drops)} s (sending, libzmq receiving it whole, "
             "and the node dropping its frames)",
             f"node peak RSS (VmHWM) at the end: {peak / (1 << 20):.0f} MB",
             f"engine: {os.environ.get('SHMKV_PURE_PYTHON') and 'python' or 'installed'}"]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("hostile", "A node's get latency beside hostile or stuck parties",
                           report(samples), notes, out)


if __name__ == "__main__":
    main()
