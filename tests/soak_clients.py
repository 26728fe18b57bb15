"""Load for the node's soak test (tests/integration/test_node_soak.py), run as a process:

    python soak_clients.py clients ENDPOINT DURATION_S PROCESS_INDEX THREADS
        THREADS well-behaved RemoteCache clients of mixed operations, each on its own keys,
        each checking every reply against its own model of those keys. Prints one JSON line:
        {"requests": n, "failures": [...], "stored": {key: value hex}} (what each client last
        stored, which the test reads back from the region).
    python soak_clients.py hostile ENDPOINT DURATION_S MAX_MESSAGE_BYTES
        one client that sends garbage, messages of too many frames, frames over the node's
        max_message_bytes, and requests whose replies it never reads. Prints {"sent": n}.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time

import zmq

from shmkv.broker import protocol
from shmkv.clients import RemoteCache

KEYS_PER_CLIENT = 40
CLIENT_TIMEOUT_S = 15.0  # a reply later than this counts as a request not answered
HOSTILE_VALUE_BYTES = 256 << 10  # what the never-reading requests ask for


def run_client(endpoint: str, until: float, name: str, seed: int, out: dict) -> None:
    rng = random.Random(seed)
    model: dict[str, bytes] = {}
    counter = f"{name}:counter"
    count = requests = 0
    failures: list[str] = out["failures"]
    try:
        with RemoteCache(endpoint, timeout_s=CLIENT_TIMEOUT_S, retries=0) as cache:
            while time.monotonic() < until:
                key = f"{name}:k{rng.randrange(KEYS_PER_CLIENT)}"
                op = rng.randrange(8)
                if op == 0:
                    value = rng.randbytes(rng.randrange(2048))
                    cache.set(key, value)
                    model[key] = value
                elif op == 1:
                    got = cache.get(key)
                    if got != model.get(key):
                        failures.append(f"get {key}: {got!r:.40} != {model.get(key)!r:.40}")
                elif op == 2:
                    keys = [f"{name}:k{rng.randrange(KEYS_PER_CLIENT)}" for _ in range(5)]
                    got = cache.get_many(keys)
                    want = {k: model[k] for k in keys if k in model}
                    if got != want:
                        failures.append(f"get_many {keys}")
                elif op == 3:
                    items = {f"{name}:k{rng.randrange(KEYS_PER_CLIENT)}": rng.randbytes(64)
                             for _ in range(3)}
                    cache.set_many(items)
                    model.update(items)
                elif op == 4:
                    if cache.delete(key) != (key in model):
                        failures.append(f"delete {key}")
                    model.pop(key, None)
                elif op == 5:
                    count += 1
                    if cache.incr(counter) != count:
                        failures.append(f"incr {counter}")
                elif op == 6:
                    if (key in cache) != (key in model):
                        failures.append(f"contains {key}")
                else:
                    tail = rng.randbytes(16)
                    if cache.append(key, tail) != len(model.get(key, b"")) + 16:
                        failures.append(f"append {key}")
                    model[key] = model.get(key, b"") + tail
                requests += 1
    except Exception as exc:  # a request not answered (RemoteUnavailable) or refused
        failures.append(f"{name}: {type(exc).__name__}: {exc}")
    if count:
        model[counter] = str(count).encode()
    with out["lock"]:
        out["requests"] += requests
        out["stored"].update({k: v.hex() for k, v in model.items()})


def clients(endpoint: str, duration_s: float, index: int, threads: int) -> None:
    until = time.monotonic() + duration_s
    out = {"requests": 0, "failures": [], "stored": {}, "lock": threading.Lock()}
    workers = [threading.Thread(target=run_client,
                                args=(endpoint, until, f"p{index}t{t}", index * 1000 + t, out))
               for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    del out["lock"]
    print(json.dumps(out), flush=True)


def hostile(endpoint: str, duration_s: float, max_message_bytes: int) -> None:
    until = time.monotonic() + duration_s
    rng = random.Random(0)
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    with RemoteCache(endpoint, timeout_s=CLIENT_TIMEOUT_S) as cache:
        cache.set("hostile:big", bytes(HOSTILE_VALUE_BYTES))
    too_big = bytes(max_message_bytes + 1)
    sent = 0
    next_oversize = time.monotonic()
    while time.monotonic() < until:
        messages = [
            [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(1, 6))],  # garbage
            protocol.encode_request(sent, "get", {}, [b"k"]) + [b""] * 10_000,  # frames
            protocol.encode_request(sent, "get", {}, [b"hostile:big"]),  # never read
        ]
        if time.monotonic() >= next_oversize:
            # on a socket of its own: the node drops the connection it comes on, and a
            # DEALER keeps what it had queued for after it reconnects (its next oversize
            # message among them), so on the shared one it would end the other kinds
            oversize = context.socket(zmq.DEALER)
            oversize.setsockopt(zmq.LINGER, 2000)  # close() still sends it, meanwhile
            oversize.connect(endpoint)
            oversize.send_multipart(protocol.encode_request(sent, "set", {}, [b"k", too_big]))
            oversize.close()
            sent += 1
            next_oversize = time.monotonic() + 2.0
        for message in messages:
            try:
                sock.send_multipart(message, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:  # its own queue is full: the node is not reading it, fine
                pass
        time.sleep(0.002)  # pacing, so that the load is the clients' and not this loop's
    sock.close()
    print(json.dumps({"sent": sent}), flush=True)


if __name__ == "__main__":
    mode, endpoint, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if mode == "clients":
        clients(endpoint, duration, int(sys.argv[4]), int(sys.argv[5]))
    else:
        hostile(endpoint, duration, int(sys.argv[4]))
