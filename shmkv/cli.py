"""The `shmkv` command: inspect and edit a region from the shell.

Every command prints exactly one JSON document on stdout. On failure stdout stays empty, and one
JSON object `{"error": "<ExceptionClassName>", "message": "..."}` goes to stderr. Exit codes:
0 success, 1 a shmkv error (`ShmKVError`), 2 a usage error or a bad value, 3 `get` of a key that
is absent. Usage errors (an unknown option, `--arena-bytes 64Q`) are JSON too, naming the option.

Key commands work in the current collection: `--collection/-c`, else `$SHMKV_COLLECTION`, else
the one chosen with `shmkv use` (kept per region in `$XDG_STATE_HOME/shmkv/`), else the default
collection, whose name is "".

The CLI is a thin layer over the public `Cache` API, plus `check_region` for `doctor` and
`shmkv.gc` for `gc`, and calls nothing else.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from . import sizes
from .cache import DEFAULT_ARENA_BYTES, DEFAULT_REGION, Cache
from .check import check_region, object_problems
from .gc import DEFAULT_GRACE_S, DEFAULT_SEARCH_DIRS, collect_garbage
from .region import check_name, owner_uid
from .errors import (
    CollectionExists,
    CollectionNotFound,
    ConfigError,
    RegionExists,
    RegionNotFound,
    ShmKVError,
)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_KEY_NOT_FOUND = 3



class _JsonUsageErrors(TyperGroup):
    """Reports a usage error (parsing the root's or a command's options) as the JSON error
    every other failure is, instead of the Rich box typer prints: scripts read stderr too."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors_as_json():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors_as_json():
            return super().invoke(ctx)


app = typer.Typer(name="shmkv", no_args_is_help=True, cls=_JsonUsageErrors)
_REGION, _COLLECTIONS, _KEYS = "Region", "Collections", "Keys (in the current collection)"


# --- output -------------------------------------------------------------------------------
def _emit(doc: Any) -> None:
    typer.echo(json.dumps(doc))


def _fail(error: str, message: str, code: int) -> NoReturn:
    typer.echo(json.dumps({"error": error, "message": message}), err=True)
    raise typer.Exit(code)


@contextmanager
def _usage_errors_as_json() -> Iterator[None]:
    try:
        yield
    except typer.BadParameter.__mro__[1] as exc:  # click's UsageError (typer may vendor click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `shmkv` alone: the help, as asked
            raise
        _fail(type(exc).__name__, exc.format_message(), EXIT_USAGE)


@contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn an error of the API into the JSON error on stderr and its exit code."""
    try:
        yield
    except ShmKVError as exc:  # first: some of them are ValueErrors too (KeyTooLarge, ...)
        _fail(type(exc).__name__, str(exc), EXIT_ERROR)
    except ValueError as exc:  # a bad name, size or TTL given on the command line
        _fail(type(exc).__name__, str(exc), EXIT_USAGE)


# The --region-owner of this command line (or $SHMKV_REGION_OWNER), set by the root callback
# before any command runs; kept here rather than in ctx.obj (the region name, which every
# command reads) so that the commands that open a region need no new parameter.
_given_owner: str | None = None


def _region_owner() -> str | None:
    return _given_owner


@contextmanager
def _opened(region: str) -> Iterator[Cache]:
    """The region, open for the duration of the block; every error inside the block is
    reported as JSON."""
    with _reporting_errors():
        try:
            cache = Cache.open(region, owner=_region_owner())
        except RegionNotFound:
            hint = "shmkv init" if region == DEFAULT_REGION else \
                f"shmkv --region {shlex.quote(region)} init"
            raise RegionNotFound(f"no region {region!r}; create it with `{hint}`") from None
        with cache:
            yield cache


# --- the current collection, persisted per region ------------------------------------------
def _state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative value
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "shmkv" / "current-collection.json"


def _state_key(region: str) -> str:
    # A file-backed region may be named by different relative paths from different directories.
    return os.path.realpath(region) if "/" in region else region


def _load_state() -> dict[str, str]:
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged state file only loses the selection: start over
    return state if isinstance(state, dict) else {}


def _save_selection(region: str, collection: str) -> None:
    """Remember collection as the current one of region ("" forgets the choice)."""
    state = _load_state()
    if collection:
        state[_state_key(region)] = collection
    else:
        state.pop(_state_key(region), None)
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write aside, then rename: another shmkv reading the file never sees half of it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".current-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _selected(region: str) -> str:
    """The collection chosen with `shmkv use` for region ("" for the default one)."""
    chosen = _load_state().get(_state_key(region), "")
    return chosen if isinstance(chosen, str) else ""


def _current(region: str, option: str | None = None) -> str:
    if option is not None:
        return option
    return os.environ.get("SHMKV_COLLECTION") or _selected(region)


def _in_collection(cache: Cache, name: str) -> Cache:
    """A handle on an existing collection: collection() would create a missing one."""
    if not name:
        return cache
    if name not in cache.collections():
        raise CollectionNotFound(
            f"no collection {name!r}; create it with `shmkv new {name}`, or go back to the "
            "default collection with `shmkv use --default`"
        )
    return cache.collection(name)


# --- option types -------------------------------------------------------------------------
def parse_size(text: str | int) -> int:
    """A byte count: plain, or with a binary suffix (64M = 64 MiB, 1G, 512KiB, ...)."""
    try:  # the option's default (an int) goes through the parser too
        return sizes.parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


Region = Annotated[
    str,
    typer.Option(
        "--region",
        envvar="SHMKV_REGION",
        help="The region: a /dev/shm name, or a file path (containing '/') for a file-backed one.",
    ),
]
Collection = Annotated[
    str | None,
    typer.Option(
        "--collection",
        "-c",
        help="The collection to work in (default: $SHMKV_COLLECTION, else the one chosen with "
        "`shmkv use`, else the default collection).",
        show_default=False,
    ),
]


RegionOwner = Annotated[
    str | None,
    typer.Option(
        "--region-owner",
        envvar="SHMKV_REGION_OWNER",
        show_default=False,
        help="Accept an existing region owned by this user (name or uid) as well as your own "
        "ones: a region of another user is refused unless named here (it may be a squatter's).",
    ),
]


@app.callback()
def _root(ctx: typer.Context, region: Region = DEFAULT_REGION,
          region_owner: RegionOwner = None) -> None:
    """Inspect and edit a shmkv shared-memory region. Every command prints one JSON document."""
    global _given_owner
    ctx.obj = region
    _given_owner = region_owner or None
    if ctx.invoked_subcommand != "gc":  # the one command that ignores the region
        try:
            check_name(region)
        except (TypeError, ValueError) as exc:  # a usage error, saying where it came from
            raise typer.BadParameter(str(exc), param_hint="'--region' ($SHMKV_REGION)") \
                from None
    if region_owner:
        try:
            owner_uid(region_owner)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--region-owner' "
                                     "($SHMKV_REGION_OWNER)") from None


# --- region commands ----------------------------------------------------------------------
ArenaBytes = Annotated[
    int,
    typer.Option(
        parser=parse_size,
        metavar="SIZE",
        show_default="64M",
        help="Size of the value arena, in bytes or with a suffix: 64M, 1G, ...",
    ),
]


def _node_option(name: str, help: str, **kwargs: Any) -> Any:
    """A `serve` option for a node setting: None unless given, so that load_config can tell
    a flag from a default and let $SHMKV_*, then the config file, fill in the rest."""
    return typer.Option(name, help=help, show_default=False, **kwargs)


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
        "a free one), or off. (default: $SHMKV_METRICS_BIND, else 127.0.0.1:9370)", metavar="HOST:PORT")] = None,
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
        "they must be protected by CurveZMQ (--curve-secret-key, --curve-allow). "
        "(default: $SHMKV_ALLOW_REMOTE, else no)")] = None,
    curve_secret_key: Annotated[str | None, _node_option(
        "--curve-secret-key", "The node's CurveZMQ secret key file (PATH.key_secret from "
        "shmkv keygen): encrypts the ZeroMQ sockets and admits only the clients in "
        "--curve-allow. (default: $SHMKV_CURVE_SECRET_KEY, else off)", metavar="FILE")] = None,
    curve_allow: Annotated[str | None, _node_option(
        "--curve-allow", "Directory of the public key files (*.key) of the clients admitted; "
        "read at start. (default: $SHMKV_CURVE_ALLOW)", metavar="DIR")] = None,
    resp_bind: Annotated[str | None, _node_option(
        "--resp-bind", "host:port of the Redis-protocol door (port 0 picks a free one), or "
        "off. (default: $SHMKV_RESP_BIND, else off)", metavar="HOST:PORT")] = None,
    requirepass: Annotated[str | None, _node_option(
        "--requirepass", "Password Redis-protocol clients must give with AUTH. "
        "(default: $SHMKV_REQUIREPASS, else none)", metavar="PASSWORD")] = None,
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
    from .broker.server import serve as run_node

    given = {"config": config, "arena_bytes": arena_bytes, "maintain_interval_s":
             maintain_interval_s, "bind": bind, "pub_bind": pub_bind, "ipc_dir": ipc_dir,
             "pub_hwm": pub_hwm,
             "metrics_bind": metrics_bind, "allow_remote": allow_remote,
             "flush_interval_s": flush_interval_s, "snapshot_path": snapshot_path,
             "snapshot_interval_s": snapshot_interval_s, "curve_secret_key": curve_secret_key,
             "curve_allow": curve_allow, "resp_bind": resp_bind, "requirepass": requirepass}
    # The global --region always has a value (its default, or $SHMKV_REGION): only a region
    # typed on the command line may outrank the environment and the config file.
    root = ctx.find_root()
    if getattr(root.get_parameter_source("region"), "name", None) == "COMMANDLINE":
        given["region"] = ctx.obj
    if getattr(root.get_parameter_source("region_owner"), "name", None) == "COMMANDLINE":
        given["region_owner"] = _given_owner
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


@app.command(rich_help_panel=_REGION)
def init(
    ctx: typer.Context,
    arena_bytes: ArenaBytes = DEFAULT_ARENA_BYTES,
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Attach to the region if it already exists.")
    ] = False,
) -> None:
    """Create the region and print its stats."""
    with _reporting_errors():
        try:
            cache = Cache.create(ctx.obj, arena_bytes, exist_ok=exist_ok,
                                 owner=_region_owner())
        except RegionExists:
            raise RegionExists(f"region {ctx.obj!r} already exists; pass --exist-ok to attach to "
                               "it, or remove it first with `shmkv unlink`") from None
        with cache:
            _emit(cache.stats())


@app.command(rich_help_panel=_REGION)
def status(ctx: typer.Context, collection: Collection = None) -> None:
    """Show the region, the current collection, how full the region is and which engine
    (compiled "c" or pure "python") this process runs."""
    with _opened(ctx.obj) as cache:
        stats = _in_collection(cache, _current(ctx.obj, collection)).stats()
        _emit({
            "region": ctx.obj,
            "collection": stats["collection"],
            "keys": stats["collection_items"],
            "arena_used_bytes": stats["arena_used_bytes"],
            "arena_free_bytes": stats["arena_free_bytes"],
            "collections": stats["collections"],
            "engine": stats["engine"],
        })


@app.command(rich_help_panel=_REGION)
def stats(ctx: typer.Context, collection: Collection = None) -> None:
    """Print the region's counters and sizes."""
    with _opened(ctx.obj) as cache:
        _emit(_in_collection(cache, _current(ctx.obj, collection)).stats())


@app.command(rich_help_panel=_REGION)
def doctor(
    ctx: typer.Context,
    repair: Annotated[bool, typer.Option("--repair", help="Repair what the check finds.")] = False,
) -> None:
    """Check the region: allocator, index, entries (checksums), lists and counters, and list
    the processes holding views (dead ones' pins are dropped by --repair). With
    --repair, first repair it. Both hold every lock in turn (writers wait meanwhile), so a
    live writer's work in progress is never taken for damage. A region file that was
    truncated or extended is reported as such. The report says whether the region is
    consistent; the command itself succeeded either way."""
    broken = object_problems(ctx.obj)  # a resized file: say so rather than fail to open it
    if broken:
        _emit({"region": ctx.obj, "consistent": False, "problems": broken, "repaired": None,
               "view_records": []})
        return
    with _opened(ctx.obj) as cache:
        repaired = cache.repair() if repair else None
        problems = check_region(cache, hold_locks=True)  # live writers' work is not damage
        _emit({"region": ctx.obj, "consistent": not problems, "problems": problems,
               "repaired": repaired, "view_records": cache._region.pins.records()})


@app.command("gc", rich_help_panel=_REGION)
def collect(
    yes: Annotated[bool, typer.Option("--yes", help="Remove what is found; without it, only "
                                      "report what would go and why.")] = False,
    grace_s: Annotated[float, typer.Option(
        "--grace-s", help="Leave alone what is younger than this: it may be being created."
    )] = DEFAULT_GRACE_S,
    search: Annotated[list[str] | None, typer.Option(
        "--search", metavar="DIR", show_default=False,
        help="A directory of file-backed regions to look in as well as /dev/shm (repeatable; "
        f"default: {', '.join(DEFAULT_SEARCH_DIRS)}).")] = None,
) -> None:
    """Find what dead shmkv processes left on this host, and with --yes remove it: regions
    whose creator died before finishing them (no magic, older than --grace-s, open in no
    process), owned by the user running gc. Ready regions, in use or merely unused, are never
    touched; regions of an older layout (SysV semaphores) are reported, never removed. Ignores
    --region. Prints what was found, kept and removed; a removal that fails is reported in the
    document (and counted in "failed"), the command exits 0."""
    with _reporting_errors():
        _emit(collect_garbage(yes, grace_s, search or DEFAULT_SEARCH_DIRS))


@app.command(rich_help_panel=_REGION)
def unlink(ctx: typer.Context) -> None:
    """Remove the region. Processes that have it open keep their mapping until they close it."""
    with _reporting_errors():
        removed = Cache.unlink(ctx.obj)
    if removed:  # a region created later under this name starts in its default collection
        _save_selection(ctx.obj, "")
    _emit({"unlinked": removed})


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
@app.command("list", rich_help_panel=_COLLECTIONS)
def list_collections(ctx: typer.Context) -> None:
    """List the region's collections and show which one is current ("" is the default)."""
    with _opened(ctx.obj) as cache:
        _emit({"collections": cache.collections(), "current": _current(ctx.obj)})


@app.command(rich_help_panel=_COLLECTIONS)
def new(ctx: typer.Context, name: str) -> None:
    """Create a collection."""
    with _opened(ctx.obj) as cache:
        if name in cache.collections():  # collection() would just open it
            raise CollectionExists(f"collection {name!r} already exists")
        cache.collection(name)
        _emit({"created": name})


@app.command(rich_help_panel=_COLLECTIONS)
def use(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(show_default=False)] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Go back to the default collection.")
    ] = False,
) -> None:
    """Make a collection the current one for later commands on this region.

    `use ""` or `use --default` goes back to the default collection.
    """
    if default and name:
        raise typer.BadParameter("give a collection name or --default, not both")
    if not default and name is None:
        raise typer.BadParameter("give a collection name, or --default")
    name = name or ""
    with _opened(ctx.obj) as cache:
        _in_collection(cache, name)
    _save_selection(ctx.obj, name)
    # $SHMKV_COLLECTION still wins over the choice: show what later commands will use
    _emit({"current": _current(ctx.obj)})


@app.command(rich_help_panel=_COLLECTIONS)
def rename(ctx: typer.Context, old: str, new: str) -> None:
    """Rename a collection; if it is the current one, it stays current."""
    with _opened(ctx.obj) as cache:
        cache.rename_collection(old, new)
    if _selected(ctx.obj) == old:
        _save_selection(ctx.obj, new)
    _emit({"renamed": old, "to": new})


@app.command(rich_help_panel=_COLLECTIONS)
def delete(ctx: typer.Context, name: str) -> None:
    """Drop a collection and all its keys; prints how many keys were removed."""
    with _opened(ctx.obj) as cache:
        removed = cache.drop_collection(name)
    if _selected(ctx.obj) == name:  # else every later command would fail on it
        _save_selection(ctx.obj, "")
    _emit({"collection": name, "removed": removed})


# --- key commands -------------------------------------------------------------------------
@app.command(rich_help_panel=_KEYS)
def put(
    ctx: typer.Context,
    key: str,
    value: str,
    ttl: Annotated[
        float | None,
        typer.Option(help="Expire the key after this many seconds.", show_default=False),
    ] = None,
    collection: Collection = None,
) -> None:
    """Store a value (as UTF-8) under a key."""
    with _opened(ctx.obj) as cache:
        _in_collection(cache, _current(ctx.obj, collection)).set(key, value, ttl_s=ttl)
    _emit({"key": key, "stored": True, "ttl": ttl})


@app.command(rich_help_panel=_KEYS)
def get(ctx: typer.Context, key: str, collection: Collection = None) -> None:
    """Print a key's value: the text if it is UTF-8, else {"base64": ...}.

    Exits 3 if the key is absent.
    """
    with _opened(ctx.obj) as cache:
        name = _current(ctx.obj, collection)
        value = _in_collection(cache, name).get(key)
    if value is None:
        where = f"collection {name!r}" if name else "the default collection"
        _fail("KeyError", f"no key {key!r} in {where}", EXIT_KEY_NOT_FOUND)
    try:
        shown: Any = value.decode("utf-8")
    except UnicodeDecodeError:
        shown = {"base64": base64.b64encode(value).decode("ascii")}
    _emit({"key": key, "value": shown})


@app.command("del", rich_help_panel=_KEYS)
def delete_key(ctx: typer.Context, key: str, collection: Collection = None) -> None:
    """Delete a key; prints whether it was there."""
    with _opened(ctx.obj) as cache:
        deleted = _in_collection(cache, _current(ctx.obj, collection)).delete(key)
    _emit({"deleted": deleted})


@app.command(rich_help_panel=_KEYS)
def clear(ctx: typer.Context, collection: Collection = None) -> None:
    """Delete every key of the current collection; prints how many were removed."""
    with _opened(ctx.obj) as cache:
        removed = _in_collection(cache, _current(ctx.obj, collection)).clear()
    _emit({"removed": removed})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
