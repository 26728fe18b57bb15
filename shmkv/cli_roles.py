"""`shmkv promote` and `shmkv replicaof URL|none`: change a running node's replication role by
hand (without etcd), over the node's request socket. Registered when cli.py imports this module."""

from __future__ import annotations

from typing import Annotated

import typer

from .cli_app import _REGION, _emit, _reporting_errors, app

_NODE = typer.Option("--node", help="The node's request endpoint (its --bind).",
                     metavar="ENDPOINT")
_TIMEOUT = typer.Option("--timeout-s", help="Seconds to wait for the node's reply.")


@app.command(rich_help_panel=_REGION)
def promote(node: Annotated[str, _NODE] = "tcp://127.0.0.1:7370",
            timeout_s: Annotated[float, _TIMEOUT] = 5.0) -> None:
    """Make a running replica node the primary: it stops copying its primary, takes a new
    replication id (keeping the old one), and accepts writes. Prints its new role."""
    from .clients.remote import RemoteCache

    with _reporting_errors(), RemoteCache(node, timeout_s=timeout_s, retries=0) as remote:
        _emit(remote.promote())


@app.command(rich_help_panel=_REGION)
def replicaof(primary: Annotated[str, typer.Argument(
                  help="The primary's replication endpoint (its --repl-bind), or none.",
                  metavar="ENDPOINT|none")],
              node: Annotated[str, _NODE] = "tcp://127.0.0.1:7370",
              timeout_s: Annotated[float, _TIMEOUT] = 30.0) -> None:
    """Make a running node a replica of PRIMARY (writes are refused from now on; what only
    this node had is replaced by the primary's copy), or a primary with none. Prints its new
    role."""
    from .clients.remote import RemoteCache

    with _reporting_errors(), RemoteCache(node, timeout_s=timeout_s, retries=0) as remote:
        _emit(remote.replicaof(primary))
