"""exists, delete_many and scan through a live node: RemoteCache's answers against the local
Cache's on the same region, in the default collection and a named one, alone and pipelined;
scan_iter's promise (a key present throughout is returned at least once) while another
process writes and deletes other keys; after a timeout, delete_many is not sent again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fake_node import FakeNode
from node_process import running_node
from shmkv.broker import protocol
from shmkv.clients import RemoteCache
from shmkv.clients import remote as remote_module
from tests_support import until

import shmkv

WAIT_S = 10

# A local writer that never stops: it writes a new key, deletes the one written 100 before
# and notes how far it got, until it is stopped.
CHURN = """
import sys, shmkv
with shmkv.Cache.open(sys.argv[1]) as c:
    i = 0
    while True:
        c.set(b"churn:%d" % i, b"x")
        if i >= 100:
            c.delete(b"churn:%d" % (i - 100))
        c.set(b"progress", b"%d" % i)
        i += 1
"""


@contextmanager
def churning(region: str) -> Iterator[Callable[[], int]]:
    """A process writing and deleting keys of region; yields how far it got."""
    process = subprocess.Popen([sys.executable, "-c", CHURN, region])
    try:
        with shmkv.Cache.open(region) as local:
            def progress() -> int:
                assert process.poll() is None, "the writer process died"
                return int(local.get(b"progress") or -1)
            until(lambda: progress() >= 0, "the writer started", WAIT_S)
            yield progress
    finally:
        process.kill()
        process.wait()


@pytest.mark.multiprocess
@pytest.mark.parametrize("coll", ["", "users"])
def test_exists_and_delete_many_answer_what_the_local_cache_sees(region_name, coll) -> None:
    present = [f"k{i}" for i in range(0, 40, 2)]
    asked = [f"k{i}" for i in range(40)] + ["k0", "nope"]  # k0 twice, some absent
    with running_node(region_name) as node, shmkv.Cache.open(region_name) as root, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        remote = remote.collection(coll) if coll else remote
        local = root.collection(coll) if coll else root
        local.set("other", b"stays")
        for key in present:
            local.set(key, b"v")
        assert remote.exists(*asked) == sum(key in local for key in asked) == 21
        assert remote.exists() == 0
        expected = len({key for key in asked if key in local})
        assert remote.delete_many(asked) == expected == 20
        assert not any(key in local for key in asked)
        assert local.keys() == [b"other"]
        if coll:  # the default collection was not touched
            assert "other" not in root


@pytest.mark.multiprocess
def test_exists_and_delete_many_of_more_than_a_batch_go_as_several_and_sum_up(
        region_name, monkeypatch) -> None:
    monkeypatch.setattr(remote_module, "BATCH_KEYS", 100)
    keys = [b"k%d" % i for i in range(250)]
    with running_node(region_name) as node, shmkv.Cache.open(region_name) as local, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        local.set_many(dict.fromkeys(keys[::2], b"v"))
        assert remote.exists(*keys, b"k0") == 126
        assert remote.delete_many(keys) == 125 and len(local) == 0


@pytest.mark.multiprocess
def test_scan_iter_returns_each_of_5000_keys_exactly_once_while_nothing_changes(
        region_name) -> None:
    with running_node(region_name) as node, shmkv.Cache.open(region_name) as local, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        local.set_many({b"key:%d" % i: b"v" for i in range(5000)})
        found = list(remote.scan_iter())
        assert len(found) == 5000 and sorted(found) == sorted(local.keys())
        assert sorted(remote.scan_iter(match="key:1*", count=500)) == sorted(
            k for k in local.keys() if k.startswith(b"key:1"))
        cursor, page = remote.scan(0, count=10)
        assert cursor != 0 and len(page) >= 10


@pytest.mark.multiprocess
def test_scan_iter_returns_every_key_present_throughout_while_others_churn(
        region_name) -> None:
    stable = {b"stable:%d" % i for i in range(5000)}
    with running_node(region_name) as node, shmkv.Cache.open(region_name) as local, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        local.set_many(dict.fromkeys(stable, b"v"))
        with churning(region_name) as progress:
            found: set[bytes] = set()
            for n, key in enumerate(remote.scan_iter(count=50)):
                found.add(key)
                if n % 100 == 0:  # the scan's next steps come after more writes and deletes
                    seen = progress()
                    until(lambda: progress() > seen + 20, "the writer went on", WAIT_S)
            churned = progress()
        assert stable <= found
        assert churned > 1000  # keys were written and deleted throughout the scan


@pytest.mark.multiprocess
def test_the_pipelined_forms_answer_as_the_calls_do(region_name) -> None:
    with running_node(region_name) as node, shmkv.Cache.open(region_name) as local, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        users = remote.collection("users")
        local_users = local.collection("users")
        local_users.set_many({b"u%d" % i: b"v" for i in range(300)})
        local.set("root-key", b"v")
        with users.pipeline() as p:
            there = p.exists("u1", "u2", "nope", "root-key")
            first = p.scan(0, count=100)
            gone = p.delete_many(["u1", "u2", "nope"])
            after = p.exists("u1", "u2")
        assert (there.result(), gone.result(), after.result()) == (2, 2, 0)
        cursor, page = first.result()
        assert len(page) >= 100 and set(page) <= set(local_users.keys()) | {b"u1", b"u2"}
        rest = []
        with users.pipeline() as p:
            while cursor:  # one step at a time: each cursor comes from the reply before
                cursor, more = p.scan(cursor, count=100).result()
                rest.extend(more)
        deleted = {b"u1", b"u2"}  # after the first step: there or not, whichever stripe
        assert sorted(k for k in page + rest if k not in deleted) == sorted(
            {b"u%d" % i for i in range(300)} - deleted)
        assert "root-key" in local


@pytest.mark.multiprocess
def test_bad_scan_arguments_are_refused_before_anything_is_sent(region_name) -> None:
    with running_node(region_name) as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
        with pytest.raises(ValueError, match="cursor"):
            remote.scan(-1)
        with pytest.raises(ValueError, match="count"):
            remote.scan_iter(count=0)
        with pytest.raises(TypeError, match="pattern"):
            remote.scan(0, match=3)  # type: ignore[arg-type]
        assert remote.scan(0, match="none*") == (remote.scan(0)[0], [])


# --- a fake node that does not answer -------------------------------------------------------
def test_delete_many_is_not_sent_again_after_a_timeout_but_exists_and_scan_are() -> None:
    answer = [lambda r: [protocol.Reply(r.id, 1)],
              lambda r: [protocol.Reply(r.id, 0, protocol.pack([b"k"]))]]
    with FakeNode([None, None, answer[0], None, answer[1]]) as node, \
            RemoteCache(node.endpoint, timeout_s=0.2, retries=1) as remote:
        with pytest.raises(shmkv.OutcomeUnknown, match="delete_many.*not sent again"):
            remote.delete_many(["k"])
        assert remote.exists("k") == 1
        assert remote.scan(0) == (0, [b"k"])
    assert [op for _, _, op in node.received] == ["delete_many", "exists", "exists", "scan",
                                                  "scan"]
