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
from typing import Annotated, Any

import typer

from . import cli_node  # noqa: F401  (registers its commands on app)
from . import cli_roles  # noqa: F401  (registers its commands on app)
from .cache import DEFAULT_ARENA_BYTES, Cache
from .check import check_region, object_problems

from .cli_app import (  # noqa: F401  (EXIT_*: the exit codes are importable from here)
    _COLLECTIONS,
    _KEYS,
    _REGION,
    EXIT_ERROR,
    EXIT_KEY_NOT_FOUND,
    EXIT_USAGE,
    ArenaBytes,
    Collection,
    _current,
    _emit,
    _fail,
    _in_collection,
    _opened,
    _region_owner,
    _reporting_errors,
    _save_selection,
    _selected,
    app,
)
from .errors import (
    CollectionExists,
    RegionExists,
)
from .gc import DEFAULT_GRACE_S, DEFAULT_SEARCH_DIRS, collect_garbage


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
            "replica_of": stats["replica_of"],
            "replication": stats["replication"],
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
