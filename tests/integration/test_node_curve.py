"""CurveZMQ through a real node: a client whose key the node allows reads, writes and receives
published messages; a client with another key, the wrong node key or no CURVE at all gets a
RemoteUnavailable naming authentication within its timeout, and nothing it sent is applied; the
node refuses to listen beyond loopback without CURVE, and to use a secret key others may read;
SIGHUP reads the allow-list again."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from node_process import failed_start, running_node

import shmkv
from shmkv.broker.auth import create_key_files
from shmkv.cli import EXIT_USAGE
from shmkv.clients import RemoteCache, Subscriber
from shmkv.clients.subscribe import Message

WAIT_S = 10.0
REFUSED_TIMEOUT_S = 1.5  # ample for a handshake on a loaded machine


@dataclass
class Keys:
    node_secret: Path
    node_public: Path
    allowed: Path  # a client's secret key file, its public one in the allow-list
    other: Path  # a client's secret key file, not in the allow-list
    allow_dir: Path

    def node_options(self) -> tuple[str, ...]:
        return ("--curve-secret-key", str(self.node_secret), "--curve-allow", str(self.allow_dir))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    allow_dir = tmp_path / "allow"
    allow_dir.mkdir()
    node_public, node_secret = create_key_files(tmp_path / "node")
    create_key_files(allow_dir / "app")
    create_key_files(tmp_path / "stranger")
    return Keys(node_secret, node_public, allow_dir / "app.key_secret",
                tmp_path / "stranger.key_secret", allow_dir)


def client_options(keys: Keys, who: str) -> dict[str, Any]:
    """The CURVE arguments of a client: allowed, not allowed, wrong node key, or none."""
    return {
        "allowed": {"curve_server_key": keys.node_public, "curve_client_cert": keys.allowed},
        "not allowed": {"curve_server_key": keys.node_public, "curve_client_cert": keys.other},
        "wrong node key": {"curve_server_key": keys.other.with_suffix(".key"),
                           "curve_client_cert": keys.allowed},
        "no curve": {},
    }[who]


def first_message(sub: Subscriber, remote: RemoteCache, channel: str) -> Message:
    """Publish on channel until the subscriber receives one (its subscription takes effect
    some time after the call: ZeroMQ's slow joiner)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        remote.publish(channel, b"hello")
        message = sub.get_message(0.05)
        if message is not None:
            return message
    raise AssertionError("the subscriber received nothing")


def test_a_client_with_an_allowed_key_reads_writes_and_receives_messages(
        region_name: str, keys: Keys) -> None:
    with running_node(region_name, *keys.node_options()) as node, \
            RemoteCache(node.endpoint, **client_options(keys, "allowed")) as remote, \
            Subscriber(node.ready["pub_endpoint"], **client_options(keys, "allowed")) as sub:
        remote.set("user:1", b"Ada")
        assert remote.get("user:1") == b"Ada"
        sub.subscribe("news")
        message = first_message(sub, remote, "news")
        assert (message.channel, message.data) == (b"news", b"hello")


@pytest.mark.parametrize("who", ["not allowed", "wrong node key", "no curve"])
def test_a_client_the_node_does_not_admit_gets_an_authentication_error_and_changes_nothing(
        region_name: str, keys: Keys, who: str) -> None:
    with running_node(region_name, *keys.node_options()) as node, \
            RemoteCache(node.endpoint, **client_options(keys, "allowed")) as admitted:
        admitted.set("kept", b"before")
        with RemoteCache(node.endpoint, timeout_s=REFUSED_TIMEOUT_S, retries=0,
                         **client_options(keys, who)) as refused:
            started = time.monotonic()
            with pytest.raises(shmkv.RemoteUnavailable, match="authentication"):
                refused.set("kept", b"overwritten")
            assert time.monotonic() - started < REFUSED_TIMEOUT_S + 1
            with pytest.raises(shmkv.RemoteUnavailable, match="authentication"):
                refused.clear()
        with Subscriber(node.ready["pub_endpoint"], **client_options(keys, who)) as sub:
            sub.subscribe("news")
            with pytest.raises(shmkv.RemoteUnavailable, match="authentication"):
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    admitted.publish("news", b"secret")
                    assert sub.get_message(0.05) is None
        assert admitted.get("kept") == b"before"
        assert len(admitted) == 1


# A client without CURVE keys: its handshake with a CURVE node fails on the security, after
# which libzmq gives the connection up for good; then its first call.
_GIVEN_UP_CALL = """
import sys, time
import zmq
from shmkv.clients import RemoteCache
with RemoteCache(sys.argv[1], timeout_s=float(sys.argv[2]), retries=0) as refused:
    dealer = refused._link._socket
    dealer.poll(10_000, zmq.POLLOUT)  # a connection, not yet shaken hands
    deadline = time.monotonic() + 10
    while dealer.getsockopt(zmq.EVENTS) & zmq.POLLOUT and time.monotonic() < deadline:
        time.sleep(0.01)  # until libzmq has given it up
    try:
        refused.get("k")
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def test_a_call_made_after_libzmq_gave_up_the_connection_gets_the_error_in_time(
        region_name: str, keys: Keys) -> None:
    """A send with no connection waits for one: a call made once libzmq has given its
    connection up must still end within its timeout (in a process of its own: a call that
    waits for ever is killed)."""
    with running_node(region_name, *keys.node_options()) as node:
        done = subprocess.run([sys.executable, "-c", _GIVEN_UP_CALL, node.endpoint,
                               str(REFUSED_TIMEOUT_S)], capture_output=True, text=True,
                              timeout=3 * REFUSED_TIMEOUT_S + 2 * WAIT_S,
                              cwd=tempfile.gettempdir())  # not a checkout's ./shmkv
    assert done.stdout.startswith("RemoteUnavailable") and "authentication" in done.stdout, \
        (done.stdout, done.stderr)


def test_the_node_serves_all_interfaces_when_curve_protects_them(
        region_name: str, keys: Keys) -> None:
    with running_node(region_name, "--allow-remote", "--bind", "tcp://0.0.0.0:*",
                      *keys.node_options()) as node:
        port = node.endpoint.rsplit(":", 1)[1]
        with RemoteCache(f"tcp://127.0.0.1:{port}", **client_options(keys, "allowed")) as remote:
            remote.set("k", b"v")
            assert remote.get("k") == b"v"


def refusal(region: str, *options: str) -> dict[str, Any]:
    """Start a node that must refuse to start: its JSON error (exit status 2)."""
    code, out, err = failed_start(region, *options)
    assert code == EXIT_USAGE, (out, err)
    assert out == ""
    return json.loads(err)  # type: ignore[no-any-return]


def test_the_node_refuses_allow_remote_on_all_interfaces_without_curve(
        region_name: str) -> None:
    error = refusal(region_name, "--allow-remote", "--bind", "tcp://0.0.0.0:*")
    assert error["error"] == "ConfigError"
    assert "curve_secret_key" in error["message"] and "'bind'" in error["message"]
    with pytest.raises(shmkv.RegionNotFound):  # refused before anything was created
        shmkv.Cache.open(region_name)


def test_the_node_refuses_a_secret_key_that_others_may_read(region_name: str,
                                                            keys: Keys) -> None:
    keys.node_secret.chmod(0o644)
    error = refusal(region_name, *keys.node_options())
    assert error["error"] == "ConfigError" and "chmod 600" in error["message"]



# --- SIGHUP: the allow-list read again ------------------------------------------------------
def reloaded(node: Any) -> dict[str, Any]:
    """Send SIGHUP and return the node's next event (the reload's)."""
    node.process.send_signal(signal.SIGHUP)
    line = node.process.stdout.readline()
    assert line, "the node exited instead of reloading"
    return json.loads(line)  # type: ignore[no-any-return]


def test_sighup_admits_a_key_added_to_the_allow_list_and_refuses_one_removed(
        region_name: str, keys: Keys, tmp_path: Path) -> None:
    newcomer_public, newcomer = create_key_files(tmp_path / "newcomer")
    newcomer_options = {"curve_server_key": keys.node_public, "curve_client_cert": newcomer}
    with running_node(region_name, *keys.node_options()) as node, \
            RemoteCache(node.endpoint, **client_options(keys, "allowed")) as open_before:
        open_before.set("k", b"v")
        with RemoteCache(node.endpoint, timeout_s=REFUSED_TIMEOUT_S, retries=0,
                         **newcomer_options) as refused:
            with pytest.raises(shmkv.RemoteUnavailable, match="authentication"):
                refused.get("k")

        shutil.copy(newcomer_public, keys.allow_dir / "newcomer.key")
        assert reloaded(node) == {"event": "reload", "curve": True,
                                  "directory": str(keys.allow_dir), "keys": 2}
        with RemoteCache(node.endpoint, timeout_s=WAIT_S, **newcomer_options) as admitted:
            assert admitted.get("k") == b"v"

        (keys.allow_dir / "app.key").unlink()
        assert reloaded(node)["keys"] == 1
        with RemoteCache(node.endpoint, timeout_s=REFUSED_TIMEOUT_S, retries=0,
                         **client_options(keys, "allowed")) as revoked:
            with pytest.raises(shmkv.RemoteUnavailable, match="authentication"):
                revoked.get("k")
        # ZAP runs only in the handshake: a connection made before the removal stays open
        assert open_before.get("k") == b"v"


def test_sighup_keeps_the_allow_list_when_the_directory_is_unusable(
        region_name: str, keys: Keys) -> None:
    with running_node(region_name, *keys.node_options()) as node:
        (keys.allow_dir / "app.key").write_text("not a key file")
        event = reloaded(node)
        assert event["event"] == "reload_failed" and "unchanged" in event["message"]
        with RemoteCache(node.endpoint, timeout_s=WAIT_S,
                         **client_options(keys, "allowed")) as still_admitted:
            still_admitted.set("k", b"v")


def test_sighup_to_a_node_without_curve_says_there_is_nothing_to_reload_and_serves_on(
        region_name: str) -> None:
    with running_node(region_name) as node:
        event = reloaded(node)
        assert event["event"] == "reload" and event["curve"] is False
        assert "nothing to reload" in event["message"]
        with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
            remote.set("k", b"v")
            assert remote.get("k") == b"v"
        stopping, status = node.stop()
        assert (stopping["event"], status) == ("stopping", 0)


def test_sighups_while_requests_flow_interrupt_none_of_them(region_name: str,
                                                            keys: Keys) -> None:
    """SIGHUP is delivered only while the loop sleeps in poll, as the stop signals are: a
    burst of them during a stream of requests fails none, and the node goes on."""
    with running_node(region_name, *keys.node_options()) as node, \
            RemoteCache(node.endpoint, timeout_s=WAIT_S, retries=0,
                        **client_options(keys, "allowed")) as remote:
        sent = 0
        for i in range(2000):
            remote.set(f"k{i % 50}", b"%d" % i)
            assert remote.get(f"k{i % 50}") == b"%d" % i
            if i % 10 == 0:
                node.process.send_signal(signal.SIGHUP)
                sent += 1
        node.process.send_signal(signal.SIGTERM)
        events = [json.loads(line) for line in node.process.stdout]
        assert node.process.wait(timeout=WAIT_S) == 0
    reloads = [e for e in events if e["event"] == "reload"]
    assert 1 <= len(reloads) <= sent  # a burst of SIGHUPs may make one reload
    assert all(e["keys"] == 1 for e in reloads)
    assert events[-1]["event"] == "stopping"
