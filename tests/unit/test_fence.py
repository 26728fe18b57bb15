"""The write fence (layout.py: writable_until_ns): once it has passed, every write is refused
with ReadOnlyReplica by both engines and nothing stored changes; reads go on. Replication sets
it (a replica: in the past; a primary: the end of its lease)."""

from __future__ import annotations

import numpy as np
import pytest
from tests_support import FakeClock

import shmkv
from shmkv import layout as L


def _fence(c: shmkv.Cache, until_ns: int) -> None:
    c._q[L.H_WRITABLE_UNTIL >> 3] = until_ns


WRITES = {
    "set": lambda c: c.set("k", b"new"),
    "set a new key": lambda c: c.set("brand new", b"x"),
    "set with ttl": lambda c: c.set("k", b"new", ttl_s=5),
    "cas": lambda c: c.cas("k", b"new", c.get_with_version("k")[1]),
    "incr": lambda c: c.incr("n"),
    "delete": lambda c: c.delete("k"),
    "expire": lambda c: c.expire("k", 5),
    "persist": lambda c: c.persist("t"),
    "clear": lambda c: c.clear(),
    "set_array": lambda c: c.set_array("a", np.arange(3)),
    "set_many": lambda c: c.set_many({"k": b"new", "j": b"j"}),
    "drop_collection": lambda c: c.drop_collection("jobs"),
    "rename_collection": lambda c: c.rename_collection("jobs", "tasks"),
    "collection write": lambda c: c.collection("jobs").set("x", b"y"),
}


@pytest.mark.parametrize("write", WRITES, ids=str)
def test_a_write_after_the_fence_is_refused_and_changes_nothing(
        cache: shmkv.Cache, fake_clock: FakeClock, write: str) -> None:
    cache.set("k", b"old")
    cache.set("t", b"ttl", ttl_s=100)
    cache.set("n", b"41")
    cache.collection("jobs").set("x", b"x")
    _fence(cache, fake_clock() + 10**9)
    before = {k: cache.get(k) for k in cache}
    fake_clock.advance(2)
    with pytest.raises(shmkv.ReadOnlyReplica, match="fenced"):
        WRITES[write](cache)
    assert {k: cache.get(k) for k in cache} == before
    assert cache.collections() == ["jobs"] and cache.collection("jobs").get("x") == b"x"
    assert cache.ttl("t") == pytest.approx(98)


def test_writes_before_the_fence_succeed_and_reads_go_on_after_it(
        cache: shmkv.Cache, fake_clock: FakeClock) -> None:
    _fence(cache, fake_clock() + 10**9)
    cache.set("k", b"v")  # the lease still runs
    assert cache.incr("n") == 1
    fake_clock.advance(1)
    assert cache.get("k") == b"v" and "k" in cache and cache.get_many(["k"]) == {"k": b"v"}
    with cache.view("k") as mv:
        assert bytes(mv) == b"v"
    _fence(cache, 0)  # no fence: writes again
    cache.set("k", b"w")
    assert cache.get("k") == b"w"


def test_a_fenced_region_expires_nothing_itself(cache: shmkv.Cache,
                                                fake_clock: FakeClock) -> None:
    cache.set("t", b"ttl", ttl_s=1)
    _fence(cache, 1)  # a replica: fenced since 1970
    fake_clock.advance(5)
    assert cache.maintain()["expired"] == 0
    assert len(cache) == 1  # still counted; reads already treat it as gone
    assert cache.get("t") is None
