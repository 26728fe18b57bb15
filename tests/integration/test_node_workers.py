"""`shmkv serve --workers N` with real processes: the supervisor, its workers, and clients."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import redis
from node_process import dealer, node_ping, running_node
from shmkv.broker import protocol
from shmkv.clients import RemoteCache
from shmkv.clients import workers as client_workers
from tests_support import scrape, until

import shmkv

pytestmark = pytest.mark.multiprocess

WAIT_S = 30.0
WRITER = Path(__file__).parent.parent / "acked_writer.py"
SETS_OK = ("shmkv_requests_total", (("command", "set"), ("outcome", "ok")))


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(node_ready: dict) -> list[int]:
    return [w["pid"] for w in node_ready["workers"]]


@contextmanager
def killed_at_end(pids: list[int]) -> Iterator[None]:
    """Whatever the test does to the supervisor, no worker outlives the test."""
    try:
        yield
    finally:
        for pid in pids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def stripe_lock_held(cache: shmkv.Cache, key: bytes) -> Iterator[Callable[[], bool]]:
    """Hold the writer lock of key's stripe, and yield a function that tells whether anyone
    waits for it: what keeps a request in progress (as test_remote_node.py does)."""
    _, _, stripe, _, _ = cache._lock_and_find(key)
    try:
        yield lambda: cache._locks.stripe_has_waiters(stripe)
    finally:
        cache._locks.release_stripe(stripe)



def test_remote_caches_are_spread_over_the_workers_and_share_the_region(
        region_name: str) -> None:
    with running_node(region_name, "--workers", "4") as node:
        workers = node.ready["workers"]
        pids = worker_pids(node.ready)
        assert len({w["endpoint"] for w in workers}) == 4 and workers[0]["endpoint"] == \
            node.endpoint
        assert len(set(pids)) == 4 and node.process.pid not in pids
        assert all(running(pid) for pid in pids)
        with ExitStack() as stack:
            handles = [stack.enter_context(RemoteCache(node.endpoint)) for _ in range(4)]
            for i, handle in enumerate(handles):
                handle.set(f"k{i}", b"v%d" % i)
            assert {h._link.endpoint for h in handles} == {w["endpoint"] for w in workers}
            everything = {f"k{i}": b"v%d" % i for i in range(4)}
            assert all(h.get_many(list(everything)) == everything for h in handles)


def test_the_node_spreads_clients_whose_pids_would_all_pick_one_worker(
        region_name: str, monkeypatch) -> None:
    """As processes started one after another can be (each with its threads, their pids may
    all have one parity): here every handle's own pick is the same worker."""
    monkeypatch.setattr(client_workers, "_handles", itertools.repeat(0))
    with running_node(region_name, "--workers", "2") as node, ExitStack() as stack:
        handles = [stack.enter_context(RemoteCache(node.endpoint)) for _ in range(4)]
        for handle in handles:
            handle.get("k")  # the first call asks the node which worker to use
        picked = [h._link.endpoint for h in handles]
        assert sorted(picked) == sorted([w["endpoint"] for w in node.ready["workers"]] * 2)


def test_a_worker_killed_under_load_is_restarted_and_no_acknowledged_write_is_lost(
        region_name: str, tmp_path: Path) -> None:
    with running_node(region_name, "--workers", "4", "--arena-bytes", "32M") as node, \
            killed_at_end(worker_pids(node.ready)):
        before = {w["endpoint"]: w["pid"] for w in node.ready["workers"]}
        stop_file = tmp_path / "stop"
        logs = [tmp_path / f"client{i}.log" for i in range(6)]
        clients = [subprocess.Popen([sys.executable, str(WRITER), node.endpoint, f"c{i}",
                                     str(log), str(stop_file)], cwd=tempfile.gettempdir())
                   for i, log in enumerate(logs)]
        try:
            def acks(i: int) -> int:
                text = logs[i].read_text() if logs[i].exists() else ""
                return text.count("\nack ")

            until(lambda: all(acks(i) >= 50 for i in range(len(logs))),
                  "every client has 50 writes acknowledged")
            victim_endpoint = logs[0].read_text().splitlines()[0].split()[1]
            victim = before[victim_endpoint]
            acked_at_kill = [acks(i) for i in range(len(logs))]
            os.kill(victim, signal.SIGKILL)
            until(lambda: node_ping(node.endpoint)["worker_restarts"] == 1,
                  "the supervisor counts the death")
            # the load goes on, on the restarted worker too
            until(lambda: all(acks(i) >= acked_at_kill[i] + 50 for i in range(len(logs))),
                  "every client, the victim's included, has 50 more writes acknowledged")
            stop_file.touch()
            for client in clients:
                assert client.wait(timeout=WAIT_S) == 0
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        after = {w["endpoint"]: w["pid"] for w in node_ping(node.endpoint)["workers"]}
        assert after.keys() == before.keys()  # the new worker serves the same endpoint
        assert after[victim_endpoint] != victim and not running(victim)
        assert all(after[e] == pid for e, pid in before.items() if e != victim_endpoint)
        assert scrape(int(node.ready["metrics"].rpartition(":")[2]))[
            ("shmkv_worker_restarts_total", ())] == 1
        with shmkv.Cache.open(region_name) as cache:
            for i, log in enumerate(logs):
                lines = log.read_text().splitlines()
                assert lines[-1] == "done" and not any(line.startswith("wrong") for line in
                                                       lines)
                acked = [int(line.split()[1]) for line in lines if line.startswith("ack ")]
                lost = [n for n in acked if cache.get(f"c{i}:{n}") != f"c{i}:{n}:".encode() * 8]
                assert lost == [], f"client {i}: acknowledged writes lost: {lost[:10]}"
                if lines[0] != f"endpoint {victim_endpoint}":  # served by a worker that lived
                    assert not any(line.startswith("fail") for line in lines), lines[:3]
        stopping, status = node.stop()
        assert stopping["event"] == "stopping" and status == 0


def test_sigterm_stops_the_supervisor_and_every_worker(region_name: str) -> None:
    with running_node(region_name, "--workers", "4") as node, \
            killed_at_end(worker_pids(node.ready)):
        pids = worker_pids(node.ready)
        with RemoteCache(node.endpoint) as remote:
            remote.set("k", b"v")
        stopping, status = node.stop(signal.SIGTERM)
        assert stopping == {"event": "stopping", "signal": "SIGTERM"} and status == 0
        assert [pid for pid in pids if running(pid)] == []
        with shmkv.Cache.open(region_name) as cache:  # the region stays, with its data
            assert cache.get("k") == b"v"


def test_workers_stop_when_their_supervisor_is_killed(region_name: str) -> None:
    with running_node(region_name, "--workers", "2") as node, \
            killed_at_end(worker_pids(node.ready)):
        pids = worker_pids(node.ready)
        node.process.kill()
        node.process.wait()
        until(lambda: not any(running(pid) for pid in pids),
              "every worker exits once its supervisor is gone")


def test_redis_clients_are_served_by_several_workers_on_one_port(region_name: str) -> None:
    with running_node(region_name, "--workers", "4", "--resp-bind", "127.0.0.1:0") as node:
        host, _, port = node.ready["resp"].rpartition(":")
        with ExitStack() as stack:
            clients: list[redis.Redis] = []
            served_by: set[int] = set()
            while len(served_by) < 2 and len(clients) < 200:  # accept() is a race: keep on
                client = stack.enter_context(redis.Redis(host=host, port=int(port)))
                clients.append(client)
                served_by.add(client.info("server")["process_id"])
            assert len(served_by) >= 2 and served_by <= set(worker_pids(node.ready))
            assert clients[0].set("shared", "written by one")
            assert {c.get("shared") for c in clients} == {b"written by one"}
            for client in clients:
                client.incr("counter")
            assert int(clients[-1].get("counter")) == len(clients)
            pipe = clients[1].pipeline(transaction=False)
            assert pipe.set("p", "1").get("p").execute() == [True, b"1"]


def test_the_metrics_of_a_node_are_the_sum_over_its_workers(region_name: str) -> None:
    with running_node(region_name, "--workers", "2") as node:
        port = int(node.ready["metrics"].rpartition(":")[2])
        with ExitStack() as stack:
            handles = [stack.enter_context(RemoteCache(node.endpoint)) for _ in range(4)]
            for n, handle in enumerate(handles):
                for i in range(10):
                    handle.set(f"{n}:{i}", b"v")
            assert len({h._link.endpoint for h in handles}) == 2  # both workers count
        until(lambda: scrape(port).get(SETS_OK) == 40, "40 sets in the metrics")
        samples = scrape(port)
        assert samples[("shmkv_request_duration_seconds_count", (("command", "set"),))] == 40
        assert samples[("shmkv_workers", ())] == 2
        assert samples[("shmkv_worker_restarts_total", ())] == 0


def test_clients_over_ipc_use_the_workers_own_ipc_sockets_which_go_at_stop(
        region_name: str, tmp_path: Path) -> None:
    ipc_dir = tmp_path / "ipc"
    with running_node(region_name, "--workers", "2", "--ipc-dir", str(ipc_dir)) as node:
        sockets = [w["ipc_endpoint"] for w in node.ready["workers"]]
        assert sockets == [f"ipc://{ipc_dir}/{region_name}.sock",
                           f"ipc://{ipc_dir}/{region_name}.1.sock"]
        with ExitStack() as stack:
            handles = [stack.enter_context(RemoteCache(node.ready["ipc_endpoint"]))
                       for _ in range(2)]
            for i, handle in enumerate(handles):
                handle.set(f"k{i}", b"v")
            assert sorted(h._link.endpoint for h in handles) == sorted(sockets)
        node.stop()
        assert sorted(p.name for p in ipc_dir.iterdir()) == []


def test_messages_published_through_every_worker_reach_a_redis_subscriber(
        region_name: str) -> None:
    with running_node(region_name, "--workers", "2", "--resp-bind", "127.0.0.1:0") as node:
        host, _, port = node.ready["resp"].rpartition(":")
        with ExitStack() as stack:
            pubsub = stack.enter_context(
                stack.enter_context(redis.Redis(host=host, port=int(port))).pubsub())
            pubsub.subscribe("news")
            assert pubsub.get_message(timeout=WAIT_S)["type"] == "subscribe"
            by_worker: dict[int, redis.Redis] = {}  # one publisher on each worker
            for _ in range(200):  # accept() is a race: until both workers have one
                publisher = stack.enter_context(redis.Redis(host=host, port=int(port)))
                by_worker.setdefault(publisher.info("server")["process_id"], publisher)
                if len(by_worker) == 2:
                    break
            assert len(by_worker) == 2  # so one of them is not the subscriber's worker
            for pid, publisher in by_worker.items():
                publisher.publish("news", str(pid))
            received = {pubsub.get_message(ignore_subscribe_messages=True,
                                           timeout=WAIT_S)["data"] for _ in by_worker}
            assert received == {str(pid).encode() for pid in by_worker}


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_answers_a_request_in_progress_before_the_node_stops(
        region_name: str, stop: signal.Signals) -> None:
    with running_node(region_name, "--workers", "2") as node, \
            killed_at_end(worker_pids(node.ready)), \
            shmkv.Cache.open(region_name) as local, dealer(node.endpoint) as sock:
        with stripe_lock_held(local, b"k") as waiting:
            sock.send_multipart(protocol.encode_request(1, "set", {}, [b"k", b"acknowledged"]))
            until(waiting, "the worker's set waits for the stripe lock")
            node.process.send_signal(stop)  # arrives while the request is in progress
        assert sock.poll(WAIT_S * 1000), "the request in progress was not answered"
        reply = protocol.decode_reply(sock.recv_multipart())
        # done (the lock was freed before the worker stopped, as it nearly always is), or
        # told it was not: never left without an answer
        assert reply.id == 1 and (reply.ok or reply.error == "LockTimeout"), reply.message
        stopping, status = node.stop(stop)  # again: the node is stopping already
        assert stopping["signal"] == stop.name and status == 0
        assert local.get("k") == (b"acknowledged" if reply.ok else None)


def test_only_the_supervisor_talks_to_systemd_and_it_is_ready_once_every_worker_serves(
        region_name: str, tmp_path: Path) -> None:
    directory = tempfile.mkdtemp(prefix="shmkv-notify-")  # short: sun_path holds 108 bytes
    path = os.path.join(directory, "notify")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory)
        sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        sock.bind(path)
        sock.settimeout(WAIT_S)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
        env.pop("WATCHDOG_PID", None)
        node = stack.enter_context(running_node(region_name, "--workers", "2", env=env))
        stack.enter_context(killed_at_end(worker_pids(node.ready)))
        told: list[str] = []
        while not any("READY=1" in m for m in told):
            told.append(sock.recv(4096).decode())
        for pid in worker_pids(node.ready):  # serving (the ready event lists them) and mute
            with open(f"/proc/{pid}/environ", "rb") as environ:
                assert b"NOTIFY_SOCKET=" not in environ.read()
        while sum("WATCHDOG=1" in m for m in told) < 2:  # pings keep coming
            told.append(sock.recv(4096).decode())
        node.process.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in told):
            told.append(sock.recv(4096).decode())
        assert node.process.wait(timeout=WAIT_S) == 0
