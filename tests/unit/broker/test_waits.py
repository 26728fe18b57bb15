"""LockWaits without sockets or locks: a fake attempt that says which keys are busy, and a fake
clock. Order per key, deadlines from the client's timeout, and the cap on waiting requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from shmkv.broker import protocol, waits
from shmkv.broker.protocol import Reply, Request
from shmkv.broker.waits import LockWaits, RequestJob, keys_of


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


class FakeDispatcher:
    """What RequestJob uses of dispatch.py's Dispatcher."""

    def __init__(self, region: Region) -> None:
        self.attempt = region.attempt
        self.last_lock_timeout = \
            "stripe 3 lock not acquired within 0.001 s; held by pid 4242, which is alive"


def req(request_id: int, op: str = "set", key: bytes = b"k", value: bytes = b"v",
        **fields: object) -> Request:
    payload = [key, value, key, value][:protocol.REQUEST_FRAMES[op]]
    return protocol.decode_request(protocol.encode_request(request_id, op, fields, payload))


@dataclass
class Setup:
    w: LockWaits
    region: Region
    clock: Clock
    answered: list[tuple[object, Reply, float]] = field(default_factory=list)

    def submit(self, request: Request) -> Reply | None:
        return self.w.submit(RequestJob(
            f"client{request.id}", request, self.clock(), FakeDispatcher(self.region),
            lambda *answer: self.answered.append(answer), self.w.lock_timeout_s))

    def retry(self) -> list[tuple[object, Reply, float]]:
        """The answers the retry gave."""
        before = len(self.answered)
        assert self.w.retry() == len(self.answered) - before
        return self.answered[before:]


@pytest.fixture
def setup() -> Setup:
    clock = Clock()
    return Setup(LockWaits(5.0, clock), Region(), clock)


def test_a_request_on_a_free_key_is_answered_at_once(setup) -> None:
    w, region = setup.w, setup.region
    assert setup.submit(req(1)).id == 1
    assert len(w) == 0 and w.due() == float("inf")


def test_requests_on_a_busy_key_are_served_in_arrival_order_once_it_is_free(setup) -> None:
    w, region, clock = setup.w, setup.region, setup.clock
    region.busy.add(b"k")
    assert setup.submit(req(1, key=b"k")) is None
    region.busy.clear()  # free now, but 2 arrived after 1: it must not go first
    assert setup.submit(req(2, key=b"k")) is None
    assert setup.submit(req(3, key=b"other")).id == 3  # another key is not held up
    clock.now_s = w.due()
    assert [(rid, r.id, at) for rid, r, at in setup.retry()] == \
        [("client1", 1, 100.0), ("client2", 2, 100.0)]
    assert region.applied == [3, 1, 2]


def test_a_request_of_unknown_keys_waits_for_every_earlier_one_and_holds_up_later_ones(
        setup) -> None:
    w, region, clock = setup.w, setup.region, setup.clock
    region.busy.add(b"k")
    assert keys_of(req(1, "clear")) is None
    assert setup.submit(req(1, key=b"k")) is None
    assert setup.submit(req(2, "clear")) is None
    assert setup.submit(req(3, key=b"other")) is None
    region.busy.clear()
    setup.retry()
    assert region.applied == [1, 2, 3]


def test_a_ping_is_answered_at_once_whatever_waits(setup) -> None:
    w, region = setup.w, setup.region
    region.busy.add(b"k")
    assert setup.submit(req(1, key=b"k")) is None
    assert setup.submit(req(2, "clear")) is None  # waits for every key
    assert setup.submit(req(3, "ping")).id == 3
    assert len(w) == 2


def test_a_waiting_request_is_answered_lock_timeout_at_its_share_of_the_client_timeout(
        setup) -> None:
    w, region, clock = setup.w, setup.region, setup.clock
    region.busy.add(b"k")
    assert setup.submit(req(1, timeout_ms=1000)) is None
    clock.now_s += 0.79
    assert setup.retry() == []
    clock.now_s += 0.01  # 80% of 1 s
    [(_, reply, _)] = setup.retry()
    assert reply.error == "LockTimeout"
    assert "stripe 3 lock" in reply.message and "pid 4242" in reply.message
    assert "lock_timeout_s" not in reply.message  # the engine's advice is for local handles


def test_without_a_client_timeout_the_deadline_is_the_node_lock_timeout(setup) -> None:
    w, region, clock = setup.w, setup.region, setup.clock
    region.busy.update({b"k", b"j"})
    assert setup.submit(req(1)) is None
    assert setup.submit(req(2, key=b"j", timeout_ms=60_000)) is None  # > the node waits
    clock.now_s += 4.99
    assert setup.retry() == []
    clock.now_s += 0.01
    assert [r.id for _, r, _ in setup.retry()] == [1, 2]


def test_past_max_waiting_a_request_is_answered_lock_timeout_at_once(setup) -> None:
    w, region = setup.w, setup.region
    region.busy.add(b"k")
    for i in range(waits.MAX_WAITING):
        assert setup.submit(req(i + 1)) is None
    reply = setup.submit(req(0))
    assert reply.error == "LockTimeout" and "already wait" in reply.message


def test_expire_all_answers_every_waiting_request(setup) -> None:
    w, region = setup.w, setup.region
    region.busy.add(b"k")
    setup.submit(req(1))
    setup.submit(req(2, "rename"))
    assert [r.error for _, r, _ in (w.expire_all(), setup.answered)[1]] == ["LockTimeout"] * 2
    assert len(w) == 0


def test_past_max_waiting_bytes_a_request_is_answered_lock_timeout_at_once(setup) -> None:
    w, region, clock = setup.w, setup.region, setup.clock
    region.busy.add(b"k")
    half = bytes(waits.MAX_WAITING_BYTES // 2 - 1)  # with its 1-byte key
    assert setup.submit(req(1, "set", key=b"k", value=half)) is None
    assert setup.submit(req(2, "set", key=b"k", value=half)) is None
    reply = setup.submit(req(3, "set", key=b"k", value=b"x"))
    assert reply.error == "LockTimeout" and f"of {waits.MAX_WAITING_BYTES} bytes" in reply.message
    region.busy.clear()
    setup.retry()  # both done: their bytes are free again
    region.busy.add(b"k")
    assert setup.submit(req(4, "set", key=b"k", value=half)) is None


@dataclass(eq=False)
class OtherDoorJob:
    """A job of another door (the Redis door's shape): its own keys, refusal and answers."""

    keys: frozenset[tuple[str, bytes]] | None
    region: Region
    received_s: float
    op: str = "SET"
    payload_bytes: int = 10
    budget_s: float | None = None
    last_error: str = ""
    answers: list[object] = field(default_factory=list)

    def attempt(self) -> tuple[str] | None:
        if any(key in self.region.busy for _, key in self.keys or ()):
            return None
        return ("OK",)

    def refuse(self, message: str, timed_out: bool) -> tuple[str]:
        return ("LOCKTIMEOUT " + message,)

    def answer(self, reply: object) -> None:
        self.answers.append(reply)


def test_jobs_of_both_doors_share_one_order_per_key(setup) -> None:
    w, region, clock = setup.w, setup.region, setup.clock
    region.busy.add(b"k")
    assert setup.submit(req(1, key=b"k")) is None  # a ZeroMQ request parks
    region.busy.clear()
    other = OtherDoorJob(frozenset({("", b"k")}), region, clock())
    assert w.submit(other) is None  # free now, but behind the request on its key
    assert w.submit(OtherDoorJob(waits.NO_KEYS, region, clock())) == ("OK",)  # waits for none
    clock.now_s = w.due()
    assert w.retry() == 2
    assert [r.id for _, r, _ in setup.answered] == [1]
    assert other.answers == [("OK",)]


def test_another_door_s_job_is_refused_in_its_own_words_at_the_node_lock_timeout(setup) -> None:
    w, region, clock = setup.w, setup.region, setup.clock
    region.busy.add(b"k")
    job = OtherDoorJob(frozenset({("", b"k")}), region, clock())
    job.last_error = "stripe 7 lock not acquired within 0.001 s; held by pid 99, which is alive"
    assert w.submit(job) is None
    clock.now_s += 5.0
    w.retry()
    [(reply,)] = job.answers
    assert reply.startswith("LOCKTIMEOUT SET: the stripe 7 lock it needs stayed busy for 5.00 s")
    assert "held by pid 99" in reply


def test_at_a_stop_a_parked_request_whose_lock_is_free_now_is_done_not_refused(setup) -> None:
    w, region = setup.w, setup.region
    region.busy.update({b"k", b"j"})
    assert setup.submit(req(1, key=b"k")) is None
    assert setup.submit(req(2, key=b"j")) is None
    assert setup.submit(req(3, key=b"k")) is None
    region.busy.discard(b"j")  # freed after the last retry, before the stop
    assert w.expire_all() == 3
    assert [(r.id, r.error) for _, r, _ in setup.answered] == \
        [(1, "LockTimeout"), (2, None), (3, "LockTimeout")]  # 3 stays behind 1: not tried
    assert region.applied == [2] and len(w) == 0
