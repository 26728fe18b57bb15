"""Failover through etcd: the nodes of a cluster elect their primary with an etcd lease, as
Patroni does for PostgreSQL. etcd decides; this module never votes nor counts anything itself.

`shmkv serve --etcd URL[,URL] --cluster NAME --advertise tcp://HOST:PORT --repl-bind ...`

Keys (values are JSON objects; PREFIX = /shmkv/<cluster>)
------------------------------------------------------------
    key                      lease       value                         written
    PREFIX/leader            the node's  {"advertise", "name",         by a txn that succeeds
                                         "writes", "epoch_before"}     only if the key does not
                                         (writes: each stripe's        exist (create_revision
                                         counter when it took over;    == 0)
                                         epoch_before: the epoch it
                                         had copied; a demoted node
                                         counts what it discards by
                                         them, roles.py)
    PREFIX/members/<advert>  the node's  {"advertise", "role",         every loop
                                         "epoch", "offset"}            (epoch: its region's, or
                                                                       the leader's it copied)
    PREFIX/initialize        none        {"advertise"}                 once, by the node that
                                                                       may create the cluster's
                                                                       first region (delete it
                                                                       by hand if that node
                                                                       never came up)

The leader key's create revision is the epoch: written in the region header's repl_epoch on
promotion (a replication that stamps it on its replies lets replicas refuse an older term's).
One lease per node holds both of its keys; its TTL is lease_ttl_s.

The loop (every loop_interval_s, in the node's loop: a switch of role happens between requests)
    t0 = now (unix ns, taken BEFORE the renewal is sent)
    renew the lease (keepalive; a new one if it expired), write the member key, read the leader
    primary:  the leader key is still ours (same lease, same create revision)
                 -> writable_until_ns = t0 + TTL - retry_timeout_s       (the fence moves on)
              else -> fence now, and go on as a replica below
    other:    a leader that is not this node -> follow it (roles.follow)
              no leader, and this node has the highest (epoch, offset, advertise) among the
              live members that are not primary -> create the leader key in a txn; on
              success, promote with epoch = its revision and the fence as above
    an etcd request fails (retry_timeout_s each) -> nothing moves: a primary's fence passes
              by itself, so it stops taking writes; it says so once on stderr
A replica whose primary stopped answering gives the node's loop back to this one after 0.1 s
(roles.py), so that it can take over within the lease.

Fencing timeline (one primary P, its replica R; TTL = lease_ttl_s, m = retry_timeout_s)
    time           P                                   etcd                R
    t0             sends keepalive                     lease renewed at
                                                       t >= t0: expires at
                                                       >= t0 + TTL
    t0 + TTL - m   its fence passes: every write
                   refused (node requests and local
                   processes alike, under the key's
                   lock) unless a later renewal
                   succeeded
    >= t0 + TTL                                        lease expires;
                                                       leader key deleted
    next loop                                                              sees no leader; the
                                                                           best candidate
                                                                           creates the key:
                                                                           epoch E+1
    then                                                                   promoted: writable
    P resumes      its fence has passed; the leader                        (its own fence)
                   key is another's -> follows R, and
                   discards (counts, logs) what R
                   never had
So the two never accept writes at the same moment: P's last accepted write is before t0 + TTL
- m, R's first after the lease's expiry at etcd, which is after t0 + TTL (clocks are compared
only on one host each: only their rates must agree, within m / TTL).

What this is not: strong consistency. Replication is asynchronous: writes a primary
acknowledged and its replicas had not copied when it died are lost in a failover (or
discarded, counted and logged, when it comes back).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

import shmkv
from shmkv import layout as L
from shmkv import replica as RP
from shmkv.errors import ConfigError, RegionNotFound, ShmKVError

from .config import NodeConfig
from .replication import Emit, Stopped
from .roles import Roles, Takeover

try:
    from etcd3gw.client import Etcd3Client
    from etcd3gw.exceptions import Etcd3Exception
except ImportError:  # pragma: no cover - the optional extra is missing
    Etcd3Client = None


class EtcdUnavailable(ShmKVError):
    """No etcd endpoint answered in time."""


class Etcd:
    """The few etcd v3 calls failover needs, over the JSON gateway (etcd3gw), trying each
    of the cluster's URLs in turn."""

    def __init__(self, urls: list[str], timeout_s: float) -> None:
        if Etcd3Client is None:
            raise ConfigError("--etcd needs the etcd client: pip install 'shmkv[failover]'")
        self.clients = []
        for url in urls:
            scheme, _, rest = url.partition("://")
            host, _, port = rest.rpartition(":")
            self.clients.append(Etcd3Client(host=host.strip("[]"), port=int(port),
                                            protocol=scheme, timeout=timeout_s))
        self._at = 0  # the client that answered last

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for i in range(len(self.clients)):
            client = self.clients[(self._at + i) % len(self.clients)]
            try:
                found = client.post(client.get_url(path), json=body)
            except (Etcd3Exception, OSError, ValueError) as exc:
                last = exc
                continue
            self._at = (self._at + i) % len(self.clients)
            return found  # type: ignore[no-any-return]
        raise EtcdUnavailable(f"no etcd endpoint answered {path}: {last}")

    def grant(self, ttl_s: int) -> tuple[int, int]:
        """(lease id, TTL granted)."""
        found = self._post("/lease/grant", {"TTL": ttl_s, "ID": 0})
        return int(found["ID"]), int(found["TTL"])

    def keepalive(self, lease: int) -> int:
        """The TTL renewed, or <= 0 if the lease has expired."""
        found = self._post("/lease/keepalive", {"ID": lease})
        return int(found.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self._post("/kv/lease/revoke", {"ID": lease})

    def put(self, key: str, value: dict[str, Any], lease: int = 0) -> None:
        self._post("/kv/put", {"key": _b64(key), "value": _b64(json.dumps(value)),
                               "lease": lease})

    def get(self, key: str) -> tuple[dict[str, Any], int, int] | None:
        """(value, create revision, lease) of key, or None."""
        kvs = self._post("/kv/range", {"key": _b64(key)}).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> list[dict[str, Any]]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        kvs = self._post("/kv/range", {"key": _b64(prefix), "range_end": _b64(end)})
        return [_kv(kv)[0] for kv in kvs.get("kvs") or []]

    def create(self, key: str, value: dict[str, Any], lease: int = 0) -> int | None:
        """Create key if it does not exist: its create revision, or None if it existed."""
        found = self._post("/kv/txn", {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE",
                         "create_revision": 0}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(json.dumps(value)),
                                         "lease": lease}}],
        })
        return int(found["header"]["revision"]) if found.get("succeeded") else None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _kv(kv: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    try:
        value = json.loads(base64.b64decode(kv.get("value", "")))
    except ValueError:
        value = {}
    return (value if isinstance(value, dict) else {}), int(kv.get("create_revision", 0)), \
        int(kv.get("lease", 0))


class Failover:
    """The election loop of one node (see the module docstring)."""

    def __init__(self, config: NodeConfig, roles: Roles, emit: Emit,
                 wait: Callable[[zmq.Poller, int], bool] | None = None,
                 clock: Callable[[], int] = time.time_ns, etcd: Etcd | None = None) -> None:
        for key in ("cluster", "advertise", "repl_bind"):
            if not getattr(config, key):
                raise ConfigError(f"etcd is set ({config.etcd}), so {key} must be too "
                                  f"(--{key.replace('_', '-')})")
        if config.replica_of:
            raise ConfigError("etcd is set, so etcd chooses the primary: drop replica_of")
        self.config, self.roles, self.emit, self.clock = config, roles, emit, clock
        self._wait = wait or roles._wait
        self.etcd = etcd or Etcd(config.etcd.split(","), config.retry_timeout_s)
        self.prefix = f"/shmkv/{config.cluster}/"
        self.me = config.advertise
        self.lease = 0
        self.lease_ttl_s = config.lease_ttl_s
        self.epoch = 0  # the create revision of the leader key this node holds
        self.synced_epoch = 0  # see _note_synced
        self._next = 0.0
        self._failing = False

    # --- start: before the region is open ----------------------------------------------
    def start(self) -> str:
        """The primary to copy at start ("" = open this node's own region), once etcd says:
        a leader that is another node -> its endpoint; none, and this node has a region or
        is the first to claim the cluster's initialization -> "". Else waits for a leader."""
        said = False
        while True:
            try:
                leader = self.etcd.get(self.prefix + "leader")
                if leader is not None and leader[0].get("advertise") not in (None, self.me):
                    return str(leader[0]["advertise"])
                if leader is None and (_region_exists(self.config) or self.etcd.create(
                        self.prefix + "initialize", {"advertise": self.me}) is not None):
                    return ""
                why = "a leader key of this node's past run to expire" if leader else \
                    "another node to create the cluster's first region"
            except EtcdUnavailable as exc:
                why = f"etcd: {exc}"
            if not said:
                self.emit("failover_waiting", waiting_for=why)
                said = True
            if not self._wait(zmq.Poller(), int(self.config.loop_interval_s * 1000)):
                raise Stopped()

    # --- the loop ----------------------------------------------------------------------
    def due(self) -> float:
        return self._next

    def tick(self) -> None:
        self._next = time.monotonic() + self.config.loop_interval_s
        t0 = self.clock()
        try:
            ttl_s = self._renew()
            region = self.roles._cache()._region
            self.etcd.put(self.prefix + "members/" + self.me, {
                "advertise": self.me, "role": self.roles.role,
                "epoch": max(int(region.q[L.H_REPL_EPOCH >> 3]), self.synced_epoch),
                "offset": RP.replication_offset(region)}, self.lease)
            leader = self.etcd.get(self.prefix + "leader")
            self._note_synced(leader)
            until_ns = t0 + ttl_s * 1_000_000_000 - int(self.config.retry_timeout_s * 1e9)
            if self.roles.role == "primary":
                if leader is not None and leader[1] == self.epoch and leader[2] == self.lease:
                    self.roles.fence_until(until_ns)
                else:
                    self.roles.fence()
                    self.emit("leader_lost", epoch=self.epoch)
            if self.roles.role != "primary":
                self._follow_or_run(leader, until_ns)
        # (KeyError, TypeError, ValueError: a reply not shaped as etcd's: a proxy, a bug)
        except (EtcdUnavailable, KeyError, TypeError, ValueError) as exc:
            if not self._failing:
                print(json.dumps({"event": "etcd_unavailable", "role": self.roles.role,
                                  "message": str(exc)}), file=sys.stderr, flush=True)
            self._failing = True
            return
        if self._failing:
            self.emit("etcd_resumed", role=self.roles.role)
        self._failing = False

    def _note_synced(self, leader: tuple[dict[str, Any], int, int] | None) -> None:
        """The epoch of the leader this node has copied from (a round done since it followed
        it): what its member key ranks it by, besides the region's repl_epoch, which only a
        promotion (or a replication that stamps epochs) writes. A node demoted from an old
        term thus ranks below replicas of the current one until it has synced from it."""
        replica = getattr(self.roles, "replica", None)
        if leader is not None and self.roles.role == "replica" and replica is not None \
                and replica.primary == leader[0].get("advertise") and replica.rounds > 0:
            self.synced_epoch = max(self.synced_epoch, leader[1])

    def _renew(self) -> int:
        """Keep the node's lease alive (a new one if it expired); the TTL granted."""
        if self.lease:
            ttl_s = self.etcd.keepalive(self.lease)
            if ttl_s > 0:
                return ttl_s
            self.emit("lease_expired", lease=self.lease)
        self.lease, ttl_s = self.etcd.grant(self.config.lease_ttl_s)
        return ttl_s

    def _follow_or_run(self, leader: tuple[dict[str, Any], int, int] | None,
                       until_ns: int) -> None:
        if leader is not None:
            primary = leader[0].get("advertise")
            if isinstance(primary, str) and primary != self.me \
                    and self.roles.primary != primary:
                try:
                    self.roles.follow(primary, Takeover.of(leader[0]))
                except EtcdUnavailable:
                    raise
                except ShmKVError as exc:  # its region is not a copy, it did not answer...
                    print(json.dumps({"event": "follow_failed", "primary": primary,
                                      "error": type(exc).__name__, "message": str(exc)}),
                          file=sys.stderr, flush=True)  # fenced still: tried again next loop
            return
        if not self._best_candidate():
            return
        # Fenced, and no round runs until the promotion below: these are its counters then
        region = self.roles._cache()._region
        revision = self.etcd.create(self.prefix + "leader", {
            "advertise": self.me, "name": self.config.region,
            "writes": RP.stripe_counters(region)[1],
            "epoch_before": int(region.q[L.H_REPL_EPOCH >> 3])}, self.lease)
        if revision is None:  # another node was faster: followed next loop
            return
        self.epoch = revision
        self.roles.promote(epoch=revision, writable_until_ns=until_ns)

    def _best_candidate(self) -> bool:
        """Whether this node has the highest (epoch, offset, advertise) among the live
        members that are not primary (itself included)."""
        members = [m for m in self.etcd.get_prefix(self.prefix + "members/")
                   if m.get("role") != "primary"]

        def rank(m: dict[str, Any]) -> tuple[int, int, str]:
            return int(m.get("epoch", 0)), int(m.get("offset", 0)), str(m.get("advertise"))

        mine = [m for m in members if m.get("advertise") == self.me]
        return bool(mine) and rank(max(members, key=rank)) == rank(mine[0])

    def close(self) -> None:
        """On a clean stop: give the lease back, so that a primary's successor need not
        wait for it to expire (its fence is set first: no write after this)."""
        if not self.lease:
            return
        if self.roles.role == "primary" and self.roles.cache is not None:
            self.roles.fence_until(RP.FENCED)
        try:
            self.etcd.revoke(self.lease)
        except EtcdUnavailable:
            pass
        self.lease = 0


def _region_exists(config: NodeConfig) -> bool:
    try:
        shmkv.Cache.open(config.region, owner=config.region_owner or None).close()
    except RegionNotFound:
        return False
    return True
