"""The plain get (compact.py's PLAIN_GET), which a node answers without decoding it
(zmq_door.py), in C where it can (compiled_door.py) and in Python: on a real node, its replies
are those the long way gives the same get sent with a JSON header, for every kind of key,
either way; it is counted as a get; and it never passes a request of its client that waits
for a lock. The same for the plain get_many (PLAIN_GET_MANY), which the C path answers too."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from integration.test_node_limits import stopped_lock_holder
from node_process import dealer, running_node
from tests_support import scrape

import shmkv
from shmkv import backend
from shmkv.broker import batches, compact, protocol
from shmkv.broker.protocol import PROTOCOL_TAG
from shmkv.broker.zerocopy import ENVIRONMENT, ZERO_COPY_MIN_BYTES

WAIT_MS = 20_000
TIMEOUT_MS = 2000

# key -> what a local process stores there (None: nothing)
STORED = {
    b"small": b"v",
    b"empty": b"",
    b"large": bytes(range(256)) * (ZERO_COPY_MIN_BYTES // 256 + 1),  # lent when zero copy is on
    b"array": np.arange(12, dtype=np.int32).reshape(3, 4),
    b"absent": None,
    b"\xff\x00binary": b"\x00\x01",
    b"k" * shmkv.layout.MAX_KEY_BYTES: b"longest key",
    b"k" * (shmkv.layout.MAX_KEY_BYTES + 1): None,  # too long: an error either way
    b"": None,
}


def plain_get(request_id: int, key: bytes) -> list[bytes]:
    frames = protocol.encode_request(request_id, "get", {"timeout_ms": TIMEOUT_MS}, [key])
    head = frames[0]
    assert len(head) == len(PROTOCOL_TAG) + compact.PLAIN_GET_BYTES and \
        head[len(PROTOCOL_TAG):].startswith(compact.PLAIN_GET)
    return frames


def long_get(request_id: int, key: bytes) -> list[bytes]:
    """The same get with a JSON header: decoded and run by dispatch.py."""
    header = {"id": request_id, "op": "get", "timeout_ms": TIMEOUT_MS}
    return [PROTOCOL_TAG + json.dumps(header).encode(), key]


def answer(sock, frames: list[bytes]) -> tuple:
    sock.send_multipart(frames)
    assert sock.poll(WAIT_MS), "no reply from the node"
    reply = protocol.decode_reply(sock.recv_multipart())
    return reply.result, [bytes(f) for f in reply.frames], reply.error, reply.message


def store(region: str) -> None:
    with shmkv.Cache.open(region) as cache:
        for key, value in STORED.items():
            if isinstance(value, np.ndarray):
                cache.set_array(key, value)
            elif value is not None:
                cache.set(key, value)


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("zero_copy_min_bytes", [str(ZERO_COPY_MIN_BYTES), "0"])
@pytest.mark.parametrize("compiled", ["1", "0"])
def test_a_plain_get_is_answered_as_the_long_way_answers_it(region_name, workers,
                                                           zero_copy_min_bytes, compiled) -> None:
    env = {**os.environ, ENVIRONMENT: zero_copy_min_bytes, backend.COMPILED_ZMQ_ENV: compiled}
    with running_node(region_name, "--workers", workers, env=env) as node, \
            dealer(node.endpoint) as sock:
        store(region_name)
        for i, key in enumerate(STORED):
            fast = answer(sock, plain_get(2 * i, key))
            assert fast == answer(sock, long_get(2 * i + 1, key)), key[:20]
        # and what the long way answers is what a local read gives
        assert answer(sock, plain_get(99, b"small"))[:2] == (True, [b"v"])
        assert answer(sock, plain_get(98, b"absent"))[:3] == (False, [], None)
        too_long = b"k" * (shmkv.layout.MAX_KEY_BYTES + 1)
        assert answer(sock, plain_get(97, too_long))[2] == "KeyTooLarge"


@pytest.mark.multiprocess
@pytest.mark.parametrize("compiled", ["1", "0"])
def test_plain_gets_are_counted_as_gets(region_name, compiled) -> None:
    env = {**os.environ, backend.COMPILED_ZMQ_ENV: compiled}
    with running_node(region_name, env=env) as node, dealer(node.endpoint) as sock:
        store(region_name)
        for i in range(5):
            answer(sock, plain_get(i, b"small" if i % 2 else b"absent"))
        samples = scrape(int(node.ready["metrics"].rsplit(":", 1)[1]))
        assert samples[("shmkv_requests_total", (("command", "get"), ("outcome", "ok")))] == 5


def get_many_request(request_id: int, keys: list[bytes], compact_header: bool) -> list[bytes]:
    """A get_many: a plain one (a compact header), or the same with a JSON header."""
    if compact_header:
        frames = protocol.encode_request(request_id, "get_many", {"timeout_ms": TIMEOUT_MS},
                                         protocol.pack(keys))
        assert frames[0][len(PROTOCOL_TAG):].startswith(compact.PLAIN_GET_MANY)
        return frames
    header = {"id": request_id, "op": "get_many", "timeout_ms": TIMEOUT_MS}
    return [PROTOCOL_TAG + json.dumps(header).encode(), *protocol.pack(keys)]


@pytest.mark.multiprocess
@pytest.mark.parametrize("compiled", ["1", "0"])
def test_a_plain_get_many_is_answered_as_the_long_way_answers_it_and_counted(region_name,
                                                                             compiled) -> None:
    env = {**os.environ, backend.COMPILED_ZMQ_ENV: compiled}
    valid = [k for k in STORED if 0 < len(k) <= shmkv.layout.MAX_KEY_BYTES]
    batches_of_keys = [valid, valid * 3, [b"absent"], [b"small", b""],
                       [b"k" * (shmkv.layout.MAX_KEY_BYTES + 1), b"small"]]
    with running_node(region_name, env=env) as node, dealer(node.endpoint) as sock:
        store(region_name)
        for i, keys in enumerate(batches_of_keys):
            fast = answer(sock, get_many_request(2 * i, keys, True))
            assert fast == answer(sock, get_many_request(2 * i + 1, keys, False)), i
        result, frames, error, _ = answer(sock, get_many_request(99, valid, True))
        assert error is None and result == [STORED[k] is not None for k in valid]
        assert protocol.unpack_bytes(*frames)[:2] == [b"v", b""]
        samples = scrape(int(node.ready["metrics"].rsplit(":", 1)[1]))
        ok = ("shmkv_requests_total", (("command", "get_many"), ("outcome", "ok")))
        assert samples[ok] == 2 * 4 + 1  # the last batch: an error either way


@pytest.mark.multiprocess
def test_a_plain_get_behind_a_parked_request_of_its_client_is_answered_after_it(
        region_name) -> None:
    with running_node(region_name) as node, stopped_lock_holder(region_name, "held"), \
            dealer(node.endpoint) as sock:
        sock.send_multipart(protocol.encode_request(1, "set", {"timeout_ms": 500},
                                                    [b"held", b"new"]))  # parked: lock held
        sock.send_multipart(plain_get(2, b"held"))
        replies = []
        for _ in range(2):
            assert sock.poll(WAIT_MS), "no reply from the node"
            replies.append(protocol.decode_reply(sock.recv_multipart()))
        assert [(r.id, r.error) for r in replies] == [(1, "LockTimeout"), (2, None)]
        assert replies[1].result is False  # the set did not happen


# --- in a batch (batches.py): a pipeline's gets ------------------------------------------------
def batch_answers(sock, entries: list[list[bytes]]) -> list[tuple]:
    sock.send_multipart(batches.encode(batches.REQUEST_FORM, entries))
    assert sock.poll(WAIT_MS), "no reply from the node"
    return [(r.id, r.result, [bytes(f) for f in r.frames], r.error, r.message)
            for r in batches.decode_replies(sock.recv_multipart())]


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", ["1", "2"])
def test_plain_gets_in_a_batch_are_answered_as_the_long_way_answers_them(region_name,
                                                                        workers) -> None:
    with running_node(region_name, "--workers", workers) as node, \
            dealer(node.endpoint) as sock:
        store(region_name)
        entries = [entry for i, key in enumerate(STORED)
                   for entry in (plain_get(2 * i, key), long_get(2 * i + 1, key))]
        replies = batch_answers(sock, entries)
        assert [r[0] for r in replies] == list(range(2 * len(STORED)))
        for fast, slow in zip(replies[::2], replies[1::2]):
            assert fast[1:] == slow[1:], fast[:3]
        assert replies[0][1:3] == (True, [b"v"])  # small: what a local read gives


@pytest.mark.multiprocess
def test_plain_gets_in_a_batch_are_counted_as_gets(region_name) -> None:
    with running_node(region_name) as node, dealer(node.endpoint) as sock:
        store(region_name)
        batch_answers(sock, [plain_get(i, b"small" if i % 2 else b"absent") for i in range(5)])
        samples = scrape(int(node.ready["metrics"].rsplit(":", 1)[1]))
        assert samples[("shmkv_requests_total", (("command", "get"), ("outcome", "ok")))] == 5


@pytest.mark.multiprocess
def test_a_plain_get_in_a_batch_behind_a_parked_set_reads_what_the_set_wrote(
        region_name) -> None:
    with running_node(region_name) as node, \
            stopped_lock_holder(region_name, "held") as holder, dealer(node.endpoint) as sock:
        set_held = protocol.encode_request(1, "set", {"timeout_ms": WAIT_MS}, [b"held", b"new"])
        sock.send_multipart(batches.encode(batches.REQUEST_FORM,
                                           [set_held, plain_get(2, b"held")]))
        sock.send_multipart(plain_get(3, b"other"))  # another key: answered at once, so the
        assert sock.poll(WAIT_MS), "no reply from the node"  # batch is in, its set parked
        assert protocol.decode_reply(sock.recv_multipart()).id == 3
        os.kill(holder, signal.SIGKILL)  # the lock is free (its owner died): the set is done
        assert sock.poll(WAIT_MS), "no reply from the node"
        replies = batches.decode_replies(sock.recv_multipart())
        assert [(r.id, r.error) for r in replies] == [(1, None), (2, None)]
        assert [bytes(f) for f in replies[1].frames] == [b"new"]  # read after the set
