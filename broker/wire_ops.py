"""The commands of the wire protocol (protocol.py): what each request carries and what its
reply holds. protocol.py owns the format (frames, headers, limits, errors); this module owns
its command table, REQUEST_FRAMES (the payload frames of each command's request) and
RESENDABLE (the commands a client may send again), so that a command is added in one place.

Commands. "key", "value": one payload frame each; "k1 v1 k2 v2 ..": pairs of frames. A key
frame holds the key's bytes (a str key in UTF-8, which the engine treats as the same key).
    op                request fields     request frames   reply result          reply frames
    ping              -                  -                {"protocol_version",  -
                                                          "limits", "role"; with
                                                          workers: "workers",
                                                          "worker_hint"}
    get               coll               key              found: bool           value if found
    get_with_version  coll               key              version or null       value if found
    set               coll, ttl_s        key, value       null                  -
    cas               coll, version,     key, value       stored: bool          -
                      ttl_s
    incr              coll, delta        key              the new int           -
    delete            coll               key              deleted: bool         -
    contains          coll               key              bool                  -
    len               coll               -                int                   -
    keys              coll               -                count: int            one per key
    ttl               coll               key              seconds or null       -
    expire            coll, ttl_s        key              bool                  -
    persist           coll               key              bool                  -
    clear             coll               -                removed: int          -
    stats             coll               -                the stats dict        -
    get_many          coll               keys (packed)    [found: bool, ..]     the values found
                                                                                (packed)
    set_many          coll, ttl_s        keys, values     null                  -
                                         (both packed)
    set_array         coll, ttl_s,       key, data        null                  -
                      dtype, shape
    get_array         coll               key              {dtype, shape}|null   data if found
    collection        name               -                null (creates it)     -
    collections       -                  -                [names]               -
    rename_collection old, new           -                null                  -
    drop_collection   name               -                removed: int          -
    publish           -                  channel, message null                  -
    set_options       coll, ttl_s, nx,   key, value       get: found: bool      get: old value
                      xx, keepttl, get                    else stored: bool     if found
                                                          or null
    getdel            coll               key              found: bool           value if found
    getex             coll, ttl_s,       key              found: bool           value if found
                      persist
    append            coll               key, value       the new length        -
    rename            coll, nx           old key, new key bool                  -
    strlen            coll               key              int                   -
    type              coll               key              str or null           -
    promote           -                  -                {"role", "repl_id",   -
                                                          "epoch"}
    replicaof         primary (endpoint  -                {"role", "primary"}   -
                      or "none")
    wait              n_replicas         -                {"replicas": int}     -
    exists            coll               keys (packed)    how many are present  -
                                                          (a key twice: twice)
    delete_many       coll               keys (packed)    how many deleted      -
    scan              coll, cursor,      pattern          the next cursor       the keys found
                      count                                (0: done)            (packed)

`wait` (RemoteCache.wait, Redis's WAIT) counts the replicas that have applied everything up to
the primary's offset after this connection's last write through the node (`after`, which the
node sets itself; broker/dispatch.py); it answers at once, the client asks again.

`set_options` is a set with any of Cache.set's options (nx, xx, keepttl, get; false when
absent), and returns what Cache.set returns; it is a command of its own rather than fields of
`set` so that a node that predates the options refuses it (unknown command) instead of doing a
plain set. The commands after it are Cache's of the same name (shmkv/commands.py).

`publish` sends message to the subscribers of channel through the region, as a local
Cache.publish does; channels are node-wide (any coll is ignored), a channel frame follows the
rules of a key frame. What subscribers receive is specified in pubsub.py (the PUB socket's
message format).

`exists`, `delete_many` and `scan` are Redis's EXISTS, DEL of many keys and SCAN, the model's
operations of the same name (dispatch.py's docstring), which the Redis door uses too. A batch
of keys is packed, as get_many's, with its limit (max_batch_keys); the same key twice counts
twice in exists, once in delete_many. delete_many is not atomic (a key at a time, as Redis's
DEL of many keys) and not resent after a timeout: its count would be of the second try only.
scan's `cursor` is an int (0 to start; dispatch.py says what it stands for), `count` an int
> 0 or null (null: every key, in one reply); its pattern frame is a Redis glob (b"*": every
key). The keys found travel packed, within max_reply_bytes. A key present from a scan's first
call to its last is returned at least once, as Redis's SCAN promises; one written or deleted
meanwhile may or may not be, and a key may come twice.
"""

from __future__ import annotations

# Payload frames a request carries, per command.
REQUEST_FRAMES: dict[str, int] = {
    "ping": 0, "get": 1, "get_with_version": 1, "set": 2, "cas": 2, "incr": 1, "delete": 1,
    "contains": 1, "len": 0, "keys": 0, "ttl": 1, "expire": 1, "persist": 1, "clear": 0,
    "stats": 0, "get_many": 2, "set_many": 4, "set_array": 2, "get_array": 1,
    "collection": 0, "collections": 0, "rename_collection": 0, "drop_collection": 0,
    "publish": 2, "set_options": 2, "getdel": 1, "getex": 1, "append": 2, "rename": 2,
    "strlen": 1, "type": 1, "promote": 0, "replicaof": 0, "wait": 0,
    "exists": 2, "delete_many": 2, "scan": 1,
}

# The commands whose payload is a packed batch of keys (not a key in its first frame).
KEY_BATCH_OPS = frozenset({"get_many", "exists", "delete_many"})

# The commands that change the region: refused under --min-replicas-to-write when too few
# replicas are in sync, the ones after which the node notes a client's offset (WAIT), and
# those after which a client asks a wait on the connection that carried them.
WRITE_OPS = frozenset({"set", "set_options", "cas", "incr", "delete", "expire", "persist",
                       "clear", "set_many", "set_array", "rename_collection",
                       "drop_collection", "getdel", "getex", "append", "rename",
                       "delete_many"})

# Requests a client may send again when their reply did not come (a timeout, a node gone):
# applied twice they leave the same state and give the same answer. Any other (incr, cas,
# append, getdel, rename, clear, publish, delete_many, ...) may have been applied already, so
# its client raises OutcomeUnknown instead; a request not listed here is never resent (the
# safe default).
RESENDABLE = frozenset({
    "ping", "get", "get_with_version", "contains", "len", "keys", "ttl", "stats", "get_many",
    "get_array", "collections", "strlen", "type", "set", "set_many", "set_array", "delete",
    "expire", "persist", "collection", "exists", "scan",
})
