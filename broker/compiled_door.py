"""The ZeroMQ door's compiled path: the plain gets and get_manys waiting on the ROUTER, read,
answered and sent in C (shmkv/_core_src/zmqdoor.c, whose docstring says which it leaves to
Python), on pyzmq's own libzmq and socket. zmq_door.py calls it where it would read a request
itself (serve) and where its loop would poll (wait: the poll in C, answering the plain requests
that come while nothing else does), while nothing waits to go out before a reply (a parked
request, an event for a subscriber).

Why: through pyzmq and the Python loop a get costs the node ~25 us of CPU more than the same
round trip in C (bench/README.md, "The compiled door"): a node answers more gets per core and
each sooner.

It is used where backend.compiled_zmq() says the compiled ZeroMQ paths run (the compiled engine,
pyzmq's libzmq found; SHMKV_COMPILED_ZMQ=0 in the node's environment turns them off, and the
Python path answers every request: bench/bench_compiled_door.py compares the two).
"""

from __future__ import annotations

from typing import Any

import zmq

import shmkv
from shmkv import backend

from . import compact, protocol
from .metrics import LATENCY_BUCKETS_S, Metrics
from .zerocopy import ZeroCopy

# A value this large or larger goes the Python way even when nothing is lent from a pin: the C
# path copies a value twice (out of the region, into the message), pyzmq's once for large ones.
COPY_BELOW_BYTES = zmq.COPY_THRESHOLD
_GET, _GET_MANY = 0, 1  # PlainGets.counts's ops
_NO_LIMIT = 2**64 - 1


def plain_gets(requests: shmkv.Cache, router: zmq.Socket, zero_copy: ZeroCopy,
               metrics: Metrics | None, max_reply_bytes: int | None) -> Any:
    """The compiled plain gets and get_manys of this door (its requests' Cache handle and
    ROUTER; the node's limit on a reply, None for none), counted in metrics; None where the
    compiled ZeroMQ paths do not run (backend.compiled_zmq). Drop it before the socket is
    closed."""
    pair = requests.compiled_pair()
    if pair is None or not backend.compiled_zmq():
        return None
    tag = protocol.PROTOCOL_TAG
    copy_below = COPY_BELOW_BYTES
    if zero_copy.ops and zero_copy.min_bytes:
        copy_below = min(copy_below, zero_copy.min_bytes)
    gets = backend.PlainGets(
        reader=pair[0], socket=router, request_prefix=tag + compact.PLAIN_GET,
        request_bytes=len(tag) + compact.PLAIN_GET_BYTES,
        id_at=len(tag) + compact.PLAIN_GET_ID_AT, reply_prefix=tag + compact.REPLY_FORM_BYTE,
        reply_found=compact.FOUND[0], reply_missing=compact.NOT_FOUND[0],
        max_frames=protocol.MAX_FRAMES, copy_below=copy_below, bounds_s=LATENCY_BUCKETS_S,
        many_prefix=tag + compact.PLAIN_GET_MANY, reply_bools=compact.BOOLS[0],
        max_batch_keys=protocol.MAX_BATCH_KEYS,
        max_reply_bytes=_NO_LIMIT if max_reply_bytes is None else max_reply_bytes)
    if metrics is not None:
        metrics.requests.add_source("get", "ok", lambda: gets.counts(_GET))
        metrics.requests.add_source("get_many", "ok", lambda: gets.counts(_GET_MANY))
    return gets
