"""Changing a running node's role by hand, on loopback (broker/roles.py): `shmkv promote` and
`shmkv replicaof URL|none`, and a RemoteCache given every node's endpoint, which follows the
primary and never sends a request that is not safe to repeat twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq
from node_process import Node, running_node
from tests_support import new_region_name

import shmkv
from shmkv import layout as L
from shmkv.broker.roles import FOLLOW_TIMEOUT_S
from shmkv.clients import RemoteCache

CONVERGE_S = 60.0


def cli(*args: str) -> dict[str, Any]:
    """Run `shmkv ARGS` and return its JSON output (failing the test on an error)."""
    done = subprocess.run([sys.executable, "-m", "shmkv.cli", *args], capture_output=True,
                          text=True, cwd=tempfile.gettempdir(), timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def eventually(check: Any, what: str, timeout_s: float = CONVERGE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def events(node: Node, name: str, timeout_s: float = CONVERGE_S) -> dict[str, Any]:
    """The next event called name on the node's stdout (others are skipped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = node.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        found = json.loads(line)
        if found.get("event") == name:
            return found  # type: ignore[no-any-return]
    pytest.fail(f"no {name} event from the node")


@contextmanager
def pair() -> Iterator[tuple[Node, Node, shmkv.Cache, shmkv.Cache]]:
    """A primary node and its replica (ready: first sync done), each with a local handle on
    its region. Both serve replicas (repl_bind), so that either may become the primary."""
    names = new_region_name(), new_region_name()
    with running_node(names[0], "--repl-bind", "tcp://127.0.0.1:*") as primary, \
            running_node(names[1], "--repl-bind", "tcp://127.0.0.1:*", "--replica-of",
                         primary.ready["replication"]["endpoint"]) as replica:
        a, b = shmkv.Cache.open(names[0]), shmkv.Cache.open(names[1])
        try:
            yield primary, replica, a, b
        finally:
            a.close()
            b.close()


def test_promote_makes_a_replica_node_a_primary_with_a_new_history() -> None:
    with pair() as (primary, replica, a, b):
        a.set("k", b"from the primary")
        eventually(lambda: b.get("k") == b"from the primary", "the replica has k")
        old_id = bytes(b._region.mm[L.H_REPL_ID:L.H_REPL_ID + 40])
        with pytest.raises(shmkv.ReadOnlyReplica):
            b.set("k", b"refused")
        state = cli("promote", "--node", replica.endpoint)
        assert state["role"] == "primary" and len(state["repl_id"]) == 40
        assert bytes(b._region.mm[L.H_REPL_ID2:L.H_REPL_ID2 + 40]) == old_id
        assert bytes(b._region.mm[L.H_REPL_ID:L.H_REPL_ID + 40]).decode() == state["repl_id"]
        b.set("local", b"a local write")  # the fence is lifted for local processes too
        with RemoteCache(replica.endpoint) as remote:
            remote.set("k", b"from its client")
            assert remote.ping()["role"]["role"] == "primary"
        assert b.get("k") == b"from its client" and a.get("k") == b"from the primary"


def test_replicaof_demotes_a_primary_which_discards_what_its_new_primary_never_had() -> None:
    with pair() as (primary, replica, a, b):
        a.set("shared", b"1")
        eventually(lambda: b.get("shared") == b"1", "the replica has shared")
        promoted = cli("promote", "--node", replica.endpoint)
        a.set("only on a", b"lost in the switch")  # two primaries, by hand
        b.set("shared", b"2")
        state = cli("replicaof", promoted["endpoint"], "--node", primary.endpoint)
        assert state == {"role": "replica", "primary": promoted["endpoint"]}
        with pytest.raises(shmkv.ReadOnlyReplica, match=promoted["endpoint"]):
            a.set("x", b"refused at once")
        eventually(lambda: a.get("shared") == b"2" and a.get("only on a") is None,
                   "the demoted node copies its new primary")
        discarded = events(primary, "discarded")
        assert discarded["count"] == 2  # "only on a", and "shared" at a's version
        assert cli("replicaof", "none", "--node", primary.endpoint)["role"] == "primary"
        a.set("x", b"writable again")
        assert a.get("x") == b"writable again"


def test_replicaof_without_a_primary_is_refused_and_changes_nothing() -> None:
    with pair() as (primary, replica, a, b):
        with RemoteCache(replica.endpoint) as remote:
            with pytest.raises(ValueError, match="needs a primary"):
                remote.replicaof("")
        assert b.get("k") is None  # nothing changed: still a replica
        with pytest.raises(shmkv.ReadOnlyReplica):
            b.set("k", b"v")


def test_a_client_of_several_nodes_follows_the_primary_across_a_switchover() -> None:
    with pair() as (primary, replica, a, b):
        with RemoteCache([replica.endpoint, primary.endpoint], timeout_s=1.0) as remote:
            remote.set("k", b"1")  # went to the primary, though the replica is listed first
            assert a.get("k") == b"1"
            promoted = cli("promote", "--node", replica.endpoint)
            cli("replicaof", promoted["endpoint"], "--node", primary.endpoint)
            remote.set("k", b"2")  # the old primary refuses it: sent to the new one
            assert b.get("k") == b"2"
            assert remote.endpoint == replica.endpoint
            assert remote.incr("n") == 1


def test_a_request_not_safe_to_repeat_raises_outcome_unknown_when_the_primary_stops_answering(
) -> None:
    with pair() as (primary, replica, a, b):
        with RemoteCache([primary.endpoint, replica.endpoint], timeout_s=0.5,
                         retries=1) as remote:
            assert remote.incr("n") == 1
            primary.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(shmkv.OutcomeUnknown, match="incr"):
                    remote.incr("n")
                with pytest.raises(shmkv.RemoteUnavailable, match="no primary"):
                    remote.get("n")  # safe to repeat: retried, but nobody is primary
            finally:
                primary.process.send_signal(signal.SIGCONT)
            # the primary answers again: the incr was applied once or not at all, never twice
            assert remote.get("n") in (b"1", b"2")


def test_replicaof_a_primary_that_never_answers_never_blocks_the_node_and_gives_up() -> None:
    with pair() as (primary, replica, a, b):
        a.set("k", b"v")
        # a ROUTER that accepts the connection and never reads: hello waits there unanswered
        silent = zmq.Context.instance().socket(zmq.ROUTER)
        silent.setsockopt(zmq.LINGER, 0)
        try:
            nowhere = f"tcp://127.0.0.1:{silent.bind_to_random_port('tcp://127.0.0.1')}"
            with RemoteCache(primary.endpoint, timeout_s=30) as remote:
                slowest_s = 0.0

                def timed(call: Any) -> Any:
                    nonlocal slowest_s
                    t0 = time.monotonic()
                    found = call()
                    slowest_s = max(slowest_s, time.monotonic() - t0)
                    return found

                switched: list[object] = []

                def switch() -> None:  # its own client: the test's keeps asking meanwhile
                    with RemoteCache(primary.endpoint, timeout_s=30) as other:
                        try:
                            switched.append(other.replicaof(nowhere))
                        except shmkv.ShmKVError as exc:
                            switched.append(exc)

                started = time.monotonic()
                thread = threading.Thread(target=switch)
                thread.start()
                try:
                    while (role := timed(remote.ping)["role"])["role"] != "candidate":
                        assert role["role"] in ("primary", "replica")
                        assert timed(lambda: remote.get("k")) == b"v"
                        if role["role"] == "replica":
                            assert role["primary"] == nowhere
                            with pytest.raises(shmkv.ReadOnlyReplica):
                                timed(lambda: remote.set("k", b"refused"))
                        assert time.monotonic() - started < FOLLOW_TIMEOUT_S + 10, \
                            "never gave up"
                        time.sleep(0.05)
                finally:
                    thread.join()
                assert slowest_s < 0.5, f"a request waited {slowest_s:.2f} s for the node"
                assert switched == [{"role": "replica", "primary": nowhere}]  # at once
                assert time.monotonic() - started >= FOLLOW_TIMEOUT_S - 1
                assert role["role"] == "candidate" and role["primary"] == ""
                assert "did not answer" in role["follow_failed"]
                failed = events(primary, "follow_failed")
                assert failed["primary"] == nowhere and "did not answer" in failed["message"]
                with pytest.raises(shmkv.ReadOnlyReplica):  # fenced, following nobody
                    remote.set("k", b"refused")
                # then toward a real primary: it converges
                with RemoteCache(replica.endpoint) as other:
                    promoted = other.promote()
                b.set("after", b"the promotion")
                remote.replicaof(promoted["endpoint"])
                eventually(lambda: a.get("after") == b"the promotion", "the node follows")
                assert "follow_failed" not in remote.ping()["role"]
        finally:
            silent.close()


def test_replicaof_a_primary_that_cannot_be_copied_is_given_up_at_once() -> None:
    with pair() as (primary, _, a, _):
        a.set("k", b"v")
        other = new_region_name()
        shmkv.Cache.create(other, 8 << 20).close()  # another size than the node's region
        with running_node(other, "--repl-bind", "tcp://127.0.0.1:*") as unlike, \
                RemoteCache(primary.endpoint, timeout_s=30) as remote:
            endpoint = unlike.ready["replication"]["endpoint"]
            assert remote.replicaof(endpoint)["role"] == "replica"
            failed = events(primary, "follow_failed", timeout_s=FOLLOW_TIMEOUT_S / 2)
            assert "not a copy" in failed["message"]
            role = remote.ping()["role"]
            assert role["role"] == "candidate" and "not a copy" in role["follow_failed"]
            assert a.get("k") == b"v" and remote.get("k") == b"v"  # its region as it was
