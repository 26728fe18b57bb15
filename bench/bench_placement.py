"""Why a ZeroMQ round trip from Python costs more than a Redis one on a small VM: one round trip
(a bare pyzmq DEALER to bench_node.py's echo ROUTER; redis-py GET to redis-server), medians,
with the server and the client left to the scheduler, pinned to one CPU, and pinned to two
different CPUs (sched_setaffinity; libzmq's I/O threads follow their process's mask). In the
same run, so the ratios hold whatever the machine's weather. And the floor under every
ZeroMQ door: the same round trip with no Python at either end (c/zmq_echo.c, built here with
the system's C compiler against the libzmq pyzmq loads; its rows are left out without one).

    python bench/bench_placement.py --out bench/results    # needs 2+ CPUs; redis-server optional

Not a test module.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

import _report
import bench_node
import peers

try:
    import redis
except ImportError:  # a peer, not a dependency
    redis = None

KEY = b"0123456789abcdef"
# (name, the server's CPUs, the client's CPUs); None: left to the scheduler
PLACEMENTS = [("left to the scheduler", None, None), ("one CPU", {0}, {0}),
              ("two CPUs", {0}, {1})]


def median_us(call, count: int) -> float:
    for _ in range(count // 10):
        call()
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - started)
    times.sort()
    return times[len(times) // 2] / 1000


def pinned(cpus: set[int] | None) -> list[str]:
    return [] if cpus is None else ["taskset", "-c", ",".join(map(str, sorted(cpus)))]


def echo_round_trip(server_cpus, client_cpus, count: int) -> float:
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-placement-") as tmp:
        endpoint = f"ipc://{tmp}/echo.sock"
        server = subprocess.Popen([*pinned(server_cpus), sys.executable, "-c", bench_node.ECHO,
                                   endpoint], stdout=subprocess.PIPE, text=True)
        try:
            server.stdout.readline()  # type: ignore[union-attr]  # bound
            return run_pinned(client_cpus, lambda: echo_client(endpoint, count))
        finally:
            server.kill()
            server.wait()
            server.stdout.close()  # type: ignore[union-attr]


def echo_client(endpoint: str, count: int) -> float:
    sock = zmq.Context().socket(zmq.DEALER)  # a new context: its I/O thread takes our mask
    sock.connect(endpoint)
    try:
        return median_us(lambda: bench_node.echo_round_trip(sock, KEY), count)
    finally:
        sock.close(linger=0)


def build_c_echo(tmp: Path) -> tuple[Path | None, str]:
    """c/zmq_echo.c built against the libzmq this process loaded (pyzmq's); (None, why not)."""
    loaded = [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
              if "libzmq" in line.rpartition("/")[2]]
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not loaded or compiler is None:
        return None, "no C compiler or no libzmq file found: no C echo rows"
    binary = tmp / "zmq_echo"
    library = Path(loaded[0])
    subprocess.run([compiler, "-O2", "-o", str(binary), str(Path(__file__).parent / "c" /
                    "zmq_echo.c"), str(library), f"-Wl,-rpath,{library.parent}"], check=True)
    return binary, f"C echo: built with {compiler} against {library.name} (libzmq " \
                   f"{zmq.zmq_version()})"


def c_echo_round_trip(binary: Path, endpoint: str, server_cpus, client_cpus,
                      count: int) -> float:
    server = subprocess.Popen([*pinned(server_cpus), str(binary), "server", endpoint],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "bound"  # type: ignore[union-attr]
        out = subprocess.run([*pinned(client_cpus), str(binary), "client", endpoint,
                              str(count)], capture_output=True, text=True, check=True,
                             timeout=60)
        return float(out.stdout)
    finally:
        server.kill()
        server.wait()
        server.stdout.close()  # type: ignore[union-attr]


def redis_round_trip(server_cpus, client_cpus, count: int, tmp: Path) -> float:
    port = bench_node.free_port()
    argv = [*pinned(server_cpus), "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no"]
    client = redis.Redis(host="127.0.0.1", port=port)
    server = peers.Server("redis-server", argv, tmp / "redis.log", client.ping)
    try:
        client.set(KEY, b"v" * 100)
        return run_pinned(client_cpus, lambda: median_us(lambda: client.get(KEY), count))
    finally:
        client.close()
        server.stop()


def run_pinned(cpus: set[int] | None, measure):
    """measure() with this process on cpus (then its mask as it was)."""
    before = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        return measure()
    finally:
        os.sched_setaffinity(0, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="round trips per measure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="results directory (default: print only)")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("needs CPUs 0 and 1")
    has_redis = redis is not None and shutil.which("redis-server") is not None
    found: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-placement-") as tmp:
        c_echo, c_note = build_c_echo(Path(tmp))
        for _ in range(args.rounds):  # alternate, so that all see the same machine weather
            for name, server_cpus, client_cpus in PLACEMENTS:
                found.setdefault(("bare pyzmq echo, ipc", name), []).append(
                    echo_round_trip(server_cpus, client_cpus, args.count))
                if c_echo is not None:
                    for transport, endpoint in (
                            ("ipc", f"ipc://{tmp}/c-echo.sock"),
                            ("tcp", f"tcp://127.0.0.1:{bench_node.free_port()}")):
                        found.setdefault((f"libzmq echo in C, {transport}", name), []).append(
                            c_echo_round_trip(c_echo, endpoint, server_cpus, client_cpus,
                                              args.count))
                if has_redis:
                    found.setdefault(("redis-py GET, tcp", name), []).append(
                        redis_round_trip(server_cpus, client_cpus, args.count, Path(tmp)))
    lines = ["| round trip | " + " | ".join(name for name, _, _ in PLACEMENTS) + " |",
             "|---|" + "---:|" * len(PLACEMENTS)]
    for system in dict.fromkeys(system for system, _ in found):
        cells = [sorted(found[system, name])[len(found[system, name]) // 2]
                 for name, _, _ in PLACEMENTS]
        lines.append(f"| {system} | " + " | ".join(f"{us:.1f} us" for us in cells) + " |")
    table = "\n".join(lines)
    notes = [(f"medians of {args.count} round trips, the median of {args.rounds} rounds; one "
              "CPU: server and client on CPU 0; two CPUs: server on 0, client on 1")]
    notes.append(c_note)
    if not has_redis:
        notes.append("redis-server or redis-py missing: no Redis row")
    _report.print_and_save_table("placement", "A round trip by where its processes run",
                                 table, notes, args.out,
                                 {f"{s}|{p}": v for (s, p), v in found.items()})


if __name__ == "__main__":
    main()
