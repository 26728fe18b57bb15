"""Pipelines of a `RemoteCache`: many requests in flight on its connection, and a future for
each reply (remote.py's docstring says how they behave).

    with cache.pipeline() as p:
        f = p.get("a")
        g = p.set("b", b"2")
    f.result(), g.result()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shmkv.broker.protocol import Reply
from shmkv.errors import CacheClosed

from .commands import Commands

if TYPE_CHECKING:
    from .connection import Connection as _Connection
    from .connection import _Sent


class RemoteFuture:
    """The reply to a pipelined request: result() waits for it (if it has not come yet) and
    returns what the call would have returned, or raises what it would have raised."""

    __slots__ = ("_link", "_sent", "_decode")

    def __init__(self, link: _Connection, sent: _Sent, decode: Callable[[Reply], Any]) -> None:
        self._link, self._sent, self._decode = link, sent, decode

    def done(self) -> bool:
        """True once the reply (or the error that stands for it) is here."""
        return self._sent.reply is not None or self._sent.error is not None

    def result(self) -> Any:
        return self._decode(self._link.wait(self._sent))


class Pipeline(Commands):
    """The key commands of a RemoteCache (get, set, get_many, incr, ...), each queued to be
    sent in a batch (remote.py's docstring) without waiting for its reply: each returns a
    RemoteFuture. Leaving `with` sends what is queued and waits for the replies still due; an
    exception leaving it abandons them."""

    def __init__(self, link: _Connection, collection_name: str) -> None:
        self._link = link
        self.collection_name = collection_name
        self._sent: list[_Sent] = []
        self._closed = False

    def _do(self, op: str, frames: Sequence[Any], decode: Callable[[Reply], Any],
            **fields: Any) -> RemoteFuture:
        if self._closed:
            raise CacheClosed("this pipeline has ended; start another with pipeline()")
        if self.collection_name:
            fields["coll"] = self.collection_name
        sent = self._link.send(op, fields, frames, hold=True)
        self._sent.append(sent)
        return RemoteFuture(self._link, sent, decode)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._closed = True
        if exc_type is None:
            self._link.flush()
            self._link.settle(self._sent)
        else:
            self._link.abandon(self._sent)
        self._sent.clear()
