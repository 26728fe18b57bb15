"""shmkv: a zero-copy shared-memory key/value cache for the processes of one host.

    import shmkv
    c = shmkv.Cache.create("demo", arena_bytes=64 << 20)   # in one process
    d = shmkv.Cache.open("demo")                            # in any other
    c.set("k", b"v"); d.get("k")  # -> b"v"
"""

from .cache import DEFAULT_ARENA_BYTES, DEFAULT_REGION, Cache
from .errors import (
    CacheClosed,
    CollectionExists,
    CollectionNotFound,
    CorruptRegion,
    IncompatibleLayout,
    IndexFull,
    KeyTooLarge,
    LockTimeout,
    NotAnInteger,
    OutOfSpace,
    RegionExists,
    RegionFull,
    RegionNotFound,
    ShmKVError,
    TooManyCollections,
    ValueTooLarge,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ARENA_BYTES",
    "DEFAULT_REGION",
    "Cache",
    "CacheClosed",
    "CollectionExists",
    "CollectionNotFound",
    "CorruptRegion",
    "IncompatibleLayout",
    "IndexFull",
    "KeyTooLarge",
    "LockTimeout",
    "NotAnInteger",
    "OutOfSpace",
    "RegionExists",
    "RegionFull",
    "RegionNotFound",
    "ShmKVError",
    "TooManyCollections",
    "ValueTooLarge",
    "__version__",
]
