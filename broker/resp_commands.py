"""The Redis commands the node answers: `COMMANDS`, name -> Command(arity, handler, flags), and
`execute(ctx, session, args)`, which checks a request against the table and runs it, answering
as Redis does (the wording of its errors included).

This is the RESP codec of the node's one request model (dispatch.py's docstring): a command
that touches the region is turned into operations of that model (op, collection, fields,
payload frames: a protocol.Request, most often one) run by the node's executor
(Dispatcher.run, on ctx.dispatcher), the same code that runs the ZeroMQ door's requests; its
results become Redis's replies, and its errors Redis's errors. What is parsed here is the
arguments (Redis's integers, options and their errors); what stays here is the connection's
state (SELECT's database, subscriber mode, QUIT). The hot commands (GET, plain SET, INCR and
its kin) fill in a request the context keeps (Context.hot) and call the executor directly.

No sockets here: the door (resp_door.py) parses a request (resp.py), calls execute, and
encodes what it returns. A handler returns a reply value (see resp.py's table: bytes, int,
None, list, dict, Simple, Error, ...) or raises; `execute` turns the engine's errors into
Redis's errors and never raises for a client's input.

Databases are collections: SELECT 0 is the default collection, SELECT n (1 to 15) the
collection "db<n>", created by SELECT (the model's `collection`) and again by a command that
finds it dropped by another process.

A command that finds a lock busy (the node's handle waits only a moment: waits.py) changes
nothing and `execute` returns BUSY (the engine's message in ctx.last_lock_timeout): the door
parks it and runs it again later, whole. Every write checks its lock before it changes
anything, so a retry repeats no change, except in a command of several keys that stopped
half-way (DEL, MSET, FLUSHALL): the keys done before it stopped are done again, which changes
nothing more, but DEL's count is then of the second pass only.

Pub/sub and the client-facing facts (INFO, CLIENT, CONFIG, HELLO, AUTH) are in
resp_server_commands.py, which adds its commands to the same table.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import shmkv
from shmkv import errors
from shmkv.arrays import ARRAY_MAGIC

from . import protocol
from .resp import NIL_ARRAY, OK, Error, Simple

if TYPE_CHECKING:
    from .resp_door import Context, Session

Handler = Callable[["Context", "Session", list[bytes]], Any]

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_DB = 15  # SELECT 0..15, as a default Redis has 16 databases
SCAN_DEFAULT_COUNT = 10
BUSY = object()  # execute's answer when a lock the command needs is busy
_NO_FIELDS: dict[str, Any] = {}  # the header of every operation without fields: never changed
# Commands that read or write a whole database: they wait for every parked command before
# them, and hold up every later one (waits.py's "unknown keys").
_WHOLE_DB = frozenset({"keys", "scan", "dbsize", "flushdb", "flushall"})


@dataclass(frozen=True)
class Command:
    name: str
    arity: int  # Redis's: n = exactly n words (the name included), -n = at least n
    handler: Handler
    # "noauth": allowed before AUTH; "pubsub": allowed in RESP2 subscriber mode;
    # "write"/"readonly": COMMAND's flags
    flags: frozenset[str] = field(default_factory=frozenset)
    first_key: int = 0
    last_key: int = 0
    key_step: int = 0


COMMANDS: dict[str, Command] = {}
# The lower- and upper-case spellings of each name, as bytes: what clients send
_BY_WIRE_NAME: dict[bytes, Command] = {}


def command(name: str, arity: int, *flags: str, keys: tuple[int, int, int] = (0, 0, 0)) \
        -> Callable[[Handler], Handler]:
    def add(handler: Handler) -> Handler:
        register(Command(name, arity, handler, frozenset(flags), *keys))
        return handler
    return add


def register(cmd: Command) -> None:
    COMMANDS[cmd.name] = cmd
    _BY_WIRE_NAME[cmd.name.encode()] = _BY_WIRE_NAME[cmd.name.upper().encode()] = cmd


class CommandError(Exception):
    """A reply error raised inside a handler: str is the whole error line (code first)."""


def err(text: str) -> CommandError:
    return CommandError(text)


SYNTAX = "ERR syntax error"
NOT_INTEGER = "ERR value is not an integer or out of range"
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
_WRONG_TYPE_ERROR = getattr(errors, "WrongType", None) or getattr(shmkv, "WrongType", None)


def lookup(name: bytes) -> Command | None:
    cmd = _BY_WIRE_NAME.get(name)  # "GET" or "get" as sent: no decoding on the way
    return cmd if cmd is not None else COMMANDS.get(name.decode("utf-8", "replace").lower())


def keys_of(session: Session, args: list[bytes]) -> frozenset[tuple[str, bytes]] | None:
    """The (collection, key) pairs a request touches, for the order of parked requests
    (waits.py): None for "maybe any key of the database"; empty for none."""
    cmd = lookup(args[0])
    if cmd is None:
        return frozenset()
    if cmd.first_key:
        last = len(args) - 1 if cmd.last_key < 0 else min(cmd.last_key, len(args) - 1)
        coll = session.coll
        return frozenset((coll, key) for key in args[cmd.first_key:last + 1:cmd.key_step])
    return None if cmd.name in _WHOLE_DB else frozenset()


def execute(ctx: Context, session: Session, args: list[bytes]) -> Any:
    """The reply to one request (args[0] is the command name); never raises for bad input.
    BUSY if a lock it needs is busy (nothing changed: run it again later)."""
    cmd = _BY_WIRE_NAME.get(args[0])  # lookup(), inlined: this is every command's path
    if cmd is None:
        cmd = COMMANDS.get(args[0].decode("utf-8", "replace").lower())
    if cmd is None:
        shown = "".join(f"'{a[:128].decode('utf-8', 'replace')}' " for a in args[1:])
        return Error(f"ERR unknown command '{args[0][:128].decode('utf-8', 'replace')}', "
                     f"with args beginning with: {shown}")
    arity = cmd.arity
    if arity != len(args) and (arity > 0 or len(args) < -arity):
        return Error(f"ERR wrong number of arguments for '{cmd.name}' command")
    if not session.authenticated and "noauth" not in cmd.flags:
        return Error("NOAUTH Authentication required.")
    if (session.channels or session.patterns) and not session.resp3 \
            and "pubsub" not in cmd.flags:
        return Error(f"ERR Can't execute '{cmd.name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                     "PING / QUIT / RESET are allowed in this context")
    ctx.commands_processed += 1
    try:
        try:
            reply = cmd.handler(ctx, session, args)
        except errors.CollectionNotFound:
            if not session.coll:
                raise
            # Another process dropped this database's collection: the database is empty,
            # as after FLUSHDB, and made anew by the write (a write checks its collection
            # before it changes anything, so running it again is safe).
            open_db(ctx, session.coll)
            reply = cmd.handler(ctx, session, args)
        if "write" in cmd.flags:
            session.wrote = True  # the connection's next WAIT waits for it (WAIT's doc)
        return reply
    except CommandError as exc:
        return Error(str(exc))
    except errors.LockTimeout as exc:
        ctx.last_lock_timeout = str(exc)
        return BUSY
    except errors.NotAnInteger as exc:
        return Error("ERR increment or decrement would overflow" if "overflow" in str(exc)
                     else NOT_INTEGER)
    except (errors.KeyTooLarge, errors.ValueTooLarge) as exc:
        return Error(f"ERR {exc}")
    except errors.NotEnoughReplicas:
        return Error("NOREPLICAS Not enough good replicas to write.")  # Redis's words
    except (errors.RegionFull, errors.IndexFull) as exc:
        # what Redis answers when maxmemory is reached and nothing can be evicted
        return Error(f"OOM command not allowed when used memory > 'maxmemory'. ({exc})")
    except Exception as exc:
        if _WRONG_TYPE_ERROR is not None and isinstance(exc, _WRONG_TYPE_ERROR):
            return Error(WRONGTYPE)
        if isinstance(exc, TypeError) and "array" in str(exc):  # get_array on a string...
            return Error(WRONGTYPE)
        if not isinstance(exc, errors.ShmKVError):
            traceback.print_exc(file=sys.stderr)  # a bug: worth a traceback
        return Error(f"ERR {type(exc).__name__}: {exc}".replace("\n", " "))


# --- operations of the request model (dispatch.py) ------------------------------------------
def run(ctx: Context, s: Session, op: str, *frames: bytes, **fields: Any) -> tuple[Any, list[Any]]:
    """Run one operation in the session's database: its (result, payload frames); raises the
    errors of shmkv.errors, which execute words as Redis does."""
    return ctx.dispatcher.run(protocol.Request(0, op, s.coll, fields or _NO_FIELDS, frames,
                                               ctx.max_reply_bytes))


def open_db(ctx: Context, coll: str) -> None:
    """Create a database's collection if it is not there (SELECT n; Redis has them all)."""
    ctx.dispatcher.run(protocol.Request(0, "collection", "", {"name": coll}, (),
                                        ctx.max_reply_bytes))


def _value(result: tuple[Any, list[Any]]) -> Any:
    """The value of an operation that answers (found, [value]), or None (nil)."""
    return result[1][0] if result[0] else None


# --- argument parsing ---------------------------------------------------------------------
def integer(arg: bytes, message: str = NOT_INTEGER) -> int:
    """A Redis integer argument: optional minus and digits only, within int64."""
    if not arg or len(arg) > 20 or not (arg.isdigit() or (arg[:1] == b"-" and arg[1:].isdigit())) \
            or (len(arg) > 1 and arg[:1] == b"0") or arg[:2] == b"-0":
        raise err(message)
    value = int(arg)
    if not INT64_MIN <= value <= INT64_MAX:
        raise err(message)
    return value


def expire_seconds(arg: bytes, unit_s: float, command_name: str) -> float:
    value = integer(arg)
    if value <= 0:
        raise err(f"ERR invalid expire time in '{command_name}' command")
    return value * unit_s


def _is_array(ctx: Context, s: Session, key: bytes) -> bool:
    return run(ctx, s, "type", key)[0] == "shmkv-array"  # type: ignore[no-any-return]


# --- strings ------------------------------------------------------------------------------
@command("get", 2, "readonly", keys=(1, 1, 1))
def _get(ctx: Context, s: Session, a: list[bytes]) -> Any:
    # The hot path: the context's request, filled in (see Context.hot), run at once
    request = ctx.hot["get"]
    request.coll = s.coll
    request.frames = (a[1],)
    found, out = ctx.dispatcher.run(request)
    if not found:
        return None
    value = out[0]
    if value.startswith(ARRAY_MAGIC) and _is_array(ctx, s, a[1]):
        raise err(WRONGTYPE)
    return value


@command("set", -3, "write", keys=(1, 1, 1))
def _set(ctx: Context, s: Session, a: list[bytes]) -> Any:
    if len(a) == 3:  # the hot path: a plain SET, on the context's request (see GET)
        request = ctx.hot["set"]
        request.coll = s.coll
        request.frames = (a[1], a[2])
        ctx.dispatcher.run(request)
        return OK
    ttl_s: float | None = None
    nx = xx = keepttl = get = False
    i = 3
    while i < len(a):
        opt = a[i].upper()
        if opt in (b"EX", b"PX", b"EXAT", b"PXAT") and i + 1 < len(a) and ttl_s is None \
                and not keepttl:
            if opt in (b"EX", b"PX"):
                ttl_s = expire_seconds(a[i + 1], 1.0 if opt == b"EX" else 0.001, "set")
            else:
                at = integer(a[i + 1])
                if at <= 0:
                    raise err("ERR invalid expire time in 'set' command")
                ttl_s = (at if opt == b"EXAT" else at / 1000) - ctx.now_s()
                if ttl_s <= 0:  # already past: Redis stores it and it is gone at once
                    run(ctx, s, "delete", a[1])
                    return OK
            i += 2
        elif opt == b"NX" and not xx:
            nx, i = True, i + 1
        elif opt == b"XX" and not nx:
            xx, i = True, i + 1
        elif opt == b"KEEPTTL" and ttl_s is None:
            keepttl, i = True, i + 1
        elif opt == b"GET":
            get, i = True, i + 1
        else:
            raise err(SYNTAX)
    if not (nx or xx or keepttl or get):
        run(ctx, s, "set", a[1], a[2], ttl_s=ttl_s)
        return OK
    result = run(ctx, s, "set_options", a[1], a[2], ttl_s=ttl_s, nx=nx, xx=xx,
                 keepttl=keepttl, get=get)
    if get:
        return _value(result)
    if not (nx or xx):  # KEEPTTL alone always stores
        return OK
    return OK if result[0] else None


@command("setnx", 3, "write", keys=(1, 1, 1))
def _setnx(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return int(bool(run(ctx, s, "set_options", a[1], a[2], nx=True)[0]))


@command("setex", 4, "write", keys=(1, 1, 1))
def _setex(ctx: Context, s: Session, a: list[bytes]) -> Any:
    run(ctx, s, "set", a[1], a[3], ttl_s=expire_seconds(a[2], 1.0, "setex"))
    return OK


@command("psetex", 4, "write", keys=(1, 1, 1))
def _psetex(ctx: Context, s: Session, a: list[bytes]) -> Any:
    run(ctx, s, "set", a[1], a[3], ttl_s=expire_seconds(a[2], 0.001, "psetex"))
    return OK


@command("getdel", 2, "write", keys=(1, 1, 1))
def _getdel(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return _value(run(ctx, s, "getdel", a[1]))


@command("getex", -2, "write", keys=(1, 1, 1))
def _getex(ctx: Context, s: Session, a: list[bytes]) -> Any:
    ttl_s: float | None = None
    persist = False
    rest = a[2:]
    if rest:
        opt = rest[0].upper()
        if opt == b"PERSIST" and len(rest) == 1:
            persist = True
        elif opt in (b"EX", b"PX") and len(rest) == 2:
            ttl_s = expire_seconds(rest[1], 1.0 if opt == b"EX" else 0.001, "getex")
        elif opt in (b"EXAT", b"PXAT") and len(rest) == 2:
            at = integer(rest[1])
            if at <= 0:
                raise err("ERR invalid expire time in 'getex' command")
            ttl_s = (at if opt == b"EXAT" else at / 1000) - ctx.now_s()
        else:
            raise err(SYNTAX)
    if ttl_s is not None and ttl_s <= 0:  # a time already past: read it, then it is gone
        value = _value(run(ctx, s, "get", a[1]))
        run(ctx, s, "delete", a[1])
        return value
    return _value(run(ctx, s, "getex", a[1], ttl_s=ttl_s, persist=persist))


@command("mget", -2, "readonly", keys=(1, -1, 1))
def _mget(ctx: Context, s: Session, a: list[bytes]) -> Any:
    values = ctx.dispatcher.run(protocol.Request(0, "get_each", s.coll, _NO_FIELDS, a[1:],
                                                 ctx.max_reply_bytes))[1]
    for i, value in enumerate(values):  # Redis's MGET answers nil for a key of another type
        if value is not None and value.startswith(ARRAY_MAGIC) and _is_array(ctx, s, a[i + 1]):
            values[i] = None
    return values


@command("mset", -3, "write", keys=(1, -1, 2))
def _mset(ctx: Context, s: Session, a: list[bytes]) -> Any:
    if len(a) % 2 == 0:
        return Error("ERR wrong number of arguments for 'mset' command")
    # Not atomic as Redis's is: each pair is stored on its own (as set_many does)
    run(ctx, s, "set_many", *protocol.pack(a[1::2]), *protocol.pack(a[2::2]))
    return OK


@command("append", 3, "write", keys=(1, 1, 1))
def _append(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return run(ctx, s, "append", a[1], a[2])[0]


@command("strlen", 2, "readonly", keys=(1, 1, 1))
def _strlen(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return run(ctx, s, "strlen", a[1])[0]


# INCR's and DECR's headers, made once (never changed): the hot path makes no dict
_DELTAS = {1: {"delta": 1}, -1: {"delta": -1}}


def _add(ctx: Context, s: Session, key: bytes, delta: int) -> int:
    request = ctx.hot["incr"]  # the context's request, filled in (see GET)
    request.coll = s.coll
    request.fields = _DELTAS.get(delta) or {"delta": delta}
    request.frames = (key,)
    try:
        found: int = ctx.dispatcher.run(request)[0]
        return found
    except errors.NotAnInteger:
        if _is_array(ctx, s, key):
            raise err(WRONGTYPE) from None
        raise


@command("incr", 2, "write", keys=(1, 1, 1))
def _incr(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return _add(ctx, s, a[1], 1)


@command("decr", 2, "write", keys=(1, 1, 1))
def _decr(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return _add(ctx, s, a[1], -1)


@command("incrby", 3, "write", keys=(1, 1, 1))
def _incrby(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return _add(ctx, s, a[1], integer(a[2]))


@command("decrby", 3, "write", keys=(1, 1, 1))
def _decrby(ctx: Context, s: Session, a: list[bytes]) -> Any:
    delta = integer(a[2])
    if delta == INT64_MIN:  # its negation is not an int64
        raise err("ERR decrement would overflow")
    return _add(ctx, s, a[1], -delta)


# --- keys ---------------------------------------------------------------------------------
@command("del", -2, "write", keys=(1, -1, 1))
def _del(ctx: Context, s: Session, a: list[bytes]) -> Any:
    if len(a) == 2:
        return int(run(ctx, s, "delete", a[1])[0])
    return run(ctx, s, "delete_many", *protocol.pack(a[1:]))[0]


register(Command("unlink", -2, _del, frozenset({"write"}), 1, -1, 1))


@command("exists", -2, "readonly", keys=(1, -1, 1))
def _exists(ctx: Context, s: Session, a: list[bytes]) -> Any:
    if len(a) == 2:
        return int(run(ctx, s, "contains", a[1])[0])
    return run(ctx, s, "exists", *protocol.pack(a[1:]))[0]


@command("type", 2, "readonly", keys=(1, 1, 1))
def _type(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return Simple(run(ctx, s, "type", a[1])[0] or "none")


def _expire_in(ctx: Context, s: Session, key: bytes, ttl_s: float) -> int:
    if ttl_s <= 0:  # Redis deletes a key given a time already past
        return int(run(ctx, s, "delete", key)[0])
    return int(run(ctx, s, "expire", key, ttl_s=ttl_s)[0])


def _expire_args(a: list[bytes]) -> None:
    if len(a) > 3:  # NX/XX/GT/LT (Redis 7): not supported yet
        raise err(f"ERR Unsupported option {a[3].decode('utf-8', 'replace')}")


@command("expire", -3, "write", keys=(1, 1, 1))
def _expire(ctx: Context, s: Session, a: list[bytes]) -> Any:
    _expire_args(a)
    return _expire_in(ctx, s, a[1], integer(a[2]))


@command("pexpire", -3, "write", keys=(1, 1, 1))
def _pexpire(ctx: Context, s: Session, a: list[bytes]) -> Any:
    _expire_args(a)
    return _expire_in(ctx, s, a[1], integer(a[2]) / 1000)


@command("expireat", -3, "write", keys=(1, 1, 1))
def _expireat(ctx: Context, s: Session, a: list[bytes]) -> Any:
    _expire_args(a)
    return _expire_in(ctx, s, a[1], integer(a[2]) - ctx.now_s())


@command("pexpireat", -3, "write", keys=(1, 1, 1))
def _pexpireat(ctx: Context, s: Session, a: list[bytes]) -> Any:
    _expire_args(a)
    return _expire_in(ctx, s, a[1], integer(a[2]) / 1000 - ctx.now_s())


def _ttl_s(ctx: Context, s: Session, key: bytes) -> float | int:
    left = run(ctx, s, "ttl", key)[0]
    if left is not None:
        return left  # type: ignore[no-any-return]
    return -1 if run(ctx, s, "contains", key)[0] else -2  # Redis's codes: no expiry, no key


@command("ttl", 2, "readonly", keys=(1, 1, 1))
def _ttl(ctx: Context, s: Session, a: list[bytes]) -> Any:
    left = _ttl_s(ctx, s, a[1])
    return left if isinstance(left, int) else int(left + 0.5)  # Redis rounds


@command("pttl", 2, "readonly", keys=(1, 1, 1))
def _pttl(ctx: Context, s: Session, a: list[bytes]) -> Any:
    left = _ttl_s(ctx, s, a[1])
    return left if isinstance(left, int) else int(left * 1000 + 0.5)


@command("persist", 2, "write", keys=(1, 1, 1))
def _persist(ctx: Context, s: Session, a: list[bytes]) -> Any:
    # Redis answers 1 only if a TTL was removed
    return int(run(ctx, s, "ttl", a[1])[0] is not None and run(ctx, s, "persist", a[1])[0])


@command("rename", 3, "write", keys=(1, 2, 1))
def _rename(ctx: Context, s: Session, a: list[bytes]) -> Any:
    try:
        run(ctx, s, "rename", a[1], a[2])
    except KeyError:
        raise err("ERR no such key") from None
    return OK


@command("renamenx", 3, "write", keys=(1, 2, 1))
def _renamenx(ctx: Context, s: Session, a: list[bytes]) -> Any:
    try:
        return int(bool(run(ctx, s, "rename", a[1], a[2], nx=True)[0]))
    except KeyError:
        raise err("ERR no such key") from None


@command("keys", 2, "readonly")
def _keys(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return run(ctx, s, "scan", a[1], cursor=0, count=None)[1]


@command("scan", -2, "readonly")
def _scan(ctx: Context, s: Session, a: list[bytes]) -> Any:
    """The cursor is the model's (dispatch.py's scan: the next index stripe to read), so a
    key present from the first call to the last is returned at least once, as Redis
    promises."""
    cursor = integer(a[1], "ERR invalid cursor")
    count, pattern = SCAN_DEFAULT_COUNT, b"*"
    i = 2
    while i < len(a):
        opt = a[i].upper()
        if opt == b"COUNT" and i + 1 < len(a):
            count = integer(a[i + 1])
            if count < 1:
                raise err(SYNTAX)
        elif opt == b"MATCH" and i + 1 < len(a):
            pattern = a[i + 1]
        elif opt == b"TYPE" and i + 1 < len(a):
            if a[i + 1].lower() != b"string":
                return [b"0", []]
        else:
            raise err(SYNTAX)
        i += 2
    next_cursor, found = run(ctx, s, "scan", pattern, cursor=cursor, count=count)
    return [b"%d" % next_cursor, found]


@command("dbsize", 1, "readonly")
def _dbsize(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return run(ctx, s, "len")[0]


@command("flushdb", -1, "write")
def _flushdb(ctx: Context, s: Session, a: list[bytes]) -> Any:
    _flush_mode(a)
    run(ctx, s, "clear")
    return OK


@command("flushall", -1, "write")
def _flushall(ctx: Context, s: Session, a: list[bytes]) -> Any:
    _flush_mode(a)
    for _, coll in ctx.databases():
        ctx.dispatcher.run(protocol.Request(0, "clear", coll, _NO_FIELDS, (),
                                            ctx.max_reply_bytes))
    return OK


def _flush_mode(a: list[bytes]) -> None:
    if len(a) > 2 or (len(a) == 2 and a[1].upper() not in (b"SYNC", b"ASYNC")):
        raise err(SYNTAX)


@command("select", 2, "readonly")
def _select(ctx: Context, s: Session, a: list[bytes]) -> Any:
    db = integer(a[1])
    if not 0 <= db <= MAX_DB:
        raise err("ERR DB index is out of range")
    s.db = db
    s.coll = f"db{db}" if db else ""
    if db:
        open_db(ctx, s.coll)
    return OK


@command("ping", -1, "pubsub")
def _ping(ctx: Context, s: Session, a: list[bytes]) -> Any:
    if len(a) > 2:
        raise err("ERR wrong number of arguments for 'ping' command")
    if s.subscribed and not s.resp3:  # in subscriber mode Redis answers an array
        return [b"pong", a[1] if len(a) == 2 else b""]
    return a[1] if len(a) == 2 else Simple("PONG")


@command("echo", 2)
def _echo(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return a[1]


@command("quit", -1, "noauth", "pubsub")
def _quit(ctx: Context, s: Session, a: list[bytes]) -> Any:
    s.closing = True
    return OK


__all__ = ["BUSY", "COMMANDS", "Command", "CommandError", "NIL_ARRAY", "execute", "integer",
           "keys_of"]
