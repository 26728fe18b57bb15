"""The `shmkv` command's frame: the typer app, its output and error conventions (see cli.py's
docstring), the current collection kept per region, the options the commands share, and the
root callback. The commands are in cli.py (regions, collections, keys) and cli_node.py (the
node, keys for it, snapshots)."""


from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from . import sizes
from .cache import DEFAULT_REGION, Cache
from .errors import (
    CollectionNotFound,
    RegionNotFound,
    ShmKVError,
)
from .region import check_name, owner_uid

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


# --- options of the region commands ------------------------------------------------------
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


