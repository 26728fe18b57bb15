"""RemoteCache's own cost per request, without a node's: its calls against a responder that
answers each request at once, next to a bare pyzmq round trip of the same frames, and next to
the RemoteCache of another commit (--baseline) in the same run.

The responder is a ROUTER in a process of its own that reads only what it needs of a request
(its id, its op, the keys of a get_many or a batch) and sends back a valid reply of a fixed
value (--value-bytes), so that what differs between two clients is the clients. Each system
runs in a child process of its own (this checkout's, or the baseline commit's shmkv, broker and
clients on PYTHONPATH), alternating round by round, and measures:
  * floor: the frames of a get sent with pyzmq's send and received with recv_multipart after a
    zmq_poll, no encoding or decoding beyond a struct;
  * get, set: RemoteCache.get and set of one key;
  * batch of --batch: get_many; pipeline of --batch: that many gets in a pipeline;
per op: the wall time of each call (median, p99), and the client process's CPU time per call
(time.process_time over the calls: its main thread, its libzmq I/O thread and the kernel's work
for them; waiting costs none), which the machine's other load disturbs less than wall time.
Then the same calls with each reply queued before its call is made (queued(): a ROUTER in the
client's thread, over inproc): no responder, no I/O thread, no wait, only the client's work.

    python bench/bench_client.py                          # this checkout only
    python bench/bench_client.py --baseline-commit 4e9e099 --rounds 5

The baseline is `git archive` of that commit's shmkv/, broker/ and clients/, laid out as the
installed package (shmkv.broker, shmkv.clients), with this checkout's compiled core copied in:
a commit whose C core differs cannot be measured this way. Not a test module.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _report  # bench/ is sys.path[0] when this file is run as a script

THIS = "this checkout"
QUEUED_PASSES = 3
# Batches and pipelines per round: --ops / this (a tenth: a get_many of 100 takes ~2x a get,
# and fewer calls than that leave its CPU time to the scheduler's noise)
BATCH_SHARE = 10
OPS = ("floor", "get", "set", "batch", "pipeline")
RESPONDER = r"""
import struct, sys, zmq
from shmkv.broker import batches, compact, protocol
value = b"v" * int(sys.argv[1])
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind("tcp://127.0.0.1:*")
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
TAG, ID = protocol.PROTOCOL_TAG, struct.Struct("<Q")
GET, SET, GET_MANY = (compact.OPS.index(op) for op in ("get", "set", "get_many"))
while True:
    peer, head, *payload = sock.recv_multipart()
    if batches.is_batch(head, batches.REQUEST_FORM):  # a pipeline's gets
        entries = batches.decode([head, *payload], batches.REQUEST_FORM)
        sock.send_multipart([peer, *batches.encode(batches.REPLY_FORM, [
            [TAG + compact.reply_header(ID.unpack_from(e[0], 10)[0], True), value]
            for e in entries])])
    elif head[7] == compact.REQUEST_FORM:
        request_id, op = ID.unpack_from(head, 10)[0], head[8]
        if op == GET:
            sock.send_multipart([peer, TAG + compact.reply_header(request_id, True), value])
        elif op == GET_MANY:
            count = len(payload[0]) // 4
            sock.send_multipart([peer, TAG + compact.reply_header(request_id, [True] * count),
                                 *protocol.pack([value] * count)])
        else:
            sock.send_multipart([peer, TAG + compact.reply_header(request_id, None)])
    else:  # a ping: says that it reads batches
        request = protocol.decode_request([head, *payload])
        limits = {"max_batch_requests": protocol.MAX_BATCH_REQUESTS}
        sock.send_multipart([peer, *protocol.encode_reply(
            protocol.Reply(request.id, {"limits": limits}))])
"""


def child(endpoint: str, ops: int, batch: int, value_bytes: int) -> None:
    """One system's measurements, printed as JSON: {op: [ns of each call..., cpu ns a call]}."""
    import zmq

    from shmkv.clients import RemoteCache

    key, value = b"key:000000000001", b"v" * value_bytes
    keys = [b"key:%012d" % i for i in range(batch)]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    request = struct.Struct("<7sBBBQId")
    more, pollin = int(zmq.SNDMORE), int(zmq.POLLIN)
    ids = iter(range(1, 1 << 62))

    def floor() -> object:
        sock.send(request.pack(b"SHMKV/2", 1, 0, 4, next(ids), 2000, 0.0), more, copy=False)
        sock.send(key, 0, copy=False)
        zmq.zmq_poll([(sock, pollin)], 2000)
        return sock.recv_multipart()

    with RemoteCache(endpoint, timeout_s=30) as cache:
        def pipeline() -> object:
            with cache.pipeline() as p:
                futures = [p.get(k) for k in keys]
            return [f.result() for f in futures]

        calls: dict[str, Callable[[], object]] = {
            "floor": floor, "get": lambda: cache.get(key), "set": lambda: cache.set(key, value),
            "batch": lambda: cache.get_many(keys), "pipeline": pipeline}
        assert cache.get(key) == value and pipeline() == [value] * batch
        results = {}
        for op, call in calls.items():
            count = ops if op in ("floor", "get", "set") else max(1, ops // BATCH_SHARE)
            _report.time_each(call, max(1, count // 10))  # warm up
            cpu_s = time.process_time()
            samples = _report.time_each(call, count)
            results[op] = [samples, (time.process_time() - cpu_s) * 1e9 / count]
    sock.close()
    results["queued"] = queued(ops, batch, value)
    print(json.dumps(results))


def queued(ops: int, batch: int, value: bytes) -> dict[str, float]:
    """ns a call (best of QUEUED_PASSES) when its reply is there before it is sent: a ROUTER in
    this thread, over inproc (no I/O thread, no wait), queues the replies of every call of a
    pass (their ids are the connection's next ones) before the pass starts. What is left is
    the client's own work, pyzmq's and libzmq's included."""
    import zmq

    from shmkv.broker import batches, compact, protocol
    from shmkv.clients import RemoteCache

    class Context(zmq.Context):  # the DEALER gets a name, so that replies can go ahead of it
        def socket(self, kind: int, **options: Any) -> zmq.Socket:
            sock = super().socket(kind, **options)
            if kind == zmq.DEALER:
                for option, setting in ((zmq.ROUTING_ID, b"client"), (zmq.RCVHWM, 0),
                                        (zmq.SNDHWM, 0)):
                    sock.setsockopt(option, setting)
            return sock

    tag, keys = protocol.PROTOCOL_TAG, [b"key:%012d" % i for i in range(batch)]
    context = Context()
    node = context.socket(zmq.ROUTER)
    node.setsockopt(zmq.SNDHWM, 0)
    node.setsockopt(zmq.RCVHWM, 0)
    node.bind("inproc://node")
    cache = RemoteCache("inproc://node", context=context, timeout_s=30)
    node.send_multipart([b"client", *protocol.encode_reply(protocol.Reply(1, {"limits": {
        "max_batch_requests": protocol.MAX_BATCH_REQUESTS}}))])  # to the first call's ping
    last_id = 1

    def replies(op: str, count: int) -> None:
        nonlocal last_id
        for request_id in range(last_id + 1, last_id + 1 + count):
            head = tag + compact.reply_header(request_id, None if op == "set" else
                                              [True] * batch if op == "batch" else True)
            if op == "pipeline":
                continue
            payload = [value] if op == "get" else protocol.pack([value] * batch) \
                if op == "batch" else []
            node.send_multipart([b"client", head, *payload])
        if op == "pipeline":
            for first in range(last_id + 1, last_id + 1 + count * batch, batch):
                node.send_multipart([b"client", *batches.encode(batches.REPLY_FORM, [
                    [tag + compact.reply_header(first + i, True), value]
                    for i in range(batch)])])
        last_id += count * (batch if op == "pipeline" else 1)

    def pipeline() -> object:
        with cache.pipeline() as p:
            futures = [p.get(k) for k in keys]
        return [f.result() for f in futures]

    calls: dict[str, Callable[[], object]] = {
        "get": lambda: cache.get(keys[0]), "set": lambda: cache.set(keys[0], value),
        "batch": lambda: cache.get_many(keys), "pipeline": pipeline}
    found = {}
    for op, call in calls.items():
        count = ops if op in ("get", "set") else max(1, ops // BATCH_SHARE)
        best = None
        for _ in range(QUEUED_PASSES + 1):  # the first warms up
            replies(op, count)
            started = time.perf_counter_ns()
            for _ in range(count):
                call()
            took = (time.perf_counter_ns() - started) / count
            best = took if best is None else min(best, took)
            while node.poll(0):  # the requests, unread
                node.recv_multipart()
        found[op] = best
    cache.close()
    node.close()
    context.term()
    return found


def baseline_tree(commit: str, into: Path) -> Path:
    """A directory whose shmkv package is commit's shmkv, broker and clients."""
    archive = subprocess.run(["git", "-C", str(_report.REPO), "archive", commit, "shmkv",
                              "broker", "clients"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for sub in ("broker", "clients"):
        (into / sub).rename(into / "shmkv" / sub)
    for core in (_report.REPO / "shmkv").glob("_core*.so"):
        shutil.copy(core, into / "shmkv")
    return into


def measure(args: argparse.Namespace, tmp: Path
            ) -> tuple[dict[str, dict[str, list]], dict[str, dict[str, list[float]]]]:
    systems = {THIS: None}
    if args.baseline_commit:
        systems[args.baseline_commit] = str(baseline_tree(args.baseline_commit, tmp))
    responder = subprocess.Popen([sys.executable, "-c", RESPONDER, str(args.value_bytes)],
                                 stdout=subprocess.PIPE, text=True, cwd=tmp)
    found: dict[str, dict[str, list]] = {name: {op: [[], []] for op in OPS} for name in systems}
    queued_ns: dict[str, dict[str, list[float]]] = {}
    try:
        endpoint = responder.stdout.readline().strip()  # type: ignore[union-attr]
        for _ in range(args.rounds):  # alternate, so that all see the same machine weather
            for name, path in systems.items():
                env = dict(os.environ)
                if path is not None:
                    env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
                out = subprocess.run(
                    [sys.executable, __file__, "--child", endpoint, str(args.ops),
                     str(args.batch), str(args.value_bytes)],
                    env=env, cwd=tmp, check=True, capture_output=True, text=True).stdout
                results = json.loads(out)
                for op, ns in results.pop("queued").items():
                    queued_ns.setdefault(name, {}).setdefault(op, []).append(ns)
                for op, (samples, cpu_ns) in results.items():
                    found[name][op][0].extend(samples)
                    found[name][op][1].append(cpu_ns)
    finally:
        responder.kill()
        responder.wait()
    return found, queued_ns


def report(found: dict[str, dict[str, list]], batch: int, baseline: str | None
           ) -> list[dict]:
    rows = []
    for name, ops in found.items():
        for op, (samples, cpu_ns) in ops.items():
            p = _report.percentiles(samples)
            per_call = batch if op in ("batch", "pipeline") else 1
            label = f"{op} of {batch}" if per_call > 1 else op
            base = found[baseline][op][0] if baseline and name != baseline else None
            rows.append({"system": name, "op": label, "n": len(samples),
                         "median_ns": p["median"], "p99_ns": p["p99"],
                         "ops_per_s": 1e9 * per_call / p["median"],
                         "client_cpu_ns": _report.percentiles(cpu_ns)["median"],
                         "ratio": p["median"] / _report.percentiles(base)["median"]
                         if base else None})
    return rows


def cpu_table(rows: list[dict], what: str) -> str:
    """Client CPU per call (client_cpu_ns) by op, a column per system, with the ratio of this
    checkout's to the baseline's."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    cpu = {(r["system"], r["op"]): r["client_cpu_ns"] for r in rows}
    ops = list(dict.fromkeys(r["op"] for r in rows))
    lines = ["| op | " + " | ".join(f"{s}: {what}" for s in systems) +
             (" | ratio |" if len(systems) > 1 else " |"),
             "|---|" + "---:|" * (len(systems) + (len(systems) > 1))]
    for op in ops:
        cells = [f"{cpu[s, op] / 1e3:,.1f}" for s in systems]
        if len(systems) > 1:
            cells.append(f"{cpu[systems[0], op] / cpu[systems[1], op]:.2f}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-commit", help="measure this commit's client too")
    parser.add_argument("--ops", type=int, default=3000, help="calls per op per round "
                        f"(batches and pipelines: this / {BATCH_SHARE})")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--value-bytes", type=int, default=100)
    _report.add_run_arguments(parser, seed=False)
    args = parser.parse_args()
    if args.quick:
        args.ops, args.rounds = 500, 1
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shmkv-bench-client-") as tmp:
        found, queued_ns = measure(args, Path(tmp))
    rows = report(found, args.batch, args.baseline_commit)
    notes = [f"ratio (the column says shmkv: here it is the baseline) = median / "
             f"{args.baseline_commit}'s median of the same op; in the CPU table, this "
             "checkout's / the baseline's" if args.baseline_commit else "no baseline: no ratio",
             "client CPU: the client process's CPU time per call (median of the rounds), its "
             "libzmq I/O thread included",
             f"replies queued: wall time per call, best of {QUEUED_PASSES} passes and of the "
             "rounds, with each reply queued before its call by a ROUTER in the client's own "
             "thread over inproc (queued() in the script): the client's work with no wait",
             f"floor: a bare pyzmq round trip of a get's frames; {args.rounds} rounds of "
             f"{args.ops} calls (batches, pipelines: {max(1, args.ops // BATCH_SHARE)}); "
             f"{args.value_bytes} B values; responder and client share the machine's cores",
             "load average before / after the run: " + " / ".join(
                 ", ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg()))]
    queued_rows = [{"system": name, "op": f"{op} of {args.batch}" if op in ("batch", "pipeline")
                    else op, "client_cpu_ns": min(ns)}
                   for name, ops in queued_ns.items() for op, ns in ops.items()]
    table = "\n\n".join([_report.markdown_table(rows), cpu_table(rows, "client CPU us/call"),
                          cpu_table(queued_rows, "us/call, replies queued")])
    print(table)
    print("\n".join(f"- {n}" for n in notes))
    out = args.out or (None if args.quick else str(_report.REPO / "bench" / "results"))
    if out:
        command = "python " + " ".join(shlex.quote(a) for a in [
            str(Path(sys.argv[0]).resolve().relative_to(_report.REPO)), *sys.argv[1:]])
        md, js = _report.write_results(out, "client", "RemoteCache's own cost per request "
                                       "(no node)", command, table, notes, {"rows": rows})
        print(f"wrote {md} and {js}")


if __name__ == "__main__":
    main()
