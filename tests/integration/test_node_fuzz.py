"""Fuzz of the node's request socket (hypothesis): random, truncated and ill-typed multipart
messages sent to a real node over a raw DEALER socket.

Every message must get exactly one reply in the protocol's format; every malformed one an
error reply, and no message an internal error (a ShmKVError code: an exception of the node that
no handler expected). After each message the node must still serve a normal set and get.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from node_process import running_node
from tests_support import new_region_name

from shmkv.broker import compact, protocol
from shmkv.broker.protocol import PROTOCOL_TAG
from shmkv.clients import RemoteCache

pytestmark = pytest.mark.multiprocess
REPLY_WAIT_MS = 10_000
OPS = sorted(protocol.REQUEST_FRAMES)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def node_endpoint() -> Iterator[str]:
    with running_node(new_region_name(), "--arena-bytes", "2M") as node:
        yield node.endpoint


@pytest.fixture(scope="module")
def raw(node_endpoint) -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(node_endpoint)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def remote(node_endpoint) -> Iterator[RemoteCache]:
    with RemoteCache(node_endpoint, timeout_s=10, retries=0) as client:
        yield client


def exchange(raw: zmq.Socket, frames: list[bytes]) -> protocol.Reply:
    """Send one message; return its one reply (and check that no second one follows)."""
    note(f"sent {frames!r}")
    raw.send_multipart(frames)
    assert raw.poll(REPLY_WAIT_MS), "the node did not reply"
    message = raw.recv_multipart()
    if message[:2] == [b"", PROTOCOL_TAG]:  # the answer to version 1's envelope (protocol.py)
        assert len(message) == 3 and frames[0] == b""
        message = [PROTOCOL_TAG + message[2]]
    reply = protocol.decode_reply(message)
    note(f"reply {reply!r}")
    assert reply.error != protocol.INTERNAL_ERROR, reply.message
    return reply


def still_serves(remote: RemoteCache) -> None:
    remote.set("canary", b"alive")
    assert remote.get("canary") == b"alive"


# --- strategies -----------------------------------------------------------------------------
small_bytes = st.binary(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
# headers with the protocol's field names, each of any JSON type (or left out)
headers = st.fixed_dictionaries({}, optional={
    "id": st.integers(0, 2**40) | json_values,
    "op": st.sampled_from(OPS) | json_values,
    "coll": st.sampled_from(["", "users", "missing"]) | json_values,
    "ttl_s": json_values, "delta": json_values, "version": json_values, "name": json_values,
    "old": json_values, "new": json_values, "dtype": st.sampled_from(["<f8", "|u1"]) | json_values,
    "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
    "unknown": json_values,
})


def valid_request(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    op = draw(st.sampled_from(OPS))
    count = protocol.REQUEST_FRAMES[op]  # packed batches get random (mostly bad) tables
    fields = {"coll": draw(st.sampled_from(["", "users"])), "ttl_s": 10, "version": 1,
              "delta": 1, "name": "users", "old": "users", "new": "people", "dtype": "|u1",
              "shape": [3]}
    payload = draw(st.lists(small_bytes, min_size=count, max_size=count))
    return op, protocol.encode_request(draw(st.integers(0, 2**40)), op, fields, payload)


@st.composite
def truncated_requests(draw: st.DrawFn) -> list[bytes]:
    """A valid request cut short, so that it is malformed whatever was cut: the payload of a
    command that takes a fixed number of frames, or the bytes of the header frame, tag
    included (a strict prefix of a compact JSON object is never one)."""
    op, frames = valid_request(draw)
    cuts = ["header"]
    if protocol.REQUEST_FRAMES[op] > 0:
        cuts.append("payload")
    if draw(st.sampled_from(cuts)) == "payload":
        return frames[:draw(st.integers(1, len(frames) - 1))]
    frames[0] = frames[0][:draw(st.integers(0, len(frames[0]) - 1))]
    return frames


@st.composite
def random_frames(draw: st.DrawFn) -> list[bytes]:
    """Anything at all; when it happens to start with a tag, the rest is random."""
    prefix = draw(st.sampled_from([[], [b""], [b"", b"SHMKV/1"], [b"", PROTOCOL_TAG],
                                   [b"SHMKV/0"], [PROTOCOL_TAG]]))
    frames = prefix + draw(st.lists(small_bytes, min_size=0 if prefix else 1, max_size=5))
    if prefix and prefix[0] and len(frames) > 1:  # a tag, then random header bytes
        frames[0:2] = [frames[0] + frames[1]]
    return frames


@st.composite
def ill_typed_requests(draw: st.DrawFn) -> list[bytes]:
    """The right tag before a header of protocol fields of any type, with 0-4 frames."""
    header = json.dumps(draw(headers)).encode()
    return [PROTOCOL_TAG + header, *draw(st.lists(small_bytes, max_size=4))]


@st.composite
def compact_requests(draw: st.DrawFn) -> list[bytes]:
    """Compact headers of any command code, flags, id, timeout, ttl and collection bytes (a
    known code most of the time), with 0-4 frames."""
    code = draw(st.integers(0, len(compact.OPS) - 1) | st.integers(0, 255))
    head = struct.pack("<BBBQId", compact.REQUEST_FORM, code, draw(st.integers(0, 255)),
                       draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32 - 1)),
                       draw(st.floats() | st.sampled_from([0.0, 10.0, -1.0])))
    coll = draw(st.sampled_from([b"", b"users", b"missing"]) | small_bytes)
    return [PROTOCOL_TAG + head + coll, *draw(st.lists(small_bytes, max_size=4))]


# --- tests ----------------------------------------------------------------------------------
@FUZZ
@given(frames=truncated_requests())
def test_a_truncated_request_gets_a_protocol_error_reply(raw, remote, frames) -> None:
    reply = exchange(raw, frames)
    assert reply.error == "ProtocolError"
    still_serves(remote)


@FUZZ
@given(frames=random_frames())
def test_random_frames_get_one_reply_each(raw, remote, frames) -> None:
    reply = exchange(raw, frames)
    try:
        protocol.decode_request(frames)
    except protocol.ProtocolError:
        assert reply.error == "ProtocolError"
    still_serves(remote)


@FUZZ
@given(frames=compact_requests())
def test_compact_headers_of_any_content_get_an_error_reply_or_a_result(raw, remote,
                                                                       frames) -> None:
    answered_as_decoded(raw, remote, frames)


@FUZZ
@given(frames=ill_typed_requests())
def test_ill_typed_fields_get_an_error_reply_or_a_result_never_a_crash(raw, remote,
                                                                       frames) -> None:
    answered_as_decoded(raw, remote, frames)


def answered_as_decoded(raw, remote, frames) -> None:
    """The node's reply is ProtocolError where decoding the request fails, else the request's
    own reply (its id); either way the node goes on serving."""
    reply = exchange(raw, frames)
    try:
        request = protocol.decode_request(frames)
    except protocol.ProtocolError:
        assert reply.error == "ProtocolError"
    else:
        assert reply.id == request.id
    still_serves(remote)
