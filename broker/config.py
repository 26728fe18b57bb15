"""The node's configuration: one frozen dataclass, `NodeConfig`, and `load_config`, which builds
it from the four places a setting can come from.

Every field has a default that works on a fresh machine with no config file: the node creates the
default region and listens on loopback only. Where a value comes from is decided here, and
nowhere else, in this order (first wins):

    CLI flag            --arena-bytes 64M        (only the flags the user gave)
    environment         SHMKV_ARENA_BYTES=64M    (SHMKV_ + the field name in capitals)
    config file         arena_bytes = "64M"      (TOML or JSON by extension; the path comes
                                                  from --config, else SHMKV_CONFIG)
    default             NodeConfig's field default

Flags and variables are text and are parsed; a file has types and must use them (a size may
still be written "64M"). An empty variable counts as unset, as for click's envvar options (the
CLI's --region). Anything wrong raises `ConfigError` naming the source (flag, variable or file
path) and the key. Every number has a range (RANGES): a value a node cannot run with (an
arena larger than a region holds, a queue limit past what ZeroMQ takes, a maintenance interval
so short the loop would spin) is refused here, before anything is bound or created. A
non-loopback address is refused unless allow_remote is set, so exposing a region must be asked
for, never follow from a stray "*"; and even then each exposed door must be protected
(`doors()`): the ZeroMQ sockets by CurveZMQ (curve_secret_key and curve_allow, broker/auth.py),
the RESP door by requirepass over TLS (resp_tls_cert and resp_tls_key, broker/resp_tls.py).
The metrics endpoint has no authentication and stays on loopback whatever allow_remote says.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import shmkv
from shmkv import layout
from shmkv import region as shm_region
from shmkv.errors import ConfigError
from shmkv.sizes import parse_size

from . import cpus


@dataclass(frozen=True)
class NodeConfig:
    region: str = shmkv.DEFAULT_REGION
    # The user besides the node's own that may own an existing region it attaches to (a user
    # name or uid; "" for none): see the owner rule in shmkv/region.py.
    region_owner: str = ""
    arena_bytes: int = shmkv.DEFAULT_ARENA_BYTES
    # How often the node runs one bounded Cache.maintain() pass (active expiry, segment balance).
    maintain_interval_s: float = 0.1
    # ZeroMQ endpoints. Loopback by default: exposing a region to the network is a choice.
    # A port of "*" (tcp://127.0.0.1:*) binds an ephemeral port; the "ready" event reports it.
    bind: str = "tcp://127.0.0.1:7370"  # ROUTER: request/reply for the Cache API
    pub_bind: str = "tcp://127.0.0.1:7371"  # PUB: channels and keyspace events
    # Directory of the ipc:// endpoints bound next to bind and pub_bind, for same-host clients:
    # "auto" picks the service's runtime directory, "" (flag: off) binds none (broker/ipc.py).
    ipc_dir: str = "auto"
    # Messages queued per slow subscriber before the node drops (and counts) the rest.
    pub_hwm: int = 10_000
    # host:port of the Prometheus text endpoint; "" turns it off. Port 0 picks a free one.
    metrics_bind: str = "127.0.0.1:9370"
    # Lets bind and pub_bind name non-loopback addresses, when CURVE protects them (module doc).
    allow_remote: bool = False
    # CurveZMQ (broker/auth.py): the node's secret key file (from `shmkv keygen`; "" = off),
    # and the directory of the public key files of the clients it admits. Both or neither:
    # the node checks that, and reads the files, when it starts.
    curve_secret_key: str = ""
    curve_allow: str = ""
    # Persistence (broker/persistence.py). Seconds between two flushes of a file region to its
    # disk (0: only at stop): what a power loss may take.
    flush_interval_s: float = 1.0
    # A snapshot file ("" = none): written every snapshot_interval_s when something changed
    # (0: only at stop) and at stop; a region that does not exist at start is restored from it.
    snapshot_path: str = ""
    snapshot_interval_s: float = 300.0
    # host:port of the Redis-protocol door (broker/resp_door.py); "" (the default) is off.
    # Port 0 picks a free one; the "ready" event reports it.
    resp_bind: str = ""
    # The password RESP clients must give (AUTH, HELLO ... AUTH); "" asks none. It guards
    # the RESP door only: the ZeroMQ endpoints have no authentication.
    requirepass: str = ""
    # TLS for the RESP door (broker/resp_tls.py): the certificate chain and its key (PEM; both
    # or neither), and optionally the CAs whose client certificates are required.
    resp_tls_cert: str = ""
    resp_tls_key: str = ""
    resp_tls_ca: str = ""
    # Replication (broker/replication.py). repl_bind: the endpoint a primary serves replicas
    # on ("" = off; a door: loopback unless allow_remote, CURVE-protected then). replica_of:
    # the primary's repl_bind endpoint; the node's region becomes its read-only copy.
    repl_bind: str = ""
    replica_of: str = ""
    # CurveZMQ toward the primary (broker/auth.py's CurveClient): the primary's public key
    # file (PATH.key) and this node's own secret key file (PATH.key_secret), whose public key
    # the primary's curve_allow must hold. Both or neither: the node checks that, and reads
    # the files, when it starts (as curve_secret_key's).
    repl_curve_server_key: str = ""
    repl_curve_client_cert: str = ""
    # Failover through etcd (broker/failover.py). etcd: the etcd cluster's client URLs, comma
    # separated ("" = off); cluster: this cluster's name in etcd's keys; advertise: this node's
    # replication endpoint as its peers reach it (where repl_bind listens). lease_ttl_s: the
    # leader lease (etcd counts whole seconds); loop_interval_s: how often the lease is
    # renewed; retry_timeout_s: how long one etcd request may take. loop + 2 x retry <= ttl.
    etcd: str = ""
    cluster: str = ""
    advertise: str = ""
    lease_ttl_s: int = 10
    loop_interval_s: float = 1.0
    retry_timeout_s: float = 3.0
    # Processes that serve requests (broker/supervisor.py); 0: one per CPU. 1 is the single
    # process node, which serves and also does everything else itself.
    workers: int = 0
    # The CPUs the workers run on, each on one (broker/cpus.py): "auto" (the node's own CPUs),
    # "off", or a list such as "0-3,8".
    cpu_affinity: str = "auto"
    # A replica more changes behind than this when it comes back resyncs fully (every stripe
    # compared); within it, only the stripes that moved (broker/repl_source.py).
    repl_backlog_changes: int = 10_000_000
    # Writes through the node are refused while fewer than min_replicas_to_write replicas
    # reported within min_replicas_max_lag_s (Redis's names; 0: never refused).
    min_replicas_to_write: int = 0
    min_replicas_max_lag_s: float = 10.0


CONFIG_ENV = "SHMKV_CONFIG"
FIELDS = tuple(f.name for f in dataclasses.fields(NodeConfig))
# ZeroMQ transports (zmq_bind(3)); ipc and inproc never leave the host.
_LOCAL_TRANSPORTS = {"ipc", "inproc"}
_TRANSPORTS = _LOCAL_TRANSPORTS | {"tcp", "pgm", "epgm", "tipc", "vmci", "udp", "ws", "wss", "norm"}
_ENDPOINT = re.compile(r"([a-z]+)://(.+)")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.%\w]+\]|[^:\[\]]+):(\d+|\*)")
# (lowest, highest) of each numeric setting, both allowed. Why these bounds:
#   arena_bytes: what plan_layout accepts (a region's refs are u32 in 8-byte units);
#   maintain_interval_s: under 1 ms the loop would do nothing but maintain (1e-300 spins);
#     over a day expired memory would wait too long;
#   pub_hwm: 0 is ZeroMQ's "no limit"; past 10 M messages a slow subscriber could hold many
#     GB of the node's memory (and ZMQ_SNDHWM is a C int: 3e9 would not even be taken);
#   workers: each is a process with its own sockets and handles; past a few per core they
#     only take turns.
RANGES: dict[str, tuple[float, float]] = {
    "arena_bytes": (4096, layout.MAX_ARENA_BYTES),
    "maintain_interval_s": (0.001, 86400.0),
    "pub_hwm": (0, 10_000_000),
    # etcd's leases are whole seconds, and it refuses (raises to its minimum) very short ones
    "lease_ttl_s": (2, 3600),
    "loop_interval_s": (0.05, 600.0),
    "retry_timeout_s": (0.1, 600.0),
    "workers": (0, 256),
}


def env_var(field: str) -> str:
    """The environment variable of a NodeConfig field: SHMKV_ARENA_BYTES for arena_bytes."""
    return "SHMKV_" + field.upper()


def flag(field: str) -> str:
    """The `shmkv serve` flag of a NodeConfig field: --arena-bytes for arena_bytes."""
    return "--" + field.replace("_", "-")


def load_config(cli: Mapping[str, object], env: Mapping[str, str] = os.environ) -> NodeConfig:
    """Build the node's configuration: CLI flags > SHMKV_* variables > config file > defaults.

    cli maps NodeConfig field names (plus "config", the file path) to the values of the flags
    the user gave; a None value counts as not given. Raises ConfigError.
    """
    cli = {k: v for k, v in cli.items() if v is not None}
    path, path_source = (cli.pop("config"), "flag --config") if "config" in cli else \
        (env.get(CONFIG_ENV) or None, f"environment variable {CONFIG_ENV}")
    # (key, source, value, is text), lowest precedence first: a later one overrides
    given = [] if path is None else \
        [(k, f"config file {path}", v, False) for k, v in _read_file(path, path_source).items()]
    given += [(k, f"environment variable {env_var(k)}", env[env_var(k)], True)
              for k in FIELDS if env.get(env_var(k))]
    given += [(k, f"flag {flag(k)}", v, isinstance(v, str)) for k, v in cli.items()]
    values: dict[str, object] = {}
    sources: dict[str, str] = {}  # field -> where its value came from, for error messages
    for key, source, value, text in given:
        _check_known(key, source)
        values[key] = _parse(key, value, text=text, source=source)
        sources[key] = source

    config = NodeConfig(**values)  # type: ignore[arg-type]  # each value was checked by _parse
    _check_exposure(config, sources)
    _check_failover(config, sources)
    return config


def metrics_address(config: NodeConfig) -> tuple[str, int] | None:
    """(host, port) for the Prometheus endpoint, or None when metrics_bind is "" (off)."""
    if not config.metrics_bind:
        return None
    host, port = _host_port(config.metrics_bind)
    return host, int(port)


def worker_count(config: NodeConfig) -> int:
    """How many processes serve requests: workers, or the CPUs this process may run on."""
    return config.workers or len(os.sched_getaffinity(0))


def resp_address(config: NodeConfig) -> tuple[str, int] | None:
    """(host, port) for the Redis-protocol door, or None when resp_bind is "" (off)."""
    if not config.resp_bind:
        return None
    host, port = _host_port(config.resp_bind)
    return host, int(port)


# --- one parser per kind of value -----------------------------------------------------------
# Each takes the raw value and whether it is text (a flag or variable) rather than a typed file
# value; each returns the typed value or raises ValueError saying what is wrong with it.
def _region(value: object, text: bool) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a region name (a non-empty string), got {value!r}")
    try:
        return shm_region.check_name(value)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _owner(value: object, text: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a user name or uid, got {value!r}")
    value = str(value).strip()
    if value:
        try:
            shm_region.owner_uid(value)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    return value


def _size(value: object, text: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size in bytes (65536, or with a suffix: 64M), got {value!r}")
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


def _seconds(value: object, text: bool) -> float:
    value = _from_text(value, text, float, "a number of seconds")
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not (math.isfinite(value) and value > 0):
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _interval(value: object, text: bool) -> float:
    """Seconds, or 0 for never."""
    value = _from_text(value, text, float, "a number of seconds")
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a number of seconds >= 0 (0: never), got {value!r}")
    return float(value)


def _path(value: object, text: bool) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise ValueError(f"expected a file path, got {value!r}")
    if value and os.path.isdir(value):
        raise ValueError(f"{value!r} is a directory; name a file in it")
    return value


def _directory(value: object, text: bool) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise ValueError(f"expected a directory path, got {value!r}")
    if value and os.path.exists(value) and not os.path.isdir(value):
        raise ValueError(f"{value!r} is not a directory")
    return value


def _ipc_dir(value: object, text: bool) -> str:
    if isinstance(value, str) and value.lower() in ("", "off"):  # "off": an empty variable
        return ""                                                # counts as unset
    return "auto" if value == "auto" else _directory(value, text)


def _count(value: object, text: bool) -> int:
    value = _from_text(value, text, int, "a whole number")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _from_text(value: object, text: bool, kind: type, what: str) -> object:
    if not (text and isinstance(value, str)):
        return value
    try:
        return kind(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not {what}") from None


def _endpoint(value: object, text: bool) -> str:
    match = _ENDPOINT.fullmatch(value) if isinstance(value, str) else None
    if not match or match[1] not in _TRANSPORTS:
        raise ValueError(f"expected a ZeroMQ endpoint such as tcp://127.0.0.1:7370 or "
                         f"ipc:///run/shmkv/node.sock, got {value!r}")
    if match[1] == "tcp":
        _host_port(match[2], any_port=True)
    return value  # type: ignore[return-value]  # a str: the regex matched it


def _optional_endpoint(value: object, text: bool) -> str:
    if isinstance(value, str) and value.lower() in ("", "off"):  # as metrics_bind's "off"
        return ""
    return _endpoint(value, text)


def _etcd_urls(value: object, text: bool) -> str:
    """Comma-separated http(s)://host:port URLs, or "" / off."""
    if isinstance(value, str) and value.strip().lower() in ("", "off"):
        return ""
    urls = [u.strip() for u in value.split(",")] if isinstance(value, str) else []
    for url in urls:
        match = re.fullmatch(r"https?://(.+)", url)
        if not match:
            raise ValueError(f"expected etcd client URLs such as http://127.0.0.1:2379, comma "
                             f"separated, got {value!r}")
        _host_port(match[1])
    return ",".join(urls)


def _cluster(value: object, text: bool) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", value):
        raise ValueError(f"expected a cluster name of letters, digits, '_', '.' and '-' (at "
                         f"most 64), got {value!r}")
    return value


def _whole_seconds(value: object, text: bool) -> int:
    value = _from_text(value, text, int, "a whole number of seconds")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a whole number of seconds > 0, got {value!r}")
    return value


def _check_failover(config: NodeConfig, sources: Mapping[str, str]) -> None:
    """With etcd: timings that let a primary renew its lease before its fence passes
    (Patroni's rule). What etcd needs besides (cluster, advertise, repl_bind) is checked by
    the node when it starts with etcd (broker/failover.py)."""
    if not config.etcd:
        return
    needed = config.loop_interval_s + 2 * config.retry_timeout_s
    if needed > config.lease_ttl_s:
        given = ", ".join(sources.get(k, "default") for k in
                          ("loop_interval_s", "retry_timeout_s", "lease_ttl_s"))
        raise ConfigError(
            f"loop_interval_s + 2 x retry_timeout_s = {needed:g} s is over lease_ttl_s = "
            f"{config.lease_ttl_s} s ({given}): a primary could not renew its lease before "
            "its write fence passes; raise lease_ttl_s or lower the others")


def _password(value: object, text: bool) -> str:
    if not isinstance(value, str) or "\0" in value or "\n" in value:
        raise ValueError("expected a password (a string without newlines)")  # never shown
    return value


def _cpu_affinity(value: object, text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected auto, off or a CPU list such as 0-3,8, got {value!r}")
    setting = cpus.parse_setting(value)
    cpus.chosen(setting)  # a CPU this process may not use: refused now, not at a worker's start
    return setting


def _metrics_bind(value: object, text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected host:port, or \"off\", got {value!r}")
    if value.lower() in ("", "off"):  # "off" because an empty variable counts as unset
        return ""
    _host_port(value)
    return value


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _flag(value: object, text: bool) -> bool:
    if text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


_PARSERS: dict[str, Callable[[object, bool], object]] = {
    "region": _region, "region_owner": _owner, "arena_bytes": _size,
    "maintain_interval_s": _seconds,
    "bind": _endpoint, "pub_bind": _endpoint, "ipc_dir": _ipc_dir, "pub_hwm": _count,
    "metrics_bind": _metrics_bind, "allow_remote": _flag, "flush_interval_s": _interval,
    "snapshot_path": _path, "snapshot_interval_s": _interval,
    "curve_secret_key": _path, "curve_allow": _directory,
    "resp_bind": _metrics_bind, "requirepass": _password,
    "resp_tls_cert": _path, "resp_tls_key": _path, "resp_tls_ca": _path,
    "repl_bind": _optional_endpoint, "replica_of": _optional_endpoint,
    "repl_curve_server_key": _path, "repl_curve_client_cert": _path,
    "etcd": _etcd_urls, "cluster": _cluster, "advertise": _optional_endpoint,
    "lease_ttl_s": _whole_seconds, "loop_interval_s": _seconds, "retry_timeout_s": _seconds,
    "workers": _count, "cpu_affinity": _cpu_affinity,
    "repl_backlog_changes": _count, "min_replicas_to_write": _count,
    "min_replicas_max_lag_s": _seconds,
}
assert set(_PARSERS) == set(FIELDS), "every NodeConfig field needs a parser"


def _parse(key: str, value: object, *, text: bool, source: str) -> object:
    try:
        parsed = _PARSERS[key](value, text)
        _check_range(key, parsed)
        return parsed
    except ValueError as exc:
        raise ConfigError(f"{source}, key {key!r}: {exc}") from None


def _check_range(key: str, value: object) -> None:
    if key not in RANGES:
        return
    low, high = RANGES[key]
    if not low <= value <= high:  # type: ignore[operator]  # a number: _PARSERS made it
        raise ValueError(f"{value!r} is out of range: it must be between {low} and {high}")


def _check_known(key: str, source: str) -> None:
    if key not in _PARSERS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{source}: unknown key {key!r}{hint} "
                          f"(known keys: {', '.join(FIELDS)})")


def _host_port(text: str, any_port: bool = False) -> tuple[str, str]:
    """("::1", "7370") from "[::1]:7370". any_port allows ZeroMQ's "*" (a free port)."""
    match = _HOST_PORT.fullmatch(text)
    if not match:
        raise ValueError(f"expected host:port (an IPv6 host in brackets: [::1]:7370), "
                         f"got {text!r}")
    port = match[2]
    if not (port == "*" and any_port) and not (port.isdigit() and int(port) <= 65535):
        raise ValueError(f"expected a port number 0-65535{' or *' if any_port else ''}, "
                         f"got {port!r}")
    return match[1].strip("[]"), port


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "lo"):  # lo: ZeroMQ accepts an interface name as the host
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # "*", a host name or an interface other than lo
        return False


@dataclass(frozen=True)
class Door:
    """One way into the node from outside its process."""

    key: str  # the setting that holds its address
    address: str
    local: bool  # the address never leaves the host (loopback, ipc://, inproc://)
    protected: bool  # peers must authenticate, and the traffic is encrypted
    protection: str  # what protects it, as the settings that turn that on
    # how to set them, for the error that asks for them
    how: str = f"{flag('curve_secret_key')} FILE {flag('curve_allow')} DIR; make the keys " \
        "with shmkv keygen"


def doors(config: NodeConfig) -> list[Door]:
    """Every door the node opens and whether each is protected: what the exposure check
    judges. A new door (another protocol's port) adds itself here with what protects it, and
    allow_remote then admits it on a non-loopback address only when protected."""
    curve = bool(config.curve_secret_key and config.curve_allow)
    found = [Door(key, getattr(config, key), _is_local(getattr(config, key)), curve,
                  "curve_secret_key and curve_allow") for key in ("bind", "pub_bind")]
    if config.metrics_bind:  # plain HTTP, no authentication: never protected
        found.append(Door("metrics_bind", config.metrics_bind,
                          _is_local(config.metrics_bind), False, ""))
    if config.resp_bind:  # requirepass alone would send the password in the clear
        found.append(Door("resp_bind", config.resp_bind, _is_local(config.resp_bind),
                          bool(config.requirepass and config.resp_tls_cert),
                          "requirepass and resp_tls_cert/resp_tls_key",
                          f"{flag('requirepass')} PASSWORD (or {env_var('requirepass')}) "
                          f"{flag('resp_tls_cert')} FILE {flag('resp_tls_key')} FILE"))
    if config.repl_bind:  # the whole region goes out through it: protected as bind is
        found.append(Door("repl_bind", config.repl_bind, _is_local(config.repl_bind), curve,
                          "curve_secret_key and curve_allow"))
    return found


def _is_local(address: str) -> bool:
    transport, _, rest = address.rpartition("://")
    return transport in _LOCAL_TRANSPORTS or \
        (transport in ("tcp", "") and _is_loopback(_host_port(rest, any_port=True)[0]))


def _check_exposure(config: NodeConfig, sources: Mapping[str, str]) -> None:
    """Refuse a non-loopback door unless allow_remote says it is meant and it is protected."""
    if config.bind == config.pub_bind and not config.bind.endswith(":*"):
        raise ConfigError(f"bind and pub_bind are both {config.bind!r} "
                          f"({sources.get('bind', 'default')}, "
                          f"{sources.get('pub_bind', 'default')}): give each its own endpoint")
    for door in doors(config):
        if door.local:
            continue
        where = f"{sources.get(door.key, 'default')}, key {door.key!r}: {door.address!r} is " \
            "not a loopback address"
        if not door.protection:
            raise ConfigError(f"{where}, and {door.key} has no encrypted authentication: keep "
                              "it on loopback (reach it through a local proxy or an ssh "
                              "tunnel), or turn it off")
        if not config.allow_remote:
            raise ConfigError(
                f"{where}; to expose the region, also set allow_remote "
                f"({flag('allow_remote')}, {env_var('allow_remote')}=1, or allow_remote = true "
                f"in the config file), and protect it with {door.protection}")
        if not door.protected:
            raise ConfigError(
                f"{where}, and allow_remote is set but {door.key} is not protected: set "
                f"{door.protection} ({door.how})")


def _read_file(given: object, source: str) -> Mapping[str, object]:
    """The top-level table of a TOML or JSON config file."""
    path = Path(given) if isinstance(given, str | os.PathLike) and str(given) else Path()
    kind = path.suffix.lower()
    if kind not in (".toml", ".json"):  # the name says the format: no guessing from content
        raise ConfigError(f"{source}: expected the path of a *.toml or *.json file, got {given!r}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path} ({source}): cannot read it: "
                          f"{exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8")) if kind == ".toml" else json.loads(raw)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid {kind[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of settings at the top level, "
                          f"got {type(data).__name__}")
    return data
