"""Instructions the node's process spends per get over ZeroMQ, counted by callgrind (repeatable
where timings on a shared machine are not): the node of this checkout, optionally the node of
another checkout's interpreter (--base-python: the before of a change), and the bare pyzmq
echo of bench_node.py (the floor: a ROUTER that sends each message back), each run under
callgrind while one client sends it --gets gets of a 100 B value over ipc://, minus a run of
--warm gets (start-up and shutdown). Counts user-space instructions of every thread of the
server (libzmq's I/O thread included), not the kernel's.

    python bench/bench_node_callgrind.py --out bench/results       # needs valgrind
    python bench/bench_node_callgrind.py --base-python ../before/.venv/bin/python

The node runs with --workers 1, metrics off and maintenance every 1000 s (its passes would add
work in proportion to the run's length, which valgrind stretches). Not a test module.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

import _report
import bench_node

from shmkv.clients import RemoteCache

KEY, VALUE = "0123456789abcdef", b"v" * 100
NODE = "this node"


def node_argv(python: str, region: str, ipc_dir: str) -> list[str]:
    return [python, "-m", "shmkv.cli", "--region", region, "serve", "--arena-bytes", "16M",
            "--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
            "--metrics-bind", "off", "--ipc-dir", ipc_dir, "--workers", "1",
            "--maintain-interval-s", "1000"]


def instructions(system: str, python: str, gets: int) -> int:
    """The server's instructions for `gets` gets, start to stop."""
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-cg-") as tmp:
        region = f"shmkv-bench-cg-{uuid.uuid4().hex[:8]}"
        argv = [python, "-c", bench_node.ECHO, f"ipc://{tmp}/echo.sock"] if system == "echo" \
            else node_argv(python, region, f"{tmp}/ipc")
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=tempfile.gettempdir())  # a neutral cwd: ./shmkv would shadow the package
        try:
            line = server.stdout.readline()  # type: ignore[union-attr]
            if system == "echo":
                sock = bench_node.echo_socket(f"ipc://{tmp}/echo.sock")
                try:
                    for _ in range(gets):
                        bench_node.echo_round_trip(sock, KEY.encode())
                finally:
                    sock.close()
            else:
                with RemoteCache(json.loads(line)["ipc_endpoint"], timeout_s=60) as remote:
                    remote.set(KEY, VALUE)
                    for _ in range(gets):
                        remote.get(KEY)
        finally:
            # the echo dies of SIGINT (KeyboardInterrupt), the node stops on SIGTERM: both
            # exit, so callgrind writes its counts
            server.send_signal(signal.SIGINT if system == "echo" else signal.SIGTERM)
            server.wait(120)
            server.stdout.close()  # type: ignore[union-attr]
            if system != "echo":
                subprocess.run([python, "-m", "shmkv.cli", "--region", region, "unlink"],
                               stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir(), check=False)
        with open(f"{tmp}/out") as out:
            return int(re.search(r"^summary: (\d+)", out.read(), re.MULTILINE).group(1))  # type: ignore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gets", type=int, default=5000)
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--base-python", help="the interpreter of another checkout, whose "
                        "node is measured too (the before of a change)")
    parser.add_argument("--out", help="results directory (default: print only)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    systems = {NODE: sys.executable, "bare pyzmq echo": sys.executable}
    if args.base_python:
        systems["base node"] = args.base_python
    per_get = {}
    for name, python in systems.items():
        kind = "echo" if name.startswith("bare") else "node"
        counts = [instructions(kind, python, n) for n in (args.warm, args.gets)]
        per_get[name] = (counts[1] - counts[0]) / (args.gets - args.warm)
    lines = ["| server | instructions per get | ratio vs this node |", "|---|---:|---:|"]
    lines += [f"| {name} | {count:,.0f} | {count / per_get[NODE]:.2f} |"
              for name, count in per_get.items()]
    table = "\n".join(lines)
    notes = [(f"server-side user-space instructions, ({args.gets} gets - {args.warm} gets) / "
              f"{args.gets - args.warm}; ipc://, one client (RemoteCache; the echo's: a raw "
              "DEALER), 16 B key, 100 B value"),
             (f"the node above the echo: {per_get[NODE] - per_get['bare pyzmq echo']:,.0f} "
              "instructions a get")]
    if args.base_python:
        notes.append(f"base node: run by {args.base_python}")
    _report.print_and_save_table("node-callgrind", "Instructions per get in the node's "
                                 "process", table, notes, args.out,
                                 {"instructions_per_get": per_get})


if __name__ == "__main__":
    main()
