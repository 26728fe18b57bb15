"""LockWaits without sockets or locks: a fake attempt that says which keys are busy, and a fake
clock. Order per key, deadlines from the client's timeout, and the cap on waiting requests."""

from __future__ import annotations

import pytest

from shmkv.broker import protocol, waits
from shmkv.broker.protocol import Reply, Request
from shmkv.broker.waits import LockWaits, keys_of


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class Region:
    """attempt(): busy keys make a request wait; others are applied, in the order tried."""

    def __init__(self) -> None:
        self.busy: set[bytes] = set()
        self.applied: list[int] = []

    def attempt(self, request: Request) -> Reply | None:
        if any(bytes(f) in self.busy for f in request.frames[:1]):
            return None
        self.applied.append(request.id)
        return Reply(request.id, op=request.op)

    @staticmethod
    def last_error() -> str:
        return "stripe 3 lock not acquired within 0.001 s; held by pid 4242, which is alive"


def req(request_id: int, op: str = "set", key: bytes = b"k", value: bytes = b"v",
        **fields: object) -> Request:
    payload = [key, value, key, value][:protocol.REQUEST_FRAMES[op]]
    return protocol.decode_request(protocol.encode_request(request_id, op, fields, payload))


@pytest.fixture
def setup() -> tuple[LockWaits, Region, Clock]:
    clock = Clock()
    return LockWaits(5.0, clock), Region(), clock


def submit(w: LockWaits, region: Region, request: Request) -> Reply | None:
    return w.submit(f"client{request.id}", request, region.attempt, region.last_error)


def test_a_request_on_a_free_key_is_answered_at_once(setup) -> None:
    w, region, _ = setup
    assert submit(w, region, req(1)).id == 1
    assert len(w) == 0 and w.due() == float("inf")


def test_requests_on_a_busy_key_are_served_in_arrival_order_once_it_is_free(setup) -> None:
    w, region, clock = setup
    region.busy.add(b"k")
    assert submit(w, region, req(1, key=b"k")) is None
    region.busy.clear()  # free now, but 2 arrived after 1: it must not go first
    assert submit(w, region, req(2, key=b"k")) is None
    assert submit(w, region, req(3, key=b"other")).id == 3  # another key is not held up
    clock.now_s = w.due()
    assert [(rid, r.id, at) for rid, r, at in w.retry(region.attempt, region.last_error)] == \
        [("client1", 1, 100.0), ("client2", 2, 100.0)]
    assert region.applied == [3, 1, 2]


def test_a_request_of_unknown_keys_waits_for_every_earlier_one_and_holds_up_later_ones(
        setup) -> None:
    w, region, clock = setup
    region.busy.add(b"k")
    assert keys_of(req(1, "clear")) is None
    assert submit(w, region, req(1, key=b"k")) is None
    assert submit(w, region, req(2, "clear")) is None
    assert submit(w, region, req(3, key=b"other")) is None
    region.busy.clear()
    w.retry(region.attempt, region.last_error)
    assert region.applied == [1, 2, 3]


def test_a_ping_is_answered_at_once_whatever_waits(setup) -> None:
    w, region, _ = setup
    region.busy.add(b"k")
    assert submit(w, region, req(1, key=b"k")) is None
    assert submit(w, region, req(2, "clear")) is None  # waits for every key
    assert submit(w, region, req(3, "ping")).id == 3
    assert len(w) == 2


def test_a_waiting_request_is_answered_lock_timeout_at_its_share_of_the_client_timeout(
        setup) -> None:
    w, region, clock = setup
    region.busy.add(b"k")
    assert submit(w, region, req(1, timeout_ms=1000)) is None
    clock.now_s += 0.79
    assert w.retry(region.attempt, region.last_error) == []
    clock.now_s += 0.01  # 80% of 1 s
    [(_, reply, _)] = w.retry(region.attempt, region.last_error)
    assert reply.error == "LockTimeout"
    assert "stripe 3 lock" in reply.message and "pid 4242" in reply.message
    assert "lock_timeout_s" not in reply.message  # the engine's advice is for local handles


def test_without_a_client_timeout_the_deadline_is_the_node_lock_timeout(setup) -> None:
    w, region, clock = setup
    region.busy.update({b"k", b"j"})
    assert submit(w, region, req(1)) is None
    assert submit(w, region, req(2, key=b"j", timeout_ms=60_000)) is None  # > the node waits
    clock.now_s += 4.99
    assert w.retry(region.attempt, region.last_error) == []
    clock.now_s += 0.01
    assert [r.id for _, r, _ in w.retry(region.attempt, region.last_error)] == [1, 2]


def test_past_max_waiting_a_request_is_answered_lock_timeout_at_once(setup) -> None:
    w, region, _ = setup
    region.busy.add(b"k")
    for i in range(waits.MAX_WAITING):
        assert submit(w, region, req(i + 1)) is None
    reply = submit(w, region, req(0))
    assert reply.error == "LockTimeout" and "already wait" in reply.message


def test_expire_all_answers_every_waiting_request(setup) -> None:
    w, region, _ = setup
    region.busy.add(b"k")
    submit(w, region, req(1))
    submit(w, region, req(2, "rename"))
    assert [r.error for _, r, _ in w.expire_all(region.last_error())] == ["LockTimeout"] * 2
    assert len(w) == 0


def test_past_max_waiting_bytes_a_request_is_answered_lock_timeout_at_once(setup) -> None:
    w, region, clock = setup
    region.busy.add(b"k")
    half = bytes(waits.MAX_WAITING_BYTES // 2 - 1)  # with its 1-byte key
    assert submit(w, region, req(1, "set", key=b"k", value=half)) is None
    assert submit(w, region, req(2, "set", key=b"k", value=half)) is None
    reply = submit(w, region, req(3, "set", key=b"k", value=b"x"))
    assert reply.error == "LockTimeout" and f"of {waits.MAX_WAITING_BYTES} bytes" in reply.message
    region.busy.clear()
    w.retry(region.attempt, region.last_error)  # both done: their bytes are free again
    region.busy.add(b"k")
    assert submit(w, region, req(4, "set", key=b"k", value=half)) is None
