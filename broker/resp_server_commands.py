"""The Redis commands about the connection and the server rather than keys: HELLO, AUTH,
CLIENT, COMMAND, CONFIG, INFO, WAIT, and pub/sub (PUBLISH, SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE,
PUNSUBSCRIBE). They join the table of resp_commands.py when this module is imported (the
door imports both).

Channel messages go through the region, as every publish does (Cache.publish): the node reads
them back from the event rings and the door hands them to its subscribers, so RESP and ZeroMQ
subscribers, and local processes that publish, all see the same messages. PUBLISH answers the
number of this door's subscribers that will receive the message (ZeroMQ subscribers are not
counted: the node cannot know how many there are).

WAIT numreplicas timeout is Redis's: how many replicas have applied every write this connection
made, waiting up to timeout ms (0: for ever) until numreplicas have. A write command marks its
connection (resp_commands.execute); the next WAIT takes the primary's offset then (the sum of
its stripes' change counters, repl_source.py) as the one to wait for: at or past the offset
after the connection's last write, so WAIT may wait for others' writes of the moment too,
never for less than its own. Replicas say which offset they applied with every round
(Source.replicas_at counts them, as the ZeroMQ door's wait does). Answered at once when enough
replicas have it, else the handler returns a WaitFor and the door parks the connection (none of
its later commands run, as for a busy lock) and answers it from the node's loop (resp_door.py).
A node's workers count on the replicas' positions that their supervisor relays
(repl_source.RelayedReplicas). A node that serves no replicas (a replica, or no --repl-bind)
answers 0 at once.
"""

from __future__ import annotations

import hmac
import math
import os
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import shmkv

from .resp import OK, Error, Push, Simple
from .protocol import Request
from .resp_commands import COMMANDS, SYNTAX, command, err, integer, run
from .resp_glob import glob_matcher

if TYPE_CHECKING:
    from .resp_door import Context, Session

# What HELLO and INFO claim: the Redis version whose commands and replies the door follows.
REDIS_VERSION = "7.0.0"
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


# --- connection -----------------------------------------------------------------------------
def _check_password(ctx: Context, s: Session, user: bytes | None, password: bytes) -> None:
    if not ctx.requirepass:
        raise err("ERR AUTH <password> called without any password configured for the "
                  "default user. Are you sure your configuration is correct?")
    if (user is not None and user != b"default") or \
            not hmac.compare_digest(password, ctx.requirepass.encode()):
        raise err(WRONGPASS)
    s.authenticated = True


@command("auth", -2, "noauth")
def _auth(ctx: Context, s: Session, a: list[bytes]) -> Any:
    if len(a) > 3:
        raise err(SYNTAX)
    _check_password(ctx, s, a[1] if len(a) == 3 else None, a[-1])
    return OK


@command("hello", -1, "noauth")
def _hello(ctx: Context, s: Session, a: list[bytes]) -> Any:
    protocol = 3 if s.resp3 else 2
    i = 1
    if len(a) > 1:
        try:
            protocol = integer(a[1], "ERR Protocol version is not an integer or out of range")
        except Exception:
            raise
        if protocol not in (2, 3):
            return Error("NOPROTO unsupported protocol version")
        i = 2
    name = None
    while i < len(a):
        opt = a[i].upper()
        if opt == b"AUTH" and i + 2 < len(a):
            _check_password(ctx, s, a[i + 1], a[i + 2])
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(a):
            name = _client_name(a[i + 1])
            i += 2
        else:
            raise err(f"ERR Syntax error in HELLO option '{a[i].decode('utf-8', 'replace')}'")
    if not s.authenticated:
        return Error("NOAUTH HELLO must be called with the client already authenticated, "
                     "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                     "authenticate the client and select the RESP protocol version at the "
                     "same time")
    if name is not None:
        s.name = name
    s.set_protocol(protocol)
    return {"server": "redis", "version": REDIS_VERSION, "proto": protocol, "id": s.id,
            "mode": "standalone", "role": "master", "modules": []}


def _client_name(name: bytes) -> bytes:
    if any(c <= 32 or c > 126 for c in name):
        raise err("ERR Client names cannot contain spaces, newlines or special characters.")
    return name


@command("client", -2)
def _client(ctx: Context, s: Session, a: list[bytes]) -> Any:
    sub = a[1].lower()
    if sub == b"setname" and len(a) == 3:
        s.name = _client_name(a[2])
        return OK
    if sub == b"getname" and len(a) == 2:
        return s.name or None
    if sub == b"id" and len(a) == 2:
        return s.id
    if sub == b"setinfo" and len(a) == 4:  # redis-py >= 5 sends it; nothing to keep
        return OK
    if sub == b"info" and len(a) == 2:
        return _client_line(s).encode() + b"\n"
    if sub == b"list" and len(a) == 2:
        return "".join(_client_line(c) + "\n" for c in ctx.sessions.values()).encode()
    raise _subcommand_error("client", a[1], ("setname", "getname", "id", "setinfo", "info",
                                             "list"))


def _subcommand_error(command_name: str, given: bytes, known: tuple[str, ...]) -> Exception:
    """Redis's error for an unknown subcommand, or a known one with the wrong arguments."""
    sub = given.decode("utf-8", "replace")
    if sub.lower() in known:
        return err(f"ERR wrong number of arguments for '{command_name}|{sub.lower()}' command")
    return err(f"ERR unknown subcommand '{sub[:128]}'. Try {command_name.upper()} HELP.")


def _client_line(s: Session) -> str:
    return (f"id={s.id} addr={s.peer} name={(s.name or b'').decode('utf-8', 'replace')} "
            f"db={s.db} sub={len(s.channels)} psub={len(s.patterns)} resp={3 if s.resp3 else 2}")


@command("command", -1)
def _command(ctx: Context, s: Session, a: list[bytes]) -> Any:
    sub = a[1].lower() if len(a) > 1 else None
    if sub == b"count":
        return len(COMMANDS)
    if sub == b"docs":  # redis-cli asks at start for its hints; none is fine
        return {} if s.resp3 else []
    if sub == b"info":
        return [_command_info(COMMANDS.get(n.decode("utf-8", "replace").lower()))
                for n in a[2:]]
    if sub is None:
        return [_command_info(c) for c in COMMANDS.values()]
    raise _subcommand_error("command", a[1], ("count", "docs", "info"))


def _command_info(cmd: Any) -> Any:
    if cmd is None:
        return None
    flags = [Simple(f) for f in sorted(cmd.flags) if f in ("write", "readonly", "pubsub")]
    return [cmd.name, cmd.arity, flags, cmd.first_key, cmd.last_key, cmd.key_step]


# --- configuration --------------------------------------------------------------------------
# CONFIG GET answers these; CONFIG SET changes only notify-keyspace-events (the others are
# facts of how the node runs: its region is the memory, snapshots are its persistence).
_READ_ONLY = ("save", "appendonly", "maxmemory", "maxmemory-policy", "databases", "port",
              "bind", "requirepass")


def _config_values(ctx: Context) -> dict[str, str]:
    snapshot_s = int(ctx.config.snapshot_interval_s) if ctx.config.snapshot_path else 0
    return {
        "notify-keyspace-events": ctx.notify_flags,
        # Redis's "seconds changes" pairs: the node snapshots on a schedule if something changed
        "save": f"{snapshot_s} 1" if snapshot_s else "",
        "appendonly": "no",
        "maxmemory": str(ctx.config.arena_bytes),
        "maxmemory-policy": "allkeys-lru",
        "databases": "16",
        "port": str(ctx.port),
        "bind": ctx.host,
        "requirepass": "",  # never shown, as in Redis when redacted
    }


@command("config", -2)
def _config(ctx: Context, s: Session, a: list[bytes]) -> Any:
    sub = a[1].lower()
    if sub == b"get" and len(a) >= 3:
        values = _config_values(ctx)
        found: dict[str, str] = {}
        for pattern in a[2:]:
            match = glob_matcher(pattern.lower())
            found.update((k, v) for k, v in values.items() if match(k.encode()))
        return found if s.resp3 else [x for kv in found.items() for x in kv]
    if sub == b"set" and len(a) >= 4 and len(a) % 2 == 0:
        for i in range(2, len(a), 2):
            name = a[i].decode("utf-8", "replace").lower()
            if name == "notify-keyspace-events":
                try:
                    ctx.set_notify_flags(a[i + 1].decode("utf-8", "replace"))
                except ValueError:
                    raise err("ERR CONFIG SET failed (possibly related to argument "
                              "'notify-keyspace-events') - Invalid event class character. "
                              "Use 'Ag$lshzxeKEtmdn'.") from None
            elif name in _READ_ONLY:
                raise err(f"ERR CONFIG SET failed (possibly related to argument '{name}') - "
                          "can't set immutable config")
            else:
                raise err(f"ERR Unknown option or number of arguments for CONFIG SET - "
                          f"'{name}'")
        return OK
    if sub == b"resetstat" and len(a) == 2:
        return OK
    raise _subcommand_error("config", a[1], ("get", "set", "resetstat"))


# --- INFO -----------------------------------------------------------------------------------
@command("info", -1)
def _info(ctx: Context, s: Session, a: list[bytes]) -> Any:
    wanted = {x.decode("utf-8", "replace").lower() for x in a[1:]} or {"default"}
    everything = bool(wanted & {"all", "everything", "default"})
    lane_commands = 0
    if ctx.lane is not None:
        ctx.lane.count()  # its hits and misses, in the region's counters by now
        lane_commands = ctx.lane.commands
    stats = ctx.cache.stats()
    sections = {
        "server": lambda: {
            "redis_version": REDIS_VERSION, "shmkv_version": shmkv.__version__,
            "redis_mode": "standalone", "os": f"{platform.system()} {platform.release()}",
            "arch_bits": 64, "process_id": os.getpid(), "run_id": ctx.run_id,
            "tcp_port": ctx.port, "uptime_in_seconds": int(time.monotonic() - ctx.started),
            "uptime_in_days": int((time.monotonic() - ctx.started) // 86400),
            "region": stats["region"], "engine": stats["engine"]},
        "clients": lambda: {
            # blocked: a command of theirs waits for a busy lock (resp_door.py)
            "connected_clients": len(ctx.sessions),
            "blocked_clients": sum(1 for c in ctx.sessions.values() if c.parked is not None),
            "pubsub_clients": sum(1 for c in ctx.sessions.values() if c.subscribed),
            # served by the read lane's thread (resp_lane.py), and the commands it answered
            "shmkv_read_lane_clients": ctx.lane.sessions if ctx.lane is not None else 0},
        "memory": lambda: {
            "used_memory": stats["arena_used_bytes"],
            "used_memory_human": _human(stats["arena_used_bytes"]),
            "maxmemory": stats["arena_bytes"], "maxmemory_human": _human(stats["arena_bytes"]),
            "maxmemory_policy": "allkeys-lru"},
        "stats": lambda: {
            "total_connections_received": ctx.connections_received,
            "total_commands_processed": ctx.commands_processed + lane_commands,
            "shmkv_read_lane_commands": lane_commands,
            "rejected_connections": ctx.rejected_connections,
            "expired_keys": stats["expirations"], "evicted_keys": stats["evictions"],
            "keyspace_hits": stats["hits"], "keyspace_misses": stats["misses"],
            "pubsub_channels": len(ctx.channels), "pubsub_patterns": len(ctx.patterns)},
        "replication": lambda: {
            "role": "master", "connected_slaves": 0, "master_replid": ctx.run_id,
            "master_repl_offset": 0},
        "keyspace": lambda: {
            f"db{db}": f"keys={n}" for db, n in _db_sizes(ctx) if n},
    }
    text = []
    for name, fields in sections.items():
        if everything or name in wanted:
            text.append(f"# {name.capitalize()}\r\n" +
                        "".join(f"{k}:{v}\r\n" for k, v in fields().items()))
    return "\r\n".join(text).encode()


def _db_sizes(ctx: Context) -> list[tuple[int, int]]:
    return [(db, ctx.dispatcher.run(Request(0, "len", coll, {}, (), None))[0])
            for db, coll in ctx.databases()]


def _human(size: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.2f}{unit}" if unit != "B" else f"{size}B"
        size /= 1024  # type: ignore[assignment]
    return str(size)


# --- pub/sub --------------------------------------------------------------------------------
@command("publish", 3)
def _publish(ctx: Context, s: Session, a: list[bytes]) -> Any:
    run(ctx, s, "publish", a[1], a[2])
    return ctx.receivers(a[1])


def _subscription_change(ctx: Context, s: Session, kind: bytes, names: list[bytes],
                         add: bool, patterns: bool) -> Any:
    mine = s.patterns if patterns else s.channels
    if not names and not add:
        names = list(mine)
        if not names:  # Redis answers one reply with a nil name
            return [Push([kind, None, len(s.channels) + len(s.patterns)])]
    replies = []
    for name in names:
        if add:
            ctx.subscribe(s, name, patterns)
        else:
            ctx.unsubscribe(s, name, patterns)
        replies.append(Push([kind, name, len(s.channels) + len(s.patterns)]))
    return replies


class Replies(list):  # type: ignore[type-arg]
    """Several replies to one request (SUBSCRIBE a b answers one per channel)."""


# --- replication ----------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class WaitFor:
    """A WAIT not satisfied yet: the door parks its connection until `replicas` replicas have
    applied `offset`, or deadline_s (time.monotonic(); inf: never) passes, and answers how
    many have."""

    replicas: int
    offset: int
    deadline_s: float


@command("wait", 3)
def _wait(ctx: Context, s: Session, a: list[bytes]) -> Any:
    wanted = integer(a[1])
    timeout_ms = integer(a[2], "ERR timeout is not an integer or out of range")
    if timeout_ms < 0:
        raise err("ERR timeout is negative")
    source = ctx.replication
    if source is None:
        return 0  # no replicas to count
    if s.wrote:
        s.write_offset = source.offset()
        s.wrote = False
    found = source.replicas_at(s.write_offset)
    if found >= wanted:
        return found
    deadline_s = time.monotonic() + timeout_ms / 1000 if timeout_ms else math.inf
    return WaitFor(wanted, s.write_offset, deadline_s)


@command("subscribe", -2, "pubsub")
def _subscribe(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return Replies(_subscription_change(ctx, s, b"subscribe", a[1:], True, False))


@command("psubscribe", -2, "pubsub")
def _psubscribe(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return Replies(_subscription_change(ctx, s, b"psubscribe", a[1:], True, True))


@command("unsubscribe", -1, "pubsub")
def _unsubscribe(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return Replies(_subscription_change(ctx, s, b"unsubscribe", a[1:], False, False))


@command("punsubscribe", -1, "pubsub")
def _punsubscribe(ctx: Context, s: Session, a: list[bytes]) -> Any:
    return Replies(_subscription_change(ctx, s, b"punsubscribe", a[1:], False, True))


@command("reset", 1, "pubsub", "noauth")
def _reset(ctx: Context, s: Session, a: list[bytes]) -> Any:
    for name in list(s.channels):
        ctx.unsubscribe(s, name, False)
    for name in list(s.patterns):
        ctx.unsubscribe(s, name, True)
    s.reset()
    return Simple("RESET")
