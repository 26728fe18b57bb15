"""Following the primary among several nodes: what `RemoteCache([url, url, ...])` talks
through.

A `Primary` holds one connection per node (made by the RemoteCache, without retries of their
own) and sends each request to the node that said, in its ping reply, that it is the primary
(the highest epoch wins should two say so, as during a failover one may still believe it).
When that node does not answer, or answers ReadOnlyReplica (it was demoted: the write was
refused, so nothing was applied), it looks for the primary again, every node in turn, until
the call's time is up (timeout_s x (retries + 1)).

What is sent again after that, and what is not:
  * ReadOnlyReplica: anything (the node refused it before changing anything).
  * no reply: only requests in protocol.RESENDABLE (reads, set, delete, expire, ...), which
    give the same result when applied twice; any other (incr, cas, append, getdel, rename, ...) raises
    OutcomeUnknown, a RemoteUnavailable: it may have been applied, and the caller decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from shmkv.broker.protocol import RESENDABLE
from shmkv.errors import OutcomeUnknown, ReadOnlyReplica, RemoteUnavailable

FIND_PAUSE_S = 0.05  # between two passes over the nodes while none says it is the primary


class Link(Protocol):
    endpoint: str
    timeout_s: float
    closed: bool

    def call(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = ()) -> Any: ...
    def close(self) -> None: ...


class Primary:
    """The connection of a RemoteCache given several endpoints (see the module docstring)."""

    def __init__(self, endpoints: Sequence[str], connect: Callable[[str], Link],
                 retries: int) -> None:
        if not endpoints or not all(isinstance(e, str) for e in endpoints):
            raise ValueError("give one endpoint or a list of endpoints (str)")
        self.links = [connect(e) for e in endpoints]
        self.retries = retries
        self.current: Link | None = None
        self.closed = False

    @property
    def endpoint(self) -> str:
        return (self.current or self.links[0]).endpoint

    def check_batch(self, count: int) -> None:
        self.links[0].check_batch(count)  # type: ignore[attr-defined]

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.closed = True

    def connection(self) -> Link:
        """The primary's own connection (for a pipeline, whose requests are in flight on one
        connection: an error after a failover reaches its futures, nothing is sent again)."""
        deadline = time.monotonic() + self.links[0].timeout_s * (self.retries + 1)
        return self.current or self._find(deadline, "pipeline")

    def call(self, op: str, fields: dict[str, Any], frames: Sequence[Any] = ()) -> Any:
        deadline = time.monotonic() + self.links[0].timeout_s * (self.retries + 1)
        while True:
            link = self.current or self._find(deadline, op)
            try:
                return link.call(op, fields, frames)
            except ReadOnlyReplica:
                self.current = None  # demoted: refused before anything changed
                if time.monotonic() >= deadline:
                    raise
            except RemoteUnavailable as exc:
                self.current = None
                if op not in RESENDABLE:
                    raise OutcomeUnknown(
                        f"{op} got no reply from the primary {link.endpoint}: it may or may "
                        "not have been applied, and was not sent again (it is not safe to "
                        "repeat); read the key to find out") from exc
                if time.monotonic() >= deadline:
                    raise

    def _find(self, deadline: float, op: str) -> Link:
        """The node that says it is the primary (pinging each in turn until deadline)."""
        while True:
            best: tuple[int, Link] | None = None
            for link in self.links:
                try:
                    role = link.call("ping", {}).result.get("role") or {}
                except RemoteUnavailable:
                    continue
                if role.get("role") in ("primary", "none"):
                    epoch = int(role.get("epoch", 0))
                    if best is None or epoch > best[0]:
                        best = (epoch, link)
            if best is not None:
                self.current = best[1]
                return best[1]
            if time.monotonic() + FIND_PAUSE_S >= deadline:
                raise RemoteUnavailable(
                    f"no primary among {', '.join(link.endpoint for link in self.links)} "
                    f"for {op}: none answered, or all are replicas (a failover may be under "
                    "way)")
            time.sleep(FIND_PAUSE_S)
