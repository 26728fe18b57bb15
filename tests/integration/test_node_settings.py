"""A node started with a setting it cannot run with exits at once with a JSON error naming the
setting and where it came from, and leaves nothing behind (no region, no hung process): run
as real `shmkv serve` processes, killed with SIGKILL if they do not exit (a node that hangs
with its stop signals blocked ignores SIGTERM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from node_process import start_node

EXIT_TIMEOUT_S = 30  # a refused start takes well under a second; this only bounds a hang


def _finish(process: subprocess.Popen[str]) -> tuple[int | None, str, str]:
    """(exit status, or None if it had to be killed; stdout; stderr)."""
    try:
        out, err = process.communicate(timeout=EXIT_TIMEOUT_S)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return None, out, err


@pytest.mark.parametrize(("key", "value"), [
    ("pub_hwm", "3000000000"),
    ("maintain_interval_s", "1e-300"),
    ("arena_bytes", "9" * 30),
])
@pytest.mark.parametrize("source", ["flag", "environment", "config file"])
def test_a_node_with_an_out_of_range_setting_exits_at_once_naming_it(
        region_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str,
        value: str, source: str) -> None:
    options: list[str] = []
    if source == "flag":
        options = ["--" + key.replace("_", "-"), value]
        where = "flag --" + key.replace("_", "-")
    elif source == "environment":
        monkeypatch.setenv("SHMKV_" + key.upper(), value)
        where = "environment variable SHMKV_" + key.upper()
    else:
        path = tmp_path / "node.toml"
        path.write_text(f"{key} = {value}\n")
        options = ["--config", str(path)]
        where = f"config file {path}"
    code, out, err = _finish(start_node(region_name, *options))
    assert code == 2, (code, out, err)
    assert out == ""
    error = json.loads(err)
    assert error["error"] == "ConfigError"
    assert error["message"].startswith(f"{where}, key '{key}'")
    assert not os.path.exists(f"/dev/shm/{region_name}")


def test_a_node_whose_socket_setup_fails_closes_its_sockets_and_exits(region_name: str) -> None:
    """Past the settings check (a NodeConfig made directly): ZeroMQ refuses the high-water
    mark after the publish socket exists. The node must close that socket and return the
    error, not wait for it forever in zmq_ctx_term with its stop signals blocked."""
    script = (
        "from shmkv.broker.config import NodeConfig\n"
        "from shmkv.broker.server import serve\n"
        f"config = NodeConfig(region={region_name!r}, pub_hwm=3_000_000_000, "
        "bind='tcp://127.0.0.1:*', pub_bind='tcp://127.0.0.1:*', metrics_bind='')\n"
        "try:\n"
        "    serve(config)\n"
        "except (OverflowError, ValueError) as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    code, out, err = _finish(process)
    assert code == 0, (code, out, err)
    assert out.startswith("refused")
