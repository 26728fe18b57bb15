"""Which engine runs: the compiled core (`shmkv._core`, built from shmkv/_core_src/ by
`pip install .`) or the pure-Python reference, as msgpack and py-lmdb choose theirs.

Both provide READER_API (reader.py is the reference, tests/unit/test_core.py holds the two to
each other). The compiled one is used unless SHMKV_PURE_PYTHON=1 is set, or it is missing or
was built for another region layout; then the pure one runs and one PurePythonWarning says
why. `ENGINE` ("c" or "python") says which one new handles get; stats() and `shmkv status`
report a handle's own (`engine_of`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from . import layout as L
from . import reader as _pure

READER_API = ("get", "get_with_version", "get_below", "contains", "get_many", "get_list",
              "take_counts", "close")
# The compiled engine also has a Writer: the fast path of set, cas and incr (in-place
# overwrites), handing every other case to the Python write path. The pure engine has none.
WRITER_API = ("set", "cas", "incr", "take_counts", "close")


class PurePythonWarning(RuntimeWarning):
    """The compiled core could not be used; shmkv runs its pure-Python engine (correct, but
    reads are several times slower)."""


def _compiled() -> tuple[Any, str]:
    """(the compiled module, "") or (None, why not)."""
    if os.environ.get("SHMKV_PURE_PYTHON", "") not in ("", "0"):
        return None, ""  # asked for: no warning
    try:
        from . import _core
    except ImportError as exc:
        return None, f"shmkv._core cannot be imported ({exc}); reinstall shmkv with a C compiler"
    mismatched = sorted(name for name, value in _core.LAYOUT.items()
                        if getattr(L, name, None) != value)
    if mismatched:
        return None, (f"shmkv._core was built for another region layout ({', '.join(mismatched)}"
                      " differ); rebuild it: pip install --force-reinstall .")
    return _core, ""


_core, _why = _compiled()
if _why:
    warnings.warn(f"{_why}; using the pure-Python engine", PurePythonWarning, stacklevel=2)
Reader = _core.Reader if _core else _pure.Reader
Writer = _core.Writer if _core else None
# The compiled helpers of the doors and clients (None on the pure-Python engine): the RESP
# door's hot commands (resp.c), the ZeroMQ door's plain gets (zmqdoor.c), a RemoteCache's round
# trip (zmqcall.c) and the wire protocol's packed batches (packed.c)
resp_serve = _core.resp_serve if _core else None
PlainGets = _core.PlainGets if _core else None
RespLane = _core.RespLane if _core else None  # the RESP door's read lane (resp_lane.c)
zmq_call = _core.zmq_call if _core else None
zmtp_call = _core.zmtp_call if _core else None  # a direct link's round trip (clients/direct.py)
Frame = _core.Frame if _core else None  # a received frame zmq_call and PlainGets hand out
pack_c = _core.pack if _core else None
pack_found_c = _core.pack_found if _core else None
unpack_bytes_c = _core.unpack_bytes if _core else None
found_values_c = _core.found_values if _core else None
ENGINE = "c" if _core else "python"


def engine_of(reader: object) -> str:
    """"c" or "python": which engine a handle's reader is."""
    return "python" if isinstance(reader, _pure.Reader) else "c"


# SHMKV_COMPILED_ZMQ=0 turns off the compiled ZeroMQ paths (the node's plain gets, a client's
# round trip): the Python ones then run every request, as they do on the pure engine.
COMPILED_ZMQ_ENV = "SHMKV_COMPILED_ZMQ"


def compiled_zmq() -> bool:
    """Whether the compiled ZeroMQ paths run in this process: the compiled engine, pyzmq's
    libzmq found in it (import zmq first) and not turned off by SHMKV_COMPILED_ZMQ=0."""
    if _core is None or os.environ.get(COMPILED_ZMQ_ENV, "1") == "0":
        return False
    try:
        _core.zmq_bind()
    except ImportError:  # no libzmq of pyzmq's, or one older than 4.1
        return False
    return True
