"""broker.metrics: scrape the real HTTP endpoint over loopback, parse the text format with
prometheus_client's own parser, and watch the counters move."""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from tests_support import SCRAPE_TIMEOUT_S, scrape

import shmkv
from shmkv.broker.metrics import LATENCY_BUCKETS_S, Metrics



def metrics_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shmkv-metrics")
            or "process_request_thread" in t.name]


@pytest.fixture
def metrics(cache: shmkv.Cache) -> Iterator[Metrics]:
    m = Metrics(cache.stats)
    try:
        yield m
    finally:
        m.stop_http()


@pytest.fixture
def port(metrics: Metrics) -> int:
    return metrics.start_http("127.0.0.1", 0)


def test_start_http_on_port_0_returns_the_bound_port(metrics: Metrics, port: int) -> None:
    assert port > 0
    assert scrape(port)[("shmkv_region_up", ())] == 1.0


def test_request_counter_counts_by_command_and_outcome(metrics: Metrics, port: int) -> None:
    metrics.observe_request("get", "ok", 30e-6)
    metrics.observe_request("get", "ok", 40e-6)
    metrics.observe_request("set", "RegionFull", 2e-3)
    samples = scrape(port)
    assert samples[("shmkv_requests_total", (("command", "get"), ("outcome", "ok")))] == 2
    assert samples[("shmkv_requests_total", (("command", "set"), ("outcome", "RegionFull")))] == 1
    metrics.observe_request("get", "ok", 30e-6)
    assert scrape(port)[("shmkv_requests_total", (("command", "get"), ("outcome", "ok")))] == 3


def test_latency_histogram_sorts_requests_into_buckets_from_20us_to_100ms(
        metrics: Metrics, port: int) -> None:
    assert LATENCY_BUCKETS_S[0] == 20e-6 and LATENCY_BUCKETS_S[-1] == 100e-3
    metrics.observe_request("get", "ok", 30e-6)
    metrics.observe_request("get", "ok", 0.5)  # slower than the last bucket: only +Inf
    samples = scrape(port)

    def bucket(le: str) -> float:
        return samples[("shmkv_request_duration_seconds_bucket", (("command", "get"), ("le", le)))]

    assert (bucket("2e-05"), bucket("5e-05"), bucket("0.1"), bucket("+Inf")) == (0, 1, 1, 2)
    assert samples[("shmkv_request_duration_seconds_count", (("command", "get"),))] == 2
    assert samples[("shmkv_request_duration_seconds_sum", (("command", "get"),))] == \
        pytest.approx(0.50003)


def test_requests_counted_by_a_source_are_added_to_those_observed_at_each_scrape(
        metrics: Metrics, port: int) -> None:
    tally = [0, [0] * (len(LATENCY_BUCKETS_S) + 1), 0.0]  # what the compiled door's counts() says
    metrics.requests.add_source("get", "ok", lambda: tuple(tally))  # type: ignore[arg-type]
    metrics.observe_request("get", "ok", 30e-6)
    tally[:] = [3, [1, 2] + [0] * (len(LATENCY_BUCKETS_S) - 1), 0.0001]
    samples = scrape(port)
    assert samples[("shmkv_requests_total", (("command", "get"), ("outcome", "ok")))] == 4
    assert samples[("shmkv_request_duration_seconds_bucket",
                    (("command", "get"), ("le", "5e-05")))] == 4
    assert samples[("shmkv_request_duration_seconds_sum", (("command", "get"),))] == \
        pytest.approx(0.00013)
    tally[0] = 4  # read anew at each scrape, never kept
    assert scrape(port)[("shmkv_requests_total", (("command", "get"), ("outcome", "ok")))] == 5


def test_pubsub_counters_count_published_and_dropped(metrics: Metrics, port: int) -> None:
    metrics.count_published()
    metrics.count_published(4)
    metrics.count_dropped(2)
    samples = scrape(port)
    assert samples[("shmkv_pubsub_published_messages_total", ())] == 5
    assert samples[("shmkv_pubsub_dropped_messages_total", ())] == 2


def test_region_counters_are_read_from_stats_at_scrape_time(cache: shmkv.Cache, port: int) -> None:
    before = scrape(port)
    assert before[("shmkv_region_keys", ())] == 0
    cache.set("a", b"1")
    cache.set("b", b"22")
    cache.get("a")
    cache.get("missing")
    cache.delete("b")
    after = scrape(port)
    stats = cache.stats()
    assert after[("shmkv_region_keys", ())] == 1
    assert after[("shmkv_region_sets_total", ())] == before[("shmkv_region_sets_total", ())] + 2
    assert after[("shmkv_region_hits_total", ())] == before[("shmkv_region_hits_total", ())] + 1
    assert after[("shmkv_region_misses_total", ())] == \
        before[("shmkv_region_misses_total", ())] + 1
    assert after[("shmkv_region_deletes_total", ())] == \
        before[("shmkv_region_deletes_total", ())] + 1
    for name, key in [("shmkv_region_arena_bytes", "arena_bytes"),
                      ("shmkv_region_arena_used_bytes", "arena_used_bytes"),
                      ("shmkv_region_arena_free_bytes", "arena_free_bytes"),
                      ("shmkv_region_evictions_total", "evictions"),
                      ("shmkv_region_expirations_total", "expirations")]:
        assert after[(name, ())] == stats[key], name
    assert after[("shmkv_region_segment_keys", (("segment", "probation"),))] + \
        after[("shmkv_region_segment_keys", (("segment", "protected"),))] == 1


def test_region_down_is_reported_when_stats_fail(cache: shmkv.Cache) -> None:
    metrics = Metrics(cache.stats)
    try:
        port = metrics.start_http("127.0.0.1", 0)
        cache.close()  # stats() now raises CacheClosed
        samples = scrape(port)
        assert samples[("shmkv_region_up", ())] == 0
        assert not any(name.startswith("shmkv_region_keys") for name, _ in samples)
    finally:
        metrics.stop_http()


def test_metrics_without_a_region_serve_only_node_counters() -> None:
    metrics = Metrics()
    try:
        samples = scrape(metrics.start_http("127.0.0.1", 0))
        assert ("shmkv_pubsub_published_messages_total", ()) in samples
        assert not any(name.startswith("shmkv_region") for name, _ in samples)
    finally:
        metrics.stop_http()


def test_each_metrics_has_its_own_registry(cache: shmkv.Cache) -> None:
    first, second = Metrics(cache.stats), Metrics(cache.stats)  # would collide in a shared one
    first.count_published(3)
    assert first.registry is not second.registry
    assert second.registry.get_sample_value("shmkv_pubsub_published_messages_total") == 0
    assert REGISTRY.get_sample_value("shmkv_pubsub_published_messages_total") is None


def test_stop_http_leaves_no_thread_and_frees_the_port(metrics: Metrics, port: int) -> None:
    scrape(port)
    assert metrics_threads()
    metrics.stop_http()
    assert metrics_threads() == []
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.settimeout(SCRAPE_TIMEOUT_S)
        probe.connect(("127.0.0.1", port))
    metrics.stop_http()  # a second stop is a no-op


def test_stop_http_lets_a_scrape_in_progress_finish(cache: shmkv.Cache) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_stats() -> dict[str, object]:
        entered.set()  # runs on the request thread, in the middle of the scrape
        release.wait(SCRAPE_TIMEOUT_S)
        return cache.stats()

    metrics = Metrics(slow_stats)
    try:
        port = metrics.start_http("127.0.0.1", 0)
        with socket.create_connection(("127.0.0.1", port), timeout=SCRAPE_TIMEOUT_S) as client:
            client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert entered.wait(SCRAPE_TIMEOUT_S)
            release.set()
            metrics.stop_http()
            assert metrics_threads() == []
            response = client.makefile("rb").read()
        assert response.startswith(b"HTTP/1.0 200") and b"shmkv_region_keys" in response
    finally:
        release.set()
        metrics.stop_http()


def test_stop_http_gives_up_on_a_stalled_scraper_after_the_timeout(
        cache: shmkv.Cache, capsys: pytest.CaptureFixture[str]) -> None:
    """A client that connected and went quiet holds a request thread: stop_http() waits for it
    at most request_timeout_s, leaves no thread behind and prints no traceback."""
    metrics = Metrics(cache.stats)
    try:
        port = metrics.start_http("127.0.0.1", 0, request_timeout_s=0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=SCRAPE_TIMEOUT_S) as stalled:
            stalled.sendall(b"GET /metr")  # and then nothing
            # Connections are accepted in order: once a later scrape is answered, the stalled
            # one has its request thread.
            scrape(port)
            metrics.stop_http()
            assert metrics_threads() == []
            try:
                assert stalled.recv(100) == b""  # the server hung up on it ...
            except ConnectionResetError:  # ... or reset it, as its request was left unread
                pass
    finally:
        metrics.stop_http()
    assert capsys.readouterr().err == ""


def test_start_http_twice_is_refused(metrics: Metrics, port: int) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        metrics.start_http("127.0.0.1", 0)


def test_start_http_raises_when_the_port_is_taken(metrics: Metrics, port: int) -> None:
    other = Metrics()
    with pytest.raises(OSError):
        other.start_http("127.0.0.1", port)
    assert metrics_threads() and scrape(port)


def test_start_http_serves_ipv6_loopback(cache: shmkv.Cache) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    metrics = Metrics(cache.stats)
    try:
        try:
            port = metrics.start_http("::1", 0)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback on this host: {exc}")
        assert scrape(port, host="[::1]")[("shmkv_region_up", ())] == 1
    finally:
        metrics.stop_http()


def test_metrics_module_does_not_import_zmq() -> None:
    import subprocess  # a fresh interpreter: this one may have imported zmq for other tests

    code = "import sys, shmkv.broker.metrics; sys.exit('zmq' in sys.modules)"
    # a neutral cwd: in a checkout, ./shmkv would shadow the installed package
    assert subprocess.run([sys.executable, "-c", code], timeout=60,
                          cwd=tempfile.gettempdir()).returncode == 0


def _trickle(port: int, every_s: float, lines: int) -> float:
    """Send a request head one header line at a time, every_s apart; return how long the
    server kept the connection open (it cuts it off, or the head ends after `lines`)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=SCRAPE_TIMEOUT_S) as client:
        try:
            client.sendall(b"GET /metrics HTTP/1.0\r\n")
            for i in range(lines):
                time.sleep(every_s)  # the attacker's pace: the behaviour under test
                client.sendall(b"X-Slow-%d: 1\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return time.monotonic() - started


def test_a_scraper_trickling_its_request_is_cut_off_at_the_deadline(cache: shmkv.Cache) -> None:
    metrics = Metrics(cache.stats)
    try:
        port = metrics.start_http("127.0.0.1", 0, request_timeout_s=0.5)
        # each line comes well within the per-read timeout, the whole head never does
        assert _trickle(port, every_s=0.1, lines=60) < 3.0
        scrape(port)  # and the endpoint serves others
    finally:
        metrics.stop_http()


def test_stop_http_does_not_wait_for_a_request_head_still_arriving(cache: shmkv.Cache) -> None:
    metrics = Metrics(cache.stats)
    port = metrics.start_http("127.0.0.1", 0, request_timeout_s=30)
    trickler = threading.Thread(target=_trickle, args=(port, 0.05, 400))
    trickler.start()
    try:
        scrape(port)
        httpd = metrics._httpd
        assert httpd is not None
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S  # its head is arriving (a loaded CI)
        while not httpd.reading and time.monotonic() < deadline:
            time.sleep(0.01)
        assert httpd.reading, "the trickler's request never started"
        started = time.monotonic()
        metrics.stop_http()
        assert time.monotonic() - started < 2.0
        assert metrics_threads() == []
    finally:
        metrics.stop_http()
        trickler.join(SCRAPE_TIMEOUT_S * 4)
