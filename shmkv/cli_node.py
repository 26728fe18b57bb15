"""`shmkv serve`, `keygen`, `snapshot` and `restore`: the node and what keeps its data, as
commands of the app in cli_app.py (registered when cli.py imports this module)."""


from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from .cache import Cache
from .cli_app import (
    _REGION,
    EXIT_ERROR,
    EXIT_USAGE,
    _emit,
    _fail,
    _node_option,
    _opened,
    _region_owner,
    _reporting_errors,
    app,
    parse_size,
)
from .errors import (
    ConfigError,
    RegionExists,
    RegionNotFound,
    ShmKVError,
)


@app.command(rich_help_panel=_REGION)
def serve(
    ctx: typer.Context,
    config: Annotated[str | None, _node_option(
        "--config", "A TOML or JSON file of settings (keys as the options below, with "
        "underscores: arena_bytes = \"64M\"). (default: $SHMKV_CONFIG)", metavar="PATH")] = None,
    arena_bytes: Annotated[int | None, _node_option(
        "--arena-bytes", "Size of the value arena of a region the node creates, in bytes or "
        "with a suffix: 64M, 1G, ... (default: $SHMKV_ARENA_BYTES, else 64M)",
        parser=parse_size, metavar="SIZE")] = None,
    maintain_interval_s: Annotated[float | None, _node_option(
        "--maintain-interval-s", "Seconds between two maintenance passes (active expiry). "
        "(default: $SHMKV_MAINTAIN_INTERVAL_S, else 0.1)")] = None,
    bind: Annotated[str | None, _node_option(
        "--bind", "ZeroMQ endpoint of the request socket; port * picks a free one. "
        "(default: $SHMKV_BIND, else tcp://127.0.0.1:7370)", metavar="ENDPOINT")] = None,
    pub_bind: Annotated[str | None, _node_option(
        "--pub-bind", "ZeroMQ endpoint of the publish socket. "
        "(default: $SHMKV_PUB_BIND, else tcp://127.0.0.1:7371)", metavar="ENDPOINT")] = None,
    ipc_dir: Annotated[str | None, _node_option(
        "--ipc-dir", "Directory of the ipc:// endpoints (REGION.sock, REGION.pub.sock) bound "
        "besides --bind and --pub-bind, for clients of this host; auto: the runtime directory "
        "($RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/shmkv, else /tmp/shmkv-UID), off: none. "
        "(default: $SHMKV_IPC_DIR, else auto)", metavar="DIR")] = None,
    pub_hwm: Annotated[int | None, _node_option(
        "--pub-hwm", "Messages queued per slow subscriber before the rest are dropped. "
        "(default: $SHMKV_PUB_HWM, else 10000)")] = None,
    metrics_bind: Annotated[str | None, _node_option(
        "--metrics-bind", "host:port of the Prometheus endpoint, on loopback only (port 0 picks "
        "a free one), or off. (default: $SHMKV_METRICS_BIND, else 127.0.0.1:9370)",
        metavar="HOST:PORT")] = None,
    flush_interval_s: Annotated[float | None, _node_option(
        "--flush-interval-s", "Seconds between two flushes of a file region to its disk (0: "
        "only at stop): about what a power loss may take. (default: $SHMKV_FLUSH_INTERVAL_S, "
        "else 1)")] = None,
    snapshot_path: Annotated[str | None, _node_option(
        "--snapshot-path", "Snapshot file, written on a schedule and at stop; a region that "
        "does not exist at start is restored from it. (default: $SHMKV_SNAPSHOT_PATH, else "
        "none)", metavar="PATH")] = None,
    snapshot_interval_s: Annotated[float | None, _node_option(
        "--snapshot-interval-s", "Seconds between two snapshots, taken only if something "
        "changed (0: only at stop). (default: $SHMKV_SNAPSHOT_INTERVAL_S, else 300)")] = None,
    allow_remote: Annotated[bool | None, _node_option(
        "--allow-remote/--no-allow-remote", "Allow non-loopback addresses in the endpoints; "
        "they must be protected by CurveZMQ (--curve-secret-key, --curve-allow), the "
        "Redis-protocol door by --requirepass and TLS (--resp-tls-cert, --resp-tls-key). "
        "(default: $SHMKV_ALLOW_REMOTE, else no)")] = None,
    curve_secret_key: Annotated[str | None, _node_option(
        "--curve-secret-key", "The node's CurveZMQ secret key file (PATH.key_secret from "
        "shmkv keygen): encrypts the ZeroMQ sockets and admits only the clients in "
        "--curve-allow. (default: $SHMKV_CURVE_SECRET_KEY, else off)", metavar="FILE")] = None,
    curve_allow: Annotated[str | None, _node_option(
        "--curve-allow", "Directory of the public key files (*.key) of the clients admitted; "
        "read at start and on SIGHUP. (default: $SHMKV_CURVE_ALLOW)", metavar="DIR")] = None,
    resp_bind: Annotated[str | None, _node_option(
        "--resp-bind", "host:port of the Redis-protocol door (port 0 picks a free one), or "
        "off. (default: $SHMKV_RESP_BIND, else off)", metavar="HOST:PORT")] = None,
    requirepass: Annotated[str | None, _node_option(
        "--requirepass", "Password Redis-protocol clients must give with AUTH. "
        "(default: $SHMKV_REQUIREPASS, else none)", metavar="PASSWORD")] = None,
    resp_tls_cert: Annotated[str | None, _node_option(
        "--resp-tls-cert", "PEM certificate (chain) of the Redis-protocol door: with "
        "--resp-tls-key, every connection to it is TLS. (default: $SHMKV_RESP_TLS_CERT, else "
        "off)", metavar="FILE")] = None,
    resp_tls_key: Annotated[str | None, _node_option(
        "--resp-tls-key", "PEM private key of --resp-tls-cert. (default: $SHMKV_RESP_TLS_KEY)",
        metavar="FILE")] = None,
    resp_tls_ca: Annotated[str | None, _node_option(
        "--resp-tls-ca", "PEM CA certificates: Redis-protocol clients must present a "
        "certificate signed by one. (default: $SHMKV_RESP_TLS_CA, else none asked)",
        metavar="FILE")] = None,
    repl_bind: Annotated[str | None, _node_option(
        "--repl-bind", "ZeroMQ endpoint on which this node serves replicas of its region, or "
        "off. (default: $SHMKV_REPL_BIND, else off)", metavar="ENDPOINT")] = None,
    replica_of: Annotated[str | None, _node_option(
        "--replica-of", "The --repl-bind endpoint of a primary: the region becomes its "
        "read-only copy. (default: $SHMKV_REPLICA_OF, else none)", metavar="ENDPOINT")] = None,
    repl_curve_server_key: Annotated[str | None, _node_option(
        "--repl-curve-server-key", "The primary's CurveZMQ public key file (PATH.key): with "
        "--repl-curve-client-cert, a replica reaches a primary whose --repl-bind is CURVE-"
        "protected. (default: $SHMKV_REPL_CURVE_SERVER_KEY, else off)", metavar="FILE")] = None,
    repl_curve_client_cert: Annotated[str | None, _node_option(
        "--repl-curve-client-cert", "This node's CurveZMQ secret key file (PATH.key_secret), "
        "whose .key the primary's --curve-allow holds. (default: "
        "$SHMKV_REPL_CURVE_CLIENT_CERT)", metavar="FILE")] = None,
    etcd: Annotated[str | None, _node_option(
        "--etcd", "Client URLs of an etcd cluster (comma separated): the nodes of --cluster "
        "elect their primary through it. (default: $SHMKV_ETCD, else off)",
        metavar="URL[,URL]")] = None,
    cluster: Annotated[str | None, _node_option(
        "--cluster", "The cluster's name in etcd. (default: $SHMKV_CLUSTER)",
        metavar="NAME")] = None,
    advertise: Annotated[str | None, _node_option(
        "--advertise", "This node's replication endpoint as its peers reach it (--repl-bind "
        "listens there). (default: $SHMKV_ADVERTISE)", metavar="ENDPOINT")] = None,
    lease_ttl_s: Annotated[int | None, _node_option(
        "--lease-ttl-s", "Seconds of the leader lease. (default: $SHMKV_LEASE_TTL_S, else "
        "10)")] = None,
    loop_interval_s: Annotated[float | None, _node_option(
        "--loop-interval-s", "Seconds between two renewals of the lease. (default: "
        "$SHMKV_LOOP_INTERVAL_S, else 1)")] = None,
    retry_timeout_s: Annotated[float | None, _node_option(
        "--retry-timeout-s", "Seconds one etcd request may take. (default: "
        "$SHMKV_RETRY_TIMEOUT_S, else 3)")] = None,
    workers: Annotated[int | None, _node_option(
        "--workers", "Processes that serve requests, each on its own endpoint (the first on "
        "--bind; clients learn the others); 1: a single process, 0: one per CPU. "
        "(default: $SHMKV_WORKERS, else one per CPU)", metavar="N")] = None,
    cpu_affinity: Annotated[str | None, _node_option(
        "--cpu-affinity", "The CPUs the workers run on, one each: auto (the node's own CPUs; "
        "none with --resp-bind), off (left to the scheduler), or a list such as 0-3,8 (with --workers 1: the node's "
        "CPUs). (default: $SHMKV_CPU_AFFINITY, else auto)", metavar="auto|off|LIST")] = None,
    repl_backlog_changes: Annotated[int | None, _node_option(
        "--repl-backlog-changes", "A replica that comes back more changes behind than this "
        "resyncs fully. (default: $SHMKV_REPL_BACKLOG_CHANGES, else 10000000)")] = None,
    min_replicas_to_write: Annotated[int | None, _node_option(
        "--min-replicas-to-write", "Refuse writes through the node while fewer replicas are "
        "in sync (0: never). (default: $SHMKV_MIN_REPLICAS_TO_WRITE, else 0)")] = None,
    min_replicas_max_lag_s: Annotated[float | None, _node_option(
        "--min-replicas-max-lag-s", "A replica is in sync if it reported within these "
        "seconds. (default: $SHMKV_MIN_REPLICAS_MAX_LAG_S, else 10)")] = None,
) -> None:
    """Run a node: create the region if it does not exist, host it until SIGTERM or Ctrl-C.
    Prints one JSON line per event (ready, stopping); the region stays when the node stops.

    Each setting comes from its option, else $SHMKV_<SETTING>, else the config file, else
    its default.
    The region is the global option: shmkv --region NAME serve, and so is its owner when
    another user owns it: shmkv --region-owner USER serve.
    A bad setting exits 2 and names where it came from."""
    from .broker.config import load_config
    from .broker.notify import Notifier
    from .broker.supervisor import serve as run_node

    given = {"config": config, "arena_bytes": arena_bytes, "maintain_interval_s":
             maintain_interval_s, "bind": bind, "pub_bind": pub_bind, "ipc_dir": ipc_dir,
             "pub_hwm": pub_hwm,
             "metrics_bind": metrics_bind, "allow_remote": allow_remote,
             "flush_interval_s": flush_interval_s, "snapshot_path": snapshot_path,
             "snapshot_interval_s": snapshot_interval_s, "curve_secret_key": curve_secret_key,
             "curve_allow": curve_allow, "resp_bind": resp_bind, "requirepass": requirepass,
             "resp_tls_cert": resp_tls_cert, "resp_tls_key": resp_tls_key,
             "resp_tls_ca": resp_tls_ca,
             "repl_bind": repl_bind, "replica_of": replica_of,
             "repl_curve_server_key": repl_curve_server_key,
             "repl_curve_client_cert": repl_curve_client_cert, "etcd": etcd,
             "cluster": cluster, "advertise": advertise, "lease_ttl_s": lease_ttl_s,
             "loop_interval_s": loop_interval_s, "retry_timeout_s": retry_timeout_s,
             "workers": workers, "cpu_affinity": cpu_affinity,
             "repl_backlog_changes": repl_backlog_changes,
             "min_replicas_to_write": min_replicas_to_write,
             "min_replicas_max_lag_s": min_replicas_max_lag_s}
    # The global --region always has a value (its default, or $SHMKV_REGION): only a region
    # typed on the command line may outrank the environment and the config file.
    root = ctx.find_root()
    if getattr(root.get_parameter_source("region"), "name", None) == "COMMANDLINE":
        given["region"] = ctx.obj
    if getattr(root.get_parameter_source("region_owner"), "name", None) == "COMMANDLINE":
        given["region_owner"] = _region_owner()
    try:
        node_config = load_config(given)
    except ConfigError as exc:
        _fail("ConfigError", str(exc), EXIT_USAGE)
    with _reporting_errors():
        with Notifier() as notifier:  # systemd's NOTIFY_SOCKET; does nothing without it
            try:
                code = run_node(node_config, notifier=notifier)
            except ConfigError as exc:  # a setting found wrong at start (a key file)
                _fail("ConfigError", str(exc), EXIT_USAGE)
    raise typer.Exit(code)


@app.command(rich_help_panel=_REGION)
def keygen(path: str) -> None:
    """Make a CurveZMQ key pair for a node or a client: PATH.key (public, for the peers) and
    PATH.key_secret (secret, mode 0600). Never overwrites; prints the paths and the public key."""
    from .broker.auth import create_key_files, read_public_key

    try:
        public_path, secret_path = create_key_files(path)
    except OSError as exc:
        _fail(type(exc).__name__, str(exc) if isinstance(exc, FileExistsError) else
              f"cannot write {exc.filename}: {exc.strerror}", EXIT_ERROR)
    _emit({"public_key_file": str(public_path), "secret_key_file": str(secret_path),
           "public_key": read_public_key(str(public_path), "keygen").decode()})


@contextmanager
def _file_errors() -> Iterator[None]:
    """A snapshot file that cannot be read or written: the OS's error, as JSON."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, ShmKVError):
            raise
        _fail(type(exc).__name__, str(exc), EXIT_ERROR)


@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress callback drawing a bar on stderr, or None when stderr is not a terminal
    (stdout carries only the JSON document either way)."""
    if not sys.stderr.isatty():
        yield None
        return
    shown = [-1]

    def show(done: int, total: int) -> None:
        pct = 100 if not total else min(100, done * 100 // total)
        if pct != shown[0]:
            shown[0] = pct
            sys.stderr.write(f"\r{label} [{'#' * (pct // 5):<20}] {pct:3d}% {done}/{total}")
            sys.stderr.flush()

    try:
        yield show
    finally:
        if shown[0] >= 0:
            sys.stderr.write("\n")


@app.command("snapshot", rich_help_panel=_REGION)
def take_snapshot(ctx: typer.Context, path: str) -> None:
    """Write every collection of the region to a snapshot file at PATH, atomically (a temp
    file renamed over PATH), while writers go on: every key nobody writes meanwhile is in
    it, each key consistent. Expiry is kept as absolute time. Prints keys, bytes, elapsed_s."""
    with _file_errors(), _opened(ctx.obj) as cache, _progress_bar("snapshot") as bar:
        _emit({**cache.snapshot(path, progress=bar), "region": ctx.obj})


@app.command("restore", rich_help_panel=_REGION)
def restore_snapshot(
    ctx: typer.Context,
    path: str,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Clear every collection first; without it, keys only in the region "
        "stay.")] = False,
) -> None:
    """Load a snapshot file into the region, creating the region (sized from the snapshot)
    if it does not exist. The whole file is checked first: a damaged one is refused
    (CorruptSnapshot, naming the byte offset) and changes nothing. Keys whose expiry passed
    since the snapshot are skipped."""
    with _file_errors(), _reporting_errors():
        created = False
        try:
            cache = Cache.open(ctx.obj)
        except RegionNotFound:
            try:
                cache = Cache.create(ctx.obj, **Cache.sizes_for_snapshot(path))
                created = True
            except RegionExists:  # created by another process meanwhile
                cache = Cache.open(ctx.obj)
        try:
            with cache, _progress_bar("restore") as bar:
                report = cache.restore(path, replace, progress=bar)
        except BaseException:
            if created:  # a region this command made for a file it could not load
                Cache.unlink(ctx.obj)
            raise
    _emit({**report, "region": ctx.obj, "created": created})


# --- collection commands ------------------------------------------------------------------
