"""The replication wire's framing: the tag, a message's frames, and their parsing (the ops and
their fields are broker/replication.py's table)."""

from __future__ import annotations

import json
from typing import Any

from shmkv.errors import ProtocolError

TAG = b"SHMKV-REPL/3"


def message(header: dict[str, Any], data: bytes = b"") -> list[bytes]:
    frames = [TAG, json.dumps(header).encode()]
    return frames + [data] if data else frames


def parse(frames: list[bytes]) -> tuple[dict[str, Any], bytes]:
    if len(frames) < 2 or frames[0] != TAG:
        raise ProtocolError(f"not a replication message of version {TAG.decode()}")
    header = json.loads(frames[1])
    if not isinstance(header, dict):
        raise ProtocolError("a replication header is a JSON object")
    return header, frames[2] if len(frames) > 2 else b""
