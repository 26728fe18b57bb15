"""clients/primary.py without sockets: which node a RemoteCache of several nodes sends to,
and what it sends again when the primary stops answering or is demoted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

import shmkv
from shmkv.clients.primary import Primary


@dataclass
class FakeReply:
    result: Any


@dataclass
class FakeLink:
    """A node: its role, and what each request does (a reply, or an exception to raise)."""

    endpoint: str
    role: str = "replica"
    epoch: int = 1
    failing: type[Exception] | None = None
    sent: list[str] = field(default_factory=list)
    timeout_s: float = 0.2
    closed: bool = False

    def call(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = ()) -> FakeReply:
        if op == "ping":
            if self.failing is shmkv.RemoteUnavailable:
                raise shmkv.RemoteUnavailable("down")
            return FakeReply({"role": {"role": self.role, "epoch": self.epoch}})
        self.sent.append(op)
        if self.failing is not None:
            raise self.failing(f"{self.endpoint} failed")
        return FakeReply(f"{op} by {self.endpoint}")

    def close(self) -> None:
        self.closed = True


def cluster(*links: FakeLink, retries: int = 1) -> Primary:
    found = {link.endpoint: link for link in links}
    return Primary(list(found), found.__getitem__, retries)


def test_requests_go_to_the_node_that_says_it_is_the_primary() -> None:
    a, b = FakeLink("a"), FakeLink("b", role="primary")
    assert cluster(a, b).call("incr", {}).result == "incr by b"
    assert a.sent == []


def test_the_primary_of_the_highest_epoch_wins_when_two_say_they_are() -> None:
    old, new = FakeLink("old", role="primary", epoch=3), FakeLink("new", role="primary", epoch=4)
    assert cluster(old, new).call("set", {}).result == "set by new"


def test_a_request_not_safe_to_repeat_is_never_sent_twice_when_no_reply_comes() -> None:
    a, b = FakeLink("a", role="primary", failing=shmkv.RemoteUnavailable), FakeLink("b")
    link = cluster(a, b)
    link.current = a  # found before it stopped answering
    with pytest.raises(shmkv.OutcomeUnknown, match="incr got no reply from the primary a"):
        link.call("incr", {})
    assert a.sent == ["incr"] and b.sent == []


def test_a_request_safe_to_repeat_is_sent_again_to_the_new_primary() -> None:
    a, b = FakeLink("a", role="primary", failing=shmkv.RemoteUnavailable), FakeLink("b")
    link = cluster(a, b)
    link.current = a
    a.role, b.role = "replica", "primary"  # the failover happened meanwhile
    assert link.call("get", {}).result == "get by b"
    assert a.sent == ["get"] and b.sent == ["get"]


def test_a_write_a_demoted_node_refused_is_sent_to_the_new_primary_whatever_it_is() -> None:
    a, b = FakeLink("a", role="primary", failing=shmkv.ReadOnlyReplica), FakeLink("b")
    link = cluster(a, b)
    link.current = a
    a.role, b.role = "replica", "primary"
    assert link.call("incr", {}).result == "incr by b"  # refused means not applied


def test_no_primary_within_the_call_time_raises_remote_unavailable_naming_the_nodes() -> None:
    with pytest.raises(shmkv.RemoteUnavailable, match="no primary among a, b for get"):
        cluster(FakeLink("a"), FakeLink("b", failing=shmkv.RemoteUnavailable)).call("get", {})


def test_a_list_without_endpoints_is_refused() -> None:
    with pytest.raises(ValueError, match="list of endpoints"):
        Primary([], FakeLink, 1)
