"""The one exception hierarchy of shmkv.

Every error the engine, the CLI, the broker and the clients raise on purpose derives from
`ShmKVError`. Each message says what to change. Where Python already defines the behaviour we
keep the builtin: a wrong argument type raises `TypeError`, `cache[key]` on a missing key raises
`KeyError`. Errors that are also a kind of bad value (`KeyTooLarge`, `NotAnInteger`, ...) derive
from `ValueError` as well, so generic handlers keep working.
"""

from __future__ import annotations


class ShmKVError(Exception):
    """Base class of every error raised by shmkv."""


class RegionExists(ShmKVError, FileExistsError):
    """A region of that name already exists (pass exist_ok=True to attach to it)."""


class RegionNotFound(ShmKVError, FileNotFoundError):
    """No region of that name exists (create it first with Cache.create)."""


class IncompatibleLayout(ShmKVError):
    """The region was written by another layout version or with other parameters."""


class CorruptRegion(ShmKVError):
    """The region's header or structures fail validation."""


class OutOfSpace(ShmKVError, OSError):
    """/dev/shm or the file system cannot hold a region of the requested size."""


class PermissionDenied(ShmKVError, PermissionError):
    """The system refused access to a region (EACCES/EPERM), or shmkv refused a region it
    should not trust: owned by another user than the one named, or writable by everyone."""


class KeyTooLarge(ShmKVError, ValueError):
    """The key is longer than the format allows."""


class ValueTooLarge(ShmKVError, ValueError):
    """The value can never fit in this region's arena."""


class RequestTooLarge(ValueTooLarge):
    """A request to a node, or its reply, is over one of the node's limits (message bytes,
    frames per message, keys per batch, reply bytes); the message names the limit."""


class RegionFull(ShmKVError):
    """The arena has no room for the value right now."""


class IndexFull(ShmKVError):
    """The hash index has no free slot for a new key."""


class LockTimeout(ShmKVError, TimeoutError):
    """A cross-process lock was not acquired in time."""


class CacheClosed(ShmKVError):
    """The handle was closed; open the region again."""


class NotAnInteger(ShmKVError, ValueError):
    """incr() found a value that is not a decimal 64-bit integer."""


class WrongType(ShmKVError, TypeError):
    """A string command (append, getdel, set(get=True), ...) met a value of another type: an
    array stored by set_array (Redis's WRONGTYPE)."""


class CollectionNotFound(ShmKVError, KeyError):
    """No collection of that name exists (or it was dropped)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CollectionExists(ShmKVError):
    """A collection of that name already exists."""


class TooManyCollections(ShmKVError):
    """The region's collection table is full."""


class CorruptSnapshot(ShmKVError):
    """A snapshot file is empty, truncated, damaged or not a snapshot; the message names the
    byte offset of the first damage (also in `offset`), and nothing was restored from it."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset

    def __reduce__(self) -> tuple[type, tuple[str, int]]:  # pickles with its offset
        return type(self), (str(self), self.offset)


class ReadOnlyReplica(ShmKVError):
    """Writes to the region are fenced: its write fence (writable_until_ns in the header) has
    passed. The region is a replica, or its primary's lease to write ran out: write to the
    current primary."""


class NotEnoughReplicas(ShmKVError):
    """The node refuses writes: fewer replicas are in sync than its --min-replicas-to-write
    (Redis's NOREPLICAS)."""


class ProtocolError(ShmKVError):
    """A message on the wire is malformed, of another protocol version, or of an unknown type."""


class RemoteUnavailable(ShmKVError, ConnectionError):
    """A node did not reply within the timeout, after every retry."""


class OutcomeUnknown(RemoteUnavailable):
    """A request that is not safe to repeat (incr, cas, append, ...) got no reply, or its
    node stopped being the primary meanwhile: it may or may not have been applied, and it was
    not sent again. Read the key to find out, then decide."""


class TooManyViews(ShmKVError):
    """This process has too many views open, or too many processes hold views."""


class ConfigError(ShmKVError, ValueError):
    """A node setting is unknown, of the wrong type or unparsable; the message names where it
    came from (config file, environment variable or flag) and the key."""


__all__ = [
    "CacheClosed",
    "CollectionExists",
    "CollectionNotFound",
    "ConfigError",
    "CorruptRegion",
    "CorruptSnapshot",
    "IncompatibleLayout",
    "IndexFull",
    "KeyTooLarge",
    "LockTimeout",
    "NotAnInteger",
    "NotEnoughReplicas",
    "OutOfSpace",
    "OutcomeUnknown",
    "PermissionDenied",
    "ProtocolError",
    "ReadOnlyReplica",
    "RegionExists",
    "RegionFull",
    "RegionNotFound",
    "RemoteUnavailable",
    "RequestTooLarge",
    "ShmKVError",
    "TooManyCollections",
    "TooManyViews",
    "ValueTooLarge",
    "WrongType",
]
