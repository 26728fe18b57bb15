"""Instructions per get_many of 100 keys without the sockets, packed batches in C against the
Python code they replace, counted by callgrind (repeatable where timings on a shared machine
are not): the client's pack_keys, the node's Dispatcher.run of get_many, the client's
found_values, for --iterations rounds, minus a run of 0 rounds (the interpreter's start).

    python bench/bench_packed.py            # needs valgrind; prints a table

Not a test module.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile

BODY = """
import sys, uuid, shmkv
from shmkv.broker import dispatch, protocol
from shmkv.broker.protocol import Request
from shmkv.clients import commands
if sys.argv[1] == "python":
    protocol.pack_c = protocol.unpack_bytes_c = dispatch.pack_found_c = None
name = "bench-packed-" + uuid.uuid4().hex[:8]
c = shmkv.Cache.create(name, arena_bytes=16 << 20)
try:
    keys = [b"key%05d" % i for i in range(100)]
    for k in keys:
        c.set(k, b"v" * 100)
    d = dispatch.Dispatcher(c, protocol.limits_for(16 << 20))
    for _ in range(int(sys.argv[2])):
        frames = commands.pack_keys(keys)
        found, out = d.run(Request(1, "get_many", "", {}, tuple(frames), d.max_reply_bytes))
        commands.found_values(keys, protocol.Reply(1, found, out, op="get_many"))
finally:
    c.close()
    shmkv.Cache.unlink(name)
"""


def instructions(mode: str, rounds: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
                              sys.executable, "-c", BODY, mode, str(rounds)],
                             capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", run.stderr).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    per = {mode: (instructions(mode, args.iterations) - instructions(mode, 0)) / args.iterations
           for mode in ("c", "python")}
    print("| packed form | instructions per get_many(100), client + node | ratio |")
    print("|---|---:|---:|")
    for mode, n in per.items():
        print(f"| {mode} | {n:,.0f} | {n / per['python']:.2f} |")


if __name__ == "__main__":
    main()
