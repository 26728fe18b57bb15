"""A metrics client that trickles its request head, one header line now and then, must neither
keep the node from serving nor from stopping at SIGTERM (the metrics endpoint runs on threads
of its own, and shutdown does not wait for a request head still arriving)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from node_process import running_node
from tests_support import scrape

from shmkv.clients import RemoteCache

WAIT_S = 10.0
# The report: one header byte every 3 s kept the node from exiting. Faster here, so the
# trickler is certain to be mid-head when the signal comes; the node's whole-head deadline
# (metrics.REQUEST_TIMEOUT_S, 5 s) must not be what ends the stop either.
TRICKLE_EVERY_S = 0.5
STOP_BOUND_S = 3.0


def _trickle(port: int, stop: threading.Event) -> None:
    """Send a request head a header line at a time until told to stop or cut off."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as client:
        try:
            client.sendall(b"GET /metrics HTTP/1.0\r\n")
            line = 0
            while not stop.wait(TRICKLE_EVERY_S):  # the attacker's pace: behaviour under test
                client.sendall(b"X-Slow-%d: 1\r\n" % line)
                line += 1
        except OSError:  # cut off by the node: what it may do
            pass


@pytest.mark.multiprocess
def test_a_trickling_metrics_client_neither_blocks_requests_nor_delays_the_stop(
        region_name: str) -> None:
    stop_trickling = threading.Event()
    with running_node(region_name) as node:
        port = int(node.ready["metrics"].rsplit(":", 1)[1])
        trickler = threading.Thread(target=_trickle, args=(port, stop_trickling))
        trickler.start()
        try:
            with RemoteCache(node.endpoint, timeout_s=WAIT_S) as remote:
                remote.set("k", b"v")  # the node serves while the head trickles in
                assert remote.get("k") == b"v"
            assert scrape(port)  # and so does the metrics endpoint, to others
            started = time.monotonic()
            stopping, status = node.stop()
            took_s = time.monotonic() - started
            assert stopping.get("event") == "stopping"
            assert status == 0
            assert took_s < STOP_BOUND_S, f"the node took {took_s:.1f} s to stop"
        finally:
            stop_trickling.set()
            trickler.join(WAIT_S)
