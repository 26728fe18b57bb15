"""shmkv: a zero-copy shared-memory key/value cache for the processes of one host.

    import shmkv
    c = shmkv.Cache.create("demo", arena_bytes=64 << 20)   # in one process
    d = shmkv.Cache.open("demo")                            # in any other
    c.set("k", b"v"); d.get("k")  # -> b"v"
"""

from .backend import PurePythonWarning
from .cache import DEFAULT_ARENA_BYTES, DEFAULT_REGION, Cache
from . import errors
from .errors import *  # noqa: F403  (the hierarchy, listed once in errors.__all__)

__version__ = "0.1.0"

__all__ = sorted(["DEFAULT_ARENA_BYTES", "DEFAULT_REGION", "Cache", "PurePythonWarning",
                  "__version__",
                 *errors.__all__])
