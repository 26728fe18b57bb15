"""The systems bench_peers.py runs side by side with shmkv: one small client class per system,
and the redis-server and memcached processes that two of them need.

The parent process sets every system up once (`start_systems`): a fresh shmkv region, an
LMDB environment on tmpfs, a redis-server and a memcached on unix sockets in a private temp
dir, a multiprocessing Manager. What a measuring process needs to reach a system is a `Spec`,
which pickles; `spec.open()` in that process returns a client with the same few members:

    get(key) -> bytes | None       a copy of the value
    set(key, value)                acknowledged: returns once the system holds the value
    view                           None (no zero-copy read), or a function such that
                                   `with client.view(key) as mv:` reads the value in place
    fill(pairs)                    bulk load, not timed
    close()

`get` and `set` are the underlying client's own bound methods wherever they fit, so that the
adapter adds no Python call to what is timed (py-lmdb's per-op txn needs one function).

Nothing here installs anything, and nothing touches a system-wide server: the servers are
started here, listen only on sockets in our temp dir (no TCP port) and are stopped by the
ExitStack the caller passes in, so also on Ctrl-C or an error.

Not a test module: pytest collects only tests/ (see pyproject.toml).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shmkv

try:  # peers, not dependencies: each one missing is skipped with a note
    import lmdb
except ImportError:
    lmdb = None
try:
    import redis
    import redis.utils
except ImportError:
    redis = None
try:
    import pymemcache
except ImportError:
    pymemcache = None

MIB = 1 << 20
SERVER_START_TIMEOUT_S = 15.0
SERVER_STOP_TIMEOUT_S = 10.0
FILL_CHUNK = 1000  # pairs per pipeline / set_many / update: bounded request sizes

HOW_TO_GET = {
    "py-lmdb": "pip install lmdb",
    "redis": "apt-get install redis-server (Debian/Ubuntu; any redis-server on PATH) and "
             "pip install redis hiredis",
    "memcached": "apt-get install memcached (any memcached on PATH) and pip install pymemcache",
}
# Python packages whose versions change what bench_peers.py measures.
PEER_PACKAGES = ("lmdb", "redis", "hiredis", "pymemcache")


# --- clients ------------------------------------------------------------------------------
class Client:
    """What every system offers a measuring process; subclasses bind get and set."""

    get: Callable[[bytes], bytes | None]
    set: Callable[[bytes, bytes], Any]
    view: Callable[[bytes], contextlib.AbstractContextManager[Any]] | None = None

    def fill(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        set_ = self.set
        for key, value in pairs:
            set_(key, value)

    def close(self) -> None:
        pass


class ShmkvClient(Client):
    def __init__(self, region: str) -> None:
        self._cache = shmkv.Cache.open(region)
        self.get = self._cache.get
        self.set = self._cache.set
        # Cache.view is new; an older shmkv has none and the table says "n/a".
        self.view = getattr(self._cache, "view", None)

    def close(self) -> None:
        self._cache.close()


class LmdbClient(Client):
    """py-lmdb with a transaction per op: a fresh read txn sees every commit made before it,
    as a cache shared between processes must; a reused one would read a stale snapshot."""

    def __init__(self, path: str, map_bytes: int) -> None:
        # sync/metasync off: no fsync per commit, so LMDB is a memory cache like shmkv, not a
        # durable store. Every process must open it with the same flags.
        self._env = lmdb.open(path, map_size=map_bytes, sync=False, metasync=False,
                              writemap=True)
        begin = self._env.begin

        def get(key: bytes) -> bytes | None:
            with begin() as txn:
                return txn.get(key)

        def set_(key: bytes, value: bytes) -> None:
            with begin(write=True) as txn:
                txn.put(key, value)

        @contextlib.contextmanager
        def view(key: bytes) -> Iterator[Any]:
            with begin(buffers=True) as txn:
                yield txn.get(key)  # a buffer into the map: valid only until the txn ends

        self.get, self.set, self.view = get, set_, view

    def fill(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        with self._env.begin(write=True) as txn:
            for key, value in pairs:
                txn.put(key, value)

    def close(self) -> None:
        self._env.close()


def _chunks(pairs: Iterable[tuple[bytes, bytes]], n: int) -> Iterator[dict[bytes, bytes]]:
    chunk: dict[bytes, bytes] = {}
    for key, value in pairs:
        chunk[key] = value
        if len(chunk) == n:
            yield chunk
            chunk = {}
    if chunk:
        yield chunk


class RedisClient(Client):
    def __init__(self, socket_path: str) -> None:
        # redis-py picks the hiredis parser by itself when hiredis is installed.
        self._redis = redis.Redis(unix_socket_path=socket_path)
        self.get = self._redis.get
        self.set = self._redis.set

    def fill(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for chunk in _chunks(pairs, FILL_CHUNK):
            self._redis.mset(chunk)

    def close(self) -> None:
        self._redis.close()


class MemcachedClient(Client):
    def __init__(self, socket_path: str) -> None:
        # default_noreply=False: pymemcache's default sends sets without waiting for the
        # reply, which would time a write into a socket buffer, not a stored value.
        self._mc = pymemcache.Client(socket_path, default_noreply=False)
        self.get = self._mc.get
        self.set = self._mc.set

    def fill(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for chunk in _chunks(pairs, FILL_CHUNK):
            failed = self._mc.set_many(chunk)
            if failed:
                raise RuntimeError(f"memcached refused {len(failed)} sets (is -m too small?)")

    def close(self) -> None:
        self._mc.close()


class ManagerDictClient(Client):
    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy
        self.get = proxy.get
        self.set = proxy.__setitem__

    def fill(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for chunk in _chunks(pairs, FILL_CHUNK):
            self._proxy.update(chunk)


class DictClient(Client):
    """A plain dict of this process: not shared, so only for single-process workloads."""

    def __init__(self) -> None:
        self._dict: dict[bytes, bytes] = {}
        self.get = self._dict.get
        self.set = self._dict.__setitem__


@dataclass(frozen=True)
class Spec:
    """How any process reaches one system. round_trip: every op is a request and a reply over
    a socket (tens of µs), so timing each op alone costs nothing by comparison. shared: other
    processes see the same data (False for the plain dict)."""

    name: str
    client: type[Client]
    kwargs: dict[str, Any] = field(default_factory=dict)
    round_trip: bool = False
    shared: bool = True

    def open(self) -> Client:
        return self.client(**self.kwargs)


# --- servers ------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    # Runs in the server between fork and exec. If this script is SIGKILLed, its cleanup never
    # runs; with this the kernel still sends the server SIGTERM.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Server:
    """A server process we started, listening on a unix socket in our temp dir."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 ready: Callable[[], bool]) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            # Its own session: a Ctrl-C reaches only this script, which then stops the server
            # in order, after the processes that use it.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        try:
            self._wait_ready(ready)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start ({self.proc.returncode}): "
                                   + self.log_path.read_text(errors="replace")[-500:])
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within {SERVER_START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _answers(client_type: type[Client], socket_path: Path, probe: str) -> Callable[[], bool]:
    def ready() -> bool:
        if not socket_path.exists():
            return False
        client = client_type(str(socket_path))
        try:
            getattr(client, probe)()
            return True
        finally:
            client.close()
    return ready


def start_redis(dir_path: Path) -> Server:
    sock = dir_path / "redis.sock"
    argv = [shutil.which("redis-server") or "redis-server",
            "--port", "0",                       # no TCP listener at all
            "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no",  # a cache: no snapshots, no log
            "--dir", str(dir_path), "--daemonize", "no"]
    return Server("redis-server", argv, dir_path / "redis.log",
                  _answers(_RedisProbe, sock, "ping"))


def start_memcached(dir_path: Path, max_value_bytes: int, data_bytes: int) -> Server:
    sock = dir_path / "memcached.sock"
    item_mib = max(1, -(-max_value_bytes // MIB) + 1)  # the value, its key and header
    # memcached refuses an item limit above half its memory; memory is not reserved up front.
    memory_mib = max(1024, 4 * item_mib + 2 * (-(-data_bytes // MIB)))
    argv = [shutil.which("memcached") or "memcached", "-s", str(sock), "-a", "0700",
            "-m", str(memory_mib), "-I", f"{item_mib}m"]
    if os.geteuid() == 0:  # memcached will not run as root unless told which user to be
        argv += ["-u", pwd.getpwuid(0).pw_name]
    return Server("memcached", argv, dir_path / "memcached.log",
                  _answers(_MemcachedProbe, sock, "version"))


class _RedisProbe(RedisClient):
    def ping(self) -> None:
        self._redis.ping()


class _MemcachedProbe(MemcachedClient):
    def version(self) -> None:
        self._mc.version()


def server_versions() -> dict[str, str | None]:
    """Versions of the server binaries on PATH (None where absent), for the report."""
    def first_line(argv: list[str]) -> str | None:
        if not shutil.which(argv[0]):
            return None
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return out.strip().splitlines()[0] if out.strip() else None

    redis_line = first_line(["redis-server", "--version"])  # "Redis server v=7.0.15 sha=..."
    mc_line = first_line(["memcached", "-V"])                 # "memcached 1.6.18"
    return {
        "redis-server": redis_line.split("v=", 1)[1].split()[0] if redis_line and "v=" in
        redis_line else redis_line,
        "memcached-server": mc_line.split()[-1] if mc_line else None,
    }


# --- setting every system up --------------------------------------------------------------
@dataclass(frozen=True)
class Sizing:
    """What the stores must hold: the small keys plus a few large values."""

    max_keys: int
    data_bytes: int           # keys + values of the small-value workloads
    max_value_bytes: int      # the largest value any workload stores
    shmkv_arena_bytes: int
    lmdb_map_bytes: int


SYSTEMS = ("shmkv", "py-lmdb", "redis", "memcached", "Manager().dict()", "dict")


def missing_reason(name: str) -> str | None:
    """Why a peer cannot run here (and how to get it), or None if it can."""
    if name == "py-lmdb" and lmdb is None:
        return "py-lmdb is not installed"
    if name == "redis" and (redis is None or not shutil.which("redis-server")):
        return "redis-py or redis-server is not installed"
    if name == "memcached" and (pymemcache is None or not shutil.which("memcached")):
        return "pymemcache or memcached is not installed"
    return None


def redis_parser() -> str:
    return "hiredis" if redis is not None and redis.utils.HIREDIS_AVAILABLE else \
        "pure-Python parser (pip install hiredis)"


def start_systems(stack: contextlib.ExitStack, dir_path: Path, sizing: Sizing,
                  wanted: Iterable[str]) -> tuple[list[Spec], list[str]]:
    """Set up each wanted system; register its teardown on stack. Returns the specs, in
    SYSTEMS order, and one note per system skipped."""
    specs: list[Spec] = []
    notes: list[str] = []
    for name in [s for s in SYSTEMS if s in set(wanted)]:
        reason = missing_reason(name)
        if reason:
            notes.append(f"{name}: skipped, {reason} ({HOW_TO_GET[name]}).")
            continue
        specs.append(_START[name](stack, dir_path, sizing))
    return specs, notes


def _start_shmkv(stack: contextlib.ExitStack, _: Path, sizing: Sizing) -> Spec:
    region = f"shmkvpeers-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shmkv.Cache.create(region, arena_bytes=sizing.shmkv_arena_bytes,
                       max_keys=sizing.max_keys).close()
    stack.callback(shmkv.Cache.unlink, region)
    return Spec("shmkv", ShmkvClient, {"region": region})


def _start_lmdb(_: contextlib.ExitStack, dir_path: Path, sizing: Sizing) -> Spec:
    path = dir_path / "lmdb"  # the temp dir, on tmpfs when there is one; removed with it
    path.mkdir()
    return Spec("py-lmdb", LmdbClient, {"path": str(path), "map_bytes": sizing.lmdb_map_bytes})


def _start_redis(stack: contextlib.ExitStack, dir_path: Path, _: Sizing) -> Spec:
    server = start_redis(dir_path)
    stack.callback(server.stop)
    return Spec("redis", RedisClient, {"socket_path": str(dir_path / "redis.sock")},
                round_trip=True)


def _start_memcached(stack: contextlib.ExitStack, dir_path: Path, sizing: Sizing) -> Spec:
    server = start_memcached(dir_path, sizing.max_value_bytes, sizing.data_bytes)
    stack.callback(server.stop)
    return Spec("memcached", MemcachedClient, {"socket_path": str(dir_path / "memcached.sock")},
                round_trip=True)


def _start_manager(stack: contextlib.ExitStack, _: Path, __: Sizing) -> Spec:
    manager = multiprocessing.get_context("spawn").Manager()
    stack.callback(manager.shutdown)
    return Spec("Manager().dict()", ManagerDictClient, {"proxy": manager.dict()},
                round_trip=True)


def _start_dict(_: contextlib.ExitStack, __: Path, ___: Sizing) -> Spec:
    return Spec("dict", DictClient, shared=False)


_START: dict[str, Callable[[contextlib.ExitStack, Path, Sizing], Spec]] = {
    "shmkv": _start_shmkv, "py-lmdb": _start_lmdb, "redis": _start_redis,
    "memcached": _start_memcached, "Manager().dict()": _start_manager, "dict": _start_dict,
}
