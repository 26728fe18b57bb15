"""The `shmkv` command reports usage errors and refused regions as the one JSON error on
stderr (never a Rich box or a traceback), and takes --region-owner / $SHMKV_REGION_OWNER."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from typer.testing import CliRunner

import shmkv
from shmkv.cli import EXIT_ERROR, EXIT_USAGE, app

OTHER_UID = 54321


@pytest.fixture(autouse=True)
def no_caller_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("SHMKV_COLLECTION", "SHMKV_REGION", "SHMKV_REGION_OWNER"):
        monkeypatch.delenv(name, raising=False)


def _run(*args: str, code: int) -> Any:
    try:  # Click before 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    if code == 0:
        return json.loads(result.stdout)
    assert result.stdout == ""
    return json.loads(result.stderr)


@pytest.mark.parametrize(("args", "error", "names"), [
    (["init", "--arena-bytes", "64Q"], "BadParameter", "--arena-bytes"),
    (["serve", "--arena-bytes", "64Q"], "BadParameter", "--arena-bytes"),
    (["init", "--no-such-option"], "NoSuchOption", "--no-such-option"),
    (["put", "k"], "MissingParameter", "value"),
    (["no-such-command"], "UsageError", "no-such-command"),
    (["--region-owner", "no-such-user-of-this-host", "status"], "BadParameter",
     "--region-owner"),
])
def test_a_usage_error_is_one_json_error_naming_the_option(region_name: str, args: list[str],
                                                           error: str, names: str) -> None:
    doc = _run("--region", region_name, *args, code=EXIT_USAGE)
    assert doc["error"] == error
    assert names in doc["message"]
    assert not os.path.exists(f"/dev/shm/{region_name}")


def test_a_bad_region_from_the_environment_is_a_usage_error_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMKV_REGION", "not a name")
    doc = _run("status", code=EXIT_USAGE)
    assert doc["error"] == "BadParameter" and "$SHMKV_REGION" in doc["message"]


def test_a_usage_error_of_the_installed_command_is_json_too(region_name: str) -> None:
    """The same through the entry point, as a shell runs it (no CliRunner in between)."""
    result = subprocess.run(
        [sys.executable, "-m", "shmkv.cli", "--region", region_name, "init", "--arena-bytes",
         "64Q"], capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=60)
    assert result.returncode == EXIT_USAGE and result.stdout == ""
    assert json.loads(result.stderr)["error"] == "BadParameter"


def test_a_region_of_another_user_is_a_json_error_unless_its_owner_is_named(
        region_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with shmkv.Cache.create(region_name, 1 << 20) as c:
        c.set("k", "v")
        os.chown(f"/dev/shm/{region_name}", OTHER_UID, -1)
        for command in (["get", "k"], ["status"], ["init", "--exist-ok"]):
            doc = _run("--region", region_name, *command, code=EXIT_ERROR)
            assert doc["error"] == "PermissionDenied"
            assert "--region-owner" in doc["message"]
        got = _run("--region", region_name, "--region-owner", str(OTHER_UID), "get", "k",
                   code=0)
        assert got["value"] == "v"
        monkeypatch.setenv("SHMKV_REGION_OWNER", str(OTHER_UID))
        assert _run("--region", region_name, "get", "k", code=0)["value"] == "v"


@pytest.mark.parametrize(("change", "says"), [(-4096, "truncated"), (+4096, "extended")])
def test_doctor_says_a_region_file_was_resized_instead_of_failing_to_open_it(
        tmp_path, change: int, says: str) -> None:
    path = str(tmp_path / "region.shmkv")
    with shmkv.Cache.create(path, 1 << 20) as c:
        c.set("k", "v")
    with open(path, "rb") as f:
        original = f.read()
    region_bytes = len(original)
    os.truncate(path, region_bytes + change)
    doc = _run("--region", path, "doctor", code=0)
    assert doc["consistent"] is False
    [problem] = doc["problems"]
    assert says in problem and str(region_bytes) in problem and "SIGBUS" in problem
    with pytest.raises(shmkv.IncompatibleLayout, match=says):
        shmkv.Cache.open(path)
    with open(path, "r+b") as f:  # put it back as it was: the refusals changed nothing
        f.write(original)
        f.truncate()
    with shmkv.Cache.open(path) as c:
        assert c.get("k") == b"v"
    assert _run("--region", path, "doctor", code=0)["consistent"] is True
