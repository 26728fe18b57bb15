"""The node's Prometheus metrics, and the HTTP endpoint that serves them.

Two kinds of numbers. What the node itself sees (requests per command and outcome, request
latency, pub/sub messages published and dropped) is counted as it happens: requests in plain
dicts that RequestCounts turns into metric families at scrape time (prometheus_client's
Counter.labels().inc() and Histogram.observe() cost ~2.7 us a request, a tenth of what the
node spends on a get; the dicts ~0.5 us), the rest in prometheus_client counters. What the region knows (keys, bytes, hits, evictions, ...) already lives in its header,
shared by every process that uses it, so it is not copied into metrics: a custom collector calls
`Cache.stats()` at scrape time, and the numbers include the work of local processes that never
talk to the node.

Everything registers in the Metrics object's own CollectorRegistry, never prometheus_client's
global one, so that two Metrics (two nodes in a test process) cannot collide. The endpoint is a
small WSGI server on a thread of its own; `stop_http()` joins that thread and every request
thread, so nothing is left running after it.
"""

from __future__ import annotations

import bisect
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Local requests take tens of microseconds, a slow eviction pass tens of milliseconds: log-spaced
# buckets from 20 µs to 100 ms; anything slower lands in +Inf and is a problem whatever it was.
LATENCY_BUCKETS_S = (20e-6, 50e-6, 100e-6, 200e-6, 500e-6,
                     1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3)
# How long a scraper has to send its whole request head (see _QuietHandler).
REQUEST_TIMEOUT_S = 5.0
# serve_forever() notices shutdown() only between polls: this bounds how long a stop takes
# (the node stops within TimeoutStopSec), at the price of ten idle wake-ups a second.
STOP_POLL_S = 0.1
StatsSource = Callable[[], Mapping[str, Any]]


class Metrics:
    """The node's metrics. `stats` is called at each scrape, on the HTTP thread, for the
    region's counters (a Cache handle's `stats` method; a Cache may be shared between threads).

        metrics = Metrics(cache.stats)
        port = metrics.start_http("127.0.0.1", 9370)
        metrics.observe_request("get", "ok", 35e-6)
        metrics.stop_http()
    """

    def __init__(self, stats: StatsSource | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestCounts()
        self.registry.register(self.requests)
        self.published = Counter(
            "shmkv_pubsub_published_messages", "Messages handed to the PUB socket",
            registry=self.registry)
        self.dropped = Counter(
            "shmkv_pubsub_dropped_messages",
            "Events the region's rings overwrote before the node forwarded them (drops at a "
            "slow subscriber's pub_hwm are counted by the subscriber)",
            registry=self.registry)
        if stats is not None:
            self.registry.register(RegionCollector(stats))
        self._httpd: _MetricsServer | None = None
        self._thread: threading.Thread | None = None

    # --- what the node reports ----------------------------------------------------------
    def observe_request(self, command: str, outcome: str, duration_s: float) -> None:
        """Count one request. command is the protocol's command name and outcome "ok" or the
        error code: both must come from small fixed sets (each value is a time series)."""
        self.requests.observe(command, outcome, duration_s)

    def count_published(self, messages: int = 1) -> None:
        """Messages handed to the PUB socket."""
        self.published.inc(messages)

    def count_dropped(self, messages: int = 1) -> None:
        """Events lost before they could be published (the region's rings overwrote them)."""
        self.dropped.inc(messages)

    # --- the HTTP endpoint --------------------------------------------------------------
    def start_http(self, host: str, port: int, *,
                   request_timeout_s: float = REQUEST_TIMEOUT_S) -> int:
        """Serve GET /metrics (any path, in fact) on host:port; returns the bound port, which
        is a free one when port is 0. Raises OSError if the address cannot be bound."""
        if self._httpd is not None:
            raise RuntimeError("the metrics endpoint is already running; stop_http() it first")
        httpd = _MetricsServer(host, port, make_wsgi_app(self.registry), request_timeout_s)
        self._thread = threading.Thread(target=httpd.serve_forever, name="shmkv-metrics-http",
                                        kwargs={"poll_interval": STOP_POLL_S}, daemon=True)
        self._httpd = httpd
        self._thread.start()
        return int(httpd.server_address[1])

    def stop_http(self) -> None:
        """Stop the endpoint and wait for its threads; a no-op when it is not running."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None or thread is None:
            return
        httpd.shutdown()  # returns once serve_forever() has returned
        thread.join()
        for handler in list(httpd.reading):  # a stop never waits for a head still arriving
            handler.cut_off()
        httpd.server_close()  # joins the request threads (block_on_close): what is left are
        # scrapes being answered


class RequestCounts(Collector):
    """Requests by command and outcome, and their latency by command, as shmkv_requests
    (a counter) and shmkv_request_duration_seconds (a histogram with LATENCY_BUCKETS_S): the
    families prometheus_client's Counter and Histogram would make, counted in dicts.

    observe() runs on the node's loop and collect() on a scrape's thread: each dict update is
    one step under the GIL, and collect() copies before reading, so a scrape sees every
    request counted or not, never a torn number (a request may show in the counter and not
    yet in the histogram, as with prometheus_client's own metrics)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        # command -> [count per bucket (not cumulative; the last is +Inf only), sum of seconds]
        self._latency: dict[str, list[Any]] = {}
        # (command, outcome, counts()) of requests counted elsewhere: the compiled door's
        self._sources: list[tuple[str, str, Callable[[], tuple[int, list[int], float]]]] = []

    def add_source(self, command: str, outcome: str,
                   counts: Callable[[], tuple[int, list[int], float]]) -> None:
        """Count in collect() what counts() says (requests so far, count per bucket, sum of
        seconds; since it began, never reset) as more of command's requests with outcome:
        requests counted where calling observe() for each would cost more than answering
        them (the compiled door: compiled_door.py)."""
        self._sources.append((command, outcome, counts))

    def observe(self, command: str, outcome: str, duration_s: float) -> None:
        key = (command, outcome)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        latency = self._latency.get(command)
        if latency is None:
            latency = self._latency[command] = [[0] * (len(LATENCY_BUCKETS_S) + 1), 0.0]
        latency[0][bisect.bisect_left(LATENCY_BUCKETS_S, duration_s)] += 1
        latency[1] += duration_s

    def collect(self) -> Iterator[Metric]:
        counts = dict(self._counts)
        latencies = {command: [list(per_bucket), sum_s]
                     for command, (per_bucket, sum_s) in dict(self._latency).items()}
        for command, outcome, source in list(self._sources):
            count, per_bucket, sum_s = source()
            if not count:
                continue
            counts[command, outcome] = counts.get((command, outcome), 0) + count
            latency = latencies.setdefault(command, [[0] * len(per_bucket), 0.0])
            latency[0] = [a + b for a, b in zip(latency[0], per_bucket)]
            latency[1] += sum_s
        requests = CounterMetricFamily(
            "shmkv_requests", "Requests handled, by command and outcome (ok, or the error code)",
            labels=["command", "outcome"])
        for (command, outcome), count in sorted(counts.items()):
            requests.add_metric([command, outcome], count)
        yield requests
        latency = HistogramMetricFamily(
            "shmkv_request_duration_seconds", "Time from a request's arrival to its reply",
            labels=["command"])
        for command, (per_bucket, sum_s) in sorted(latencies.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), per_bucket):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([command], buckets, sum_s)
        yield latency


class RegionCollector(Collector):
    """The region's counters and sizes, read from Cache.stats() at each scrape."""

    # stats() key -> (metric name, help); counters get "_total" appended by the exposition.
    COUNTERS = {
        "hits": ("shmkv_region_hits", "Reads that found their key (all processes)"),
        "misses": ("shmkv_region_misses", "Reads that did not find their key"),
        "sets": ("shmkv_region_sets", "Writes that stored a value"),
        "deletes": ("shmkv_region_deletes", "Keys deleted"),
        "evictions": ("shmkv_region_evictions", "Keys evicted to make room"),
        "expirations": ("shmkv_region_expirations", "Keys removed because their TTL ran out"),
        # replication (broker/replication.py), on the nodes that replicate
        "replication_full_resyncs": ("shmkv_replication_full_resyncs",
                                     "Resyncs that compared every stripe"),
        "replication_partial_resyncs": ("shmkv_replication_partial_resyncs",
                                        "Resyncs that compared only the stripes moved since "
                                        "the replica's offset"),
        "replication_epoch_refusals": ("shmkv_replication_epoch_refusals",
                                       "Replies refused for an epoch older than the region's"),
        "replication_stripes_hinted": ("shmkv_replication_stripes_hinted",
                                       "Moved stripes sent as their changed keys' records "
                                       "(from the event rings' hints)"),
        "replication_stripes_compared": ("shmkv_replication_stripes_compared",
                                         "Moved stripes compared by their range digests"),
    }
    GAUGES = {
        "items": ("shmkv_region_keys", "Keys stored, in all collections"),
        "region_bytes": ("shmkv_region_bytes", "Size of the whole shared-memory region"),
        "arena_bytes": ("shmkv_region_arena_bytes", "Size of the value arena"),
        "arena_used_bytes": ("shmkv_region_arena_used_bytes", "Arena bytes in use"),
        "arena_free_bytes": ("shmkv_region_arena_free_bytes", "Arena bytes free"),
        "payload_bytes": ("shmkv_region_payload_bytes", "Bytes of keys and values stored"),
        "index_slots": ("shmkv_region_index_slots", "Slots of the hash index"),
        "collections": ("shmkv_region_collections", "Collections in the region"),
        "protected_limit_bytes": ("shmkv_region_protected_limit_bytes",
                                  "Most bytes the protected LRU segment may hold"),
        "overhead_bytes_per_item": ("shmkv_region_overhead_bytes_per_key",
                                    "Bytes spent per key beyond its key and value"),
        # a replica node's (broker/replication.py), absent elsewhere
        "replication_stripes_behind": ("shmkv_replication_stripes_behind",
                                       "Stripes whose last seen changes the replica has not "
                                       "copied yet"),
        "replication_changes_behind": ("shmkv_replication_changes_behind",
                                       "Changes the replica has seen on its primary and not "
                                       "copied yet"),
        "replication_last_sync_age_s": ("shmkv_replication_last_sync_age_seconds",
                                        "Seconds since the replica's last complete round"),
        # a primary's: replicas that asked for the counters lately
        "replication_replicas": ("shmkv_replication_replicas", "Replicas following this node"),
    }

    def __init__(self, stats: StatsSource) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("shmkv_region_up", "1 if the region's stats could be read")
        try:
            stats = self._stats()
        except Exception:  # noqa: BLE001  # a closed or damaged region: the scrape still works
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for key, (name, text) in self.COUNTERS.items():
            if stats.get(key) is not None:
                yield CounterMetricFamily(name, text, value=stats[key])
        for key, (name, text) in self.GAUGES.items():
            if stats.get(key) is not None:  # overhead_bytes_per_item is None when empty
                yield GaugeMetricFamily(name, text, value=stats[key])
        segments = stats.get("segments") or {}
        for field, name, text in (("items", "shmkv_region_segment_keys", "Keys per LRU segment"),
                                  ("bytes", "shmkv_region_segment_bytes",
                                   "Bytes per LRU segment")):
            family = GaugeMetricFamily(name, text, labels=["segment"])
            for segment, sizes in segments.items():
                family.add_metric([segment], sizes[field])
            yield family


class _QuietHandler(WSGIRequestHandler):
    """A request whose head (request line and headers) has not arrived whole within
    request_timeout_s is cut off, however its bytes trickle in (a per-read timeout alone lets a
    client that sends a byte every few seconds hold its thread for ever), and so is every head
    still arriving when the endpoint stops: stopping waits only for scrapes being answered."""

    server: _MetricsServer

    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s  # read by StreamRequestHandler.setup()
        super().setup()
        self._deadline = threading.Timer(self.server.request_timeout_s, self.cut_off)
        self._deadline.daemon = True
        self.server.reading.add(self)
        self._deadline.start()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # has read the headers
        self._head_read()
        return parsed

    def finish(self) -> None:
        self._head_read()
        super().finish()

    def _head_read(self) -> None:
        self._deadline.cancel()
        self.server.reading.discard(self)

    def cut_off(self) -> None:
        """End the connection now: the request thread's read returns, and it ends."""
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # already gone
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """No access log on stderr: the node's stderr is for its own messages."""


class _MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGI server whose request threads are joined on close (prometheus_client's own
    start_http_server makes them daemons that nobody waits for)."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, host: str, port: int, app: Callable[..., Any],
                 request_timeout_s: float) -> None:
        self.request_timeout_s = request_timeout_s
        self.reading: set[_QuietHandler] = set()  # requests whose head is still arriving
        # IPv6 hosts need an AF_INET6 socket; getaddrinfo decides, without a DNS lookup of its
        # own for a literal address.
        self.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        super().__init__((host, port), _QuietHandler)
        self.set_app(app)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() resolves socket.getfqdn(host), a reverse DNS lookup that can
        # take seconds on a host without DNS; the name only goes into CGI-style variables.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that stalls past the timeout or hangs up is its own problem: no traceback
        on the node's stderr (socketserver's default)."""
