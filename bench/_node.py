"""A node (`shmkv serve`) for the benchmarks: one way to start it, stop it and clean up."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import shmkv


@contextlib.contextmanager
def running_node(region: str, *options: str, arena_bytes: int | str = "64M",
                 unlink: bool = True, stderr: Any = None, stop_timeout_s: float = 30,
                 env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """A node serving region, its request and publish sockets on ephemeral loopback ports and
    metrics off (options add or override: a later flag wins), with env added to this process's
    environment; yields its ready event. At the end it is stopped (SIGTERM) and, if unlink, its
    region removed."""
    # a neutral cwd: in a checkout, ./shmkv would shadow the installed package
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmkv.cli", "--region", region, "serve", "--arena-bytes",
         str(arena_bytes), "--bind", "tcp://127.0.0.1:*", "--pub-bind", "tcp://127.0.0.1:*",
         "--metrics-bind", "off", *options],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tempfile.gettempdir(),
        env={**os.environ, **env} if env else None)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the node for {region} did not start")
        yield json.loads(line)
    finally:
        proc.terminate()
        proc.wait(stop_timeout_s)
        proc.stdout.close()  # type: ignore[union-attr]
        if unlink:
            shmkv.Cache.unlink(region)
