"""The node's ZeroMQ door against redis-server, same run: latency from one client, and throughput
from many client processes.

Starts a node (`shmkv serve`, tcp on 127.0.0.1 and ipc:// in a temporary directory) and a
redis-server on 127.0.0.1, fills both with the same keys (16 B keys, --value-bytes values), and
measures, in alternating rounds so that every system sees the same machine weather:
  * get: one key, one client (RemoteCache over tcp and over ipc, with its direct link and
    without it, through libzmq: clients/direct.py; redis-py GET over tcp; and the floor under
    a client through libzmq: the same two frames a bare pyzmq DEALER sends to a bare pyzmq
    ROUTER that sends them back, over tcp and over ipc);
  * batch of --batch: RemoteCache.get_many (one message) vs MGET;
  * pipeline of --batch: that many gets in a RemoteCache pipeline (one batch message each
    way: broker/batches.py) vs a redis-py pipeline of GETs (transaction=False);
  * big batch: get_many of --big-batch keys sent as one message and as BATCH_KEYS batches
    pipelined (how RemoteCache.get_many sends it): which is faster decides BATCH_KEYS;
then throughput: --clients N processes (8 and 32 by default), each doing single gets in a loop
for --seconds against one system at a time, counted (ops/s of all of them together); the
floor here is as many bare echo processes as the node has workers, each on its own endpoint
(as the node's workers are), the clients spread over them.
The floors say what a ZeroMQ door from Python can reach on this machine through libzmq at
both ends, whatever the node does; a direct link has no libzmq at the client's end.
Both servers are stopped, the region unlinked and the ipc directory removed on every exit.

Targets (issue 15), as ratios in the same run: get latency over tcp <= 1.15x redis-py GET's
median, over ipc <= 1.0x; get_many(100) throughput >= 1.0x MGET's; throughput with 8 and 32
client processes >= 1.0x redis-server's.

    python bench/bench_node.py           # writes bench/results/node-<host>-<date>.md/.json
    python bench/bench_node.py --quick   # smoke run, writes nothing unless --out is given

Peers: Debian's redis-server (`apt-get install redis-server`) and `pip install redis hiredis`;
without them only shmkv's rows are printed. Not a test module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import _node  # bench/ is sys.path[0] when this file is run as a script
import _report
import peers

from shmkv.clients import RemoteCache, direct, remote

try:
    import redis
except ImportError:  # a peer, not a dependency
    redis = None

TCP, IPC, REDIS = "shmkv tcp", "shmkv ipc", "redis-py (hiredis)"
# the same gets with the client's direct link off (clients/direct.py): libzmq at both ends
TCP_ZMQ, IPC_ZMQ = "shmkv tcp, no direct link", "shmkv ipc, no direct link"
FLOOR, FLOOR_IPC = "bare pyzmq echo, tcp", "bare pyzmq echo, ipc"
# The floor of a ZeroMQ round trip from Python: a ROUTER that sends back each message as it
# came, in a loop of pyzmq's recv_multipart/send_multipart, no decoding, no region; bound to
# the endpoints given (tcp and ipc), it prints the tcp one as bound.
ECHO = """
import sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)  # a SIGINT ends it at once (bench_node_callgrind.py)
for endpoint in sys.argv[1:]:
    sock.bind(endpoint)
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
while True:
    sock.send_multipart(sock.recv_multipart())
"""
ECHO_PREFIX = "echo+"  # a throughput target: the bare echo at the endpoints after it
REQUEST_HEADER = b"SHMKV/2" + bytes(23)  # a get's header frame is this long


class BareEcho:
    """`count` ECHO processes, each on its own tcp port and ipc path (in ipc_dir), as the
    node's workers are; get(endpoint) is a get of the floor: a message of a request's
    size to an echo and back."""

    def __init__(self, count: int, ipc_dir: str) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.tcp: list[str] = []
        self.ipc = [f"ipc://{ipc_dir}/echo.{i}.sock" for i in range(count)]
        self.sockets: list = []

    def __enter__(self) -> BareEcho:
        try:
            for ipc in self.ipc:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", ECHO, "tcp://127.0.0.1:*", ipc],
                    stdout=subprocess.PIPE, text=True))
                self.tcp.append(self.procs[-1].stdout.readline().strip())  # type: ignore
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self.sockets:
            sock.close()
        for proc in self.procs:
            proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]

    def get(self, endpoint: str) -> Callable[[bytes], object]:
        sock = echo_socket(endpoint)
        self.sockets.append(sock)
        return lambda key: echo_round_trip(sock, key)

    def target(self) -> str:
        return ECHO_PREFIX + ",".join(self.tcp)


def echo_socket(endpoint: str):  # -> zmq.Socket (zmq is imported where it is used)
    import zmq
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def echo_round_trip(sock, key: bytes) -> object:
    sock.send_multipart([REQUEST_HEADER, key])
    return sock.recv_multipart()


@contextlib.contextmanager
def running_node(arena_bytes: int, ipc_dir: str, options: list[str],
                 env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """A node on an ephemeral loopback port and an ipc:// socket, with the options given after
    the bench's and env added to the environment; yields its ready event."""
    with _node.running_node(f"shmkv-bench-node-{uuid.uuid4().hex[:8]}", "--ipc-dir", ipc_dir,
                            *options, arena_bytes=arena_bytes, env=env) as ready:
        yield ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_redis(dir_path: Path) -> Iterator[int | None]:
    """A redis-server on an ephemeral loopback port; yields the port (None: no redis)."""
    if redis is None or shutil.which("redis-server") is None:
        yield None
        return
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(dir_path), "--daemonize", "no"]
    client = redis.Redis(host="127.0.0.1", port=port)
    server = peers.Server("redis-server", argv, dir_path / "redis.log", client.ping)
    try:
        yield port
    finally:
        client.close()
        server.stop()


def _remote_ops(cache: RemoteCache, batch: int) -> dict[str, Callable]:
    def pipelined(keys: list[bytes]) -> list[object]:
        with cache.pipeline() as p:
            futures = [p.get(k) for k in keys]
        return [f.result() for f in futures]

    def big_one_message(keys: list[bytes]) -> object:
        with cache.pipeline() as p:  # a pipeline's get_many is one message, whatever its size
            return p.get_many(keys).result()

    return {"get": cache.get, f"batch of {batch}": cache.get_many,
            f"pipeline of {batch}": pipelined, "big batch, one message": big_one_message,
            f"big batch, {remote.BATCH_KEYS}-key batches pipelined": cache.get_many}


def _redis_ops(client: redis.Redis, batch: int) -> dict[str, Callable]:
    def pipelined(keys: list[bytes]) -> list[object]:
        p = client.pipeline(transaction=False)
        for k in keys:
            p.get(k)
        return p.execute()

    return {"get": client.get, f"batch of {batch}": client.mget,
            f"pipeline of {batch}": pipelined, "big batch, one message": client.mget}


def measure(args: argparse.Namespace) -> tuple[dict[str, list[int]], dict[str, float],
                                              list[str]]:
    rng = random.Random(args.seed)
    keys = [os.urandom(8).hex().encode() for _ in range(args.keys)]
    values = {k: os.urandom(args.value_bytes) for k in keys}
    samples: dict[str, list[int]] = {}
    throughput: dict[str, float] = {}
    notes = []
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-node-") as tmp, \
            running_node(256 << 20, os.path.join(tmp, "ipc"), args.node_option) as node, \
            running_redis(Path(tmp)) as redis_port, \
            BareEcho(len(node.get("workers") or [None]), tmp) as echo, \
            contextlib.ExitStack() as clients:
        endpoints = {TCP: node["endpoint"], IPC: node["ipc_endpoint"]}
        systems: dict[str, dict[str, Callable]] = {}
        for name, endpoint in endpoints.items():
            cache = clients.enter_context(RemoteCache(endpoint, timeout_s=30))
            systems[name] = _remote_ops(cache, args.batch)
        os.environ[direct.DIRECT_LINK_ENV] = "0"  # read when a RemoteCache is made
        for name, endpoint in ((TCP_ZMQ, endpoints[TCP]), (IPC_ZMQ, endpoints[IPC])):
            systems[name] = {"get": clients.enter_context(RemoteCache(endpoint,
                                                                      timeout_s=30)).get}
        del os.environ[direct.DIRECT_LINK_ENV]
        cache.set_many(values)
        if redis_port is not None:
            client = redis.Redis(host="127.0.0.1", port=redis_port)
            clients.callback(client.close)
            for i in range(0, len(keys), 1000):
                client.mset({k: values[k] for k in keys[i:i + 1000]})
            systems[REDIS] = _redis_ops(client, args.batch)
        else:
            notes.append("redis missing (apt-get install redis-server; pip install redis "
                         "hiredis): its rows are absent")
        systems[FLOOR] = {"get": echo.get(echo.tcp[0])}
        systems[FLOOR_IPC] = {"get": echo.get(echo.ipc[0])}
        sizes = {"get": (args.gets, 1), f"batch of {args.batch}": (args.batches, args.batch),
                 f"pipeline of {args.batch}": (args.batches, args.batch)}
        sizes.update({op: (args.big_batches, args.big_batch) for op in systems[TCP]
                      if op.startswith("big batch")})
        for _ in range(args.rounds):  # alternate, so that all see the same machine weather
            for op, (count, per_call) in sizes.items():
                for name, ops in systems.items():
                    if op not in ops:
                        continue
                    if per_call == 1:
                        it = iter(rng.choices(keys, k=count))
                        timed = _report.time_each(lambda f=ops[op]: f(next(it)), count)
                    else:
                        calls = iter([rng.sample(keys, per_call) for _ in range(count)])
                        timed = _report.time_each(lambda f=ops[op]: f(next(calls)), count)
                    samples.setdefault(f"{name}|{op}", []).extend(timed)
        targets = {TCP: endpoints[TCP], IPC: endpoints[IPC], FLOOR: echo.target()}
        if redis_port is not None:
            targets[REDIS] = f"redis://127.0.0.1:{redis_port}"
        for n in args.clients:
            for _ in range(args.rounds):
                for name, target in targets.items():
                    ops_per_s = run_clients(target, n, args.seconds, keys[:1000])
                    key = f"{name}|{n} clients"
                    throughput[key] = max(throughput.get(key, 0.0), ops_per_s)
        assert systems[TCP]["get"](keys[0]) == values[keys[0]]
    return samples, throughput, notes


def run_clients(target: str, count: int, seconds: float, keys: list[bytes]) -> float:
    """ops/s of `count` client processes doing single gets on target for `seconds` at once:
    each connects and says so, then all start together (a line on their stdin)."""
    with tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False) as f:
        f.write("\n".join(k.decode() for k in keys))
    procs: list[subprocess.Popen[str]] = []
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--client", _one_of(target, i),
                                   f.name, str(seconds)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for i in range(count)]
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        for proc in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        total = 0.0
        for proc in procs:
            out, _ = proc.communicate(timeout=60 + seconds)
            done, elapsed_s = out.split()
            total += int(done) / float(elapsed_s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        os.unlink(f.name)
    return total


def _one_of(target: str, i: int) -> str:
    """Client i's endpoint: the echoes are spread over as a node's workers spread clients."""
    if not target.startswith(ECHO_PREFIX):
        return target
    endpoints = target[len(ECHO_PREFIX):].split(",")
    return ECHO_PREFIX + endpoints[i % len(endpoints)]


def client_process(target: str, keys_path: str, seconds: float) -> None:
    """One client of run_clients: connects, says "ready", waits for a line, then gets for
    `seconds`; prints how many and in how long."""
    keys = Path(keys_path).read_text().split("\n")
    if target.startswith("redis://"):
        port = int(target.rsplit(":", 1)[1])
        client = redis.Redis(host="127.0.0.1", port=port)
        get = client.get
    elif target.startswith(ECHO_PREFIX):
        sock = echo_socket(target[len(ECHO_PREFIX):])
        get = lambda key: echo_round_trip(sock, key.encode())  # noqa: E731
    else:
        cache = RemoteCache(target, timeout_s=30)
        get = cache.get
    get(keys[0])  # connected
    print("ready", flush=True)
    sys.stdin.readline()
    done, n = 0, len(keys)
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        for i in range(50):
            get(keys[(done + i) % n])
        done += 50
    print(done, time.perf_counter() - started)


def report(samples: dict[str, list[int]], throughput: dict[str, float],
           batch: int, big_batch: int) -> tuple[list[dict], list[str]]:
    med = {name: _report.percentiles(s)["median"] for name, s in samples.items()}
    rows = []
    for name, s in samples.items():
        system, op = name.split("|")
        p = _report.percentiles(s)
        per_call = 1 if op == "get" else big_batch if op.startswith("big") else batch
        peer = f"{REDIS}|{op}" if not op.startswith("big") else f"{REDIS}|big batch, one message"
        rows.append({"system": system, "op": op, "n": len(s), "median_ns": p["median"],
                     "p99_ns": p["p99"], "ops_per_s": 1e9 * per_call / p["median"],
                     "ratio": p["median"] / med[peer] if peer in med else None})
    for name, ops_per_s in throughput.items():
        system, op = name.split("|")
        peer = throughput.get(f"{REDIS}|{op}")
        rows.append({"system": system, "op": f"throughput, {op}", "n": None,
                     "median_ns": None, "p99_ns": None, "ops_per_s": ops_per_s,
                     "ratio": peer / ops_per_s if peer else None})
    checks = []
    if any(name.startswith(REDIS) for name in med):
        def latency(system: str, op: str, target: float) -> str:
            ratio = med[f"{system}|{op}"] / med[f"{REDIS}|{op}"]
            met = "met" if ratio <= target else "NOT met"
            return f"{system} {op}: {ratio:.2f}x redis-py's median ({met}: target <= {target})"

        def speed(system: str, op: str, target: float | None) -> str:
            ratio = med[f"{REDIS}|{op}"] / med[f"{system}|{op}"]
            met = "" if target is None else \
                f" ({'met' if ratio >= target else 'NOT met'}: target >= {target})"
            return f"{system} {op}: {ratio:.2f}x redis-py's throughput{met}"

        def per_key(system: str) -> str:  # a batch's work beyond its round trip, a key
            extra_ns = med[f"{system}|batch of {batch}"] - med[f"{system}|get"]
            return f"{system} {extra_ns / (batch - 1) / 1000:.2f} us"

        checks += [latency(TCP, "get", 1.15), latency(IPC, "get", 1.0)]
        checks += [f"{system} get: {med[f'{system}|get'] / med[f'{REDIS}|get']:.2f}x "
                   f"redis-py's median" for system in (TCP_ZMQ, IPC_ZMQ)]
        checks += [f"{floor} get (no node, libzmq at both ends: the floor under a client "
                   f"through libzmq): {med[f'{floor}|get'] / med[f'{REDIS}|get']:.2f}x "
                   f"redis-py's median" for floor in (FLOOR, FLOOR_IPC)]
        checks += [speed(TCP, f"batch of {batch}", 1.0), speed(IPC, f"batch of {batch}", 1.0),
                   f"batch of {batch}, time beyond a get's round trip, a key: "
                   + ", ".join(per_key(system) for system in (TCP, IPC, REDIS)),
                   speed(TCP, f"pipeline of {batch}", None),
                   speed(IPC, f"pipeline of {batch}", None)]
        for name, ops_per_s in throughput.items():
            system, op = name.split("|")
            peer = throughput.get(f"{REDIS}|{op}")
            if system != REDIS and peer:
                ratio = ops_per_s / peer
                met = " (the floor: no target)" if system == FLOOR else \
                    f" ({'met' if ratio >= 1 else 'NOT met'}: target >= 1.0)"
                checks.append(f"{system} throughput with {op}: {ratio:.2f}x redis-server's"
                              + met)
    return rows, checks


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--client":  # one process of run_clients
        client_process(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--gets", type=int, default=5_000, help="single gets per round")
    parser.add_argument("--batch", type=int, default=100,
                        help="keys per get_many / MGET and per pipeline")
    parser.add_argument("--batches", type=int, default=300, help="batches per round")
    parser.add_argument("--big-batch", type=int, default=10_000)
    parser.add_argument("--big-batches", type=int, default=10, help="big batches per round")
    parser.add_argument("--clients", type=lambda s: [int(n) for n in s.split(",")],
                        default=[8, 32], help="client processes for throughput, e.g. 8,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--node-option", action="append", default=[],
                        help="a `shmkv serve` option for the node, as --node-option=--flag=value "
                        "(repeatable), e.g. --node-option=--cpu-affinity=off")
    _report.add_run_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.keys, args.gets, args.batches, args.rounds = 2_000, 500, 30, 1
        args.big_batch, args.big_batches, args.seconds = 2_000, 3, 1.0
    load = os.getloadavg()
    samples, throughput, notes = measure(args)
    rows, checks = report(samples, throughput, args.batch, args.big_batch)
    notes = [*checks, "ratio (the column is against redis here, not shmkv) = median / "
             "redis-py's median of the same op (latency rows), "
             "redis-server's ops/s / this row's (throughput rows): below 1 is faster than "
             "Redis; ops/s counts keys", f"big batch: {args.big_batch} keys; throughput: best "
             f"of {args.rounds} runs of {args.seconds} s each; loopback, client and servers "
             "share the machine's cores",
             *([f"node options: {' '.join(args.node_option)}"] if args.node_option else []),
             "load average before / after the run: " + " / ".join(
                 ", ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg())),
             *notes]
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    _report.print_and_save("node", "The node's ZeroMQ door vs redis-server", rows, notes, out)


if __name__ == "__main__":
    main()
