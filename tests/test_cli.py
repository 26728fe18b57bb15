"""The `shmkv` command: one JSON document per command, JSON errors on stderr, exit codes, and
the current collection kept per region in the state file."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests_support import new_region_name
from typer.testing import CliRunner

import shmkv
from shmkv.cli import app


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the state file under tmp_path and ignore the shmkv variables of the caller."""
    state_home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    monkeypatch.delenv("SHMKV_COLLECTION", raising=False)
    monkeypatch.delenv("SHMKV_REGION", raising=False)
    return state_home


def _runner() -> CliRunner:
    try:  # Click before 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


class Shmkv:
    """Runs the CLI in-process against one region."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.runner = _runner()

    def __call__(self, *args: str, code: int = 0) -> Any:
        """Run a command, check its exit code, and return its JSON: stdout's on success,
        stderr's on failure (when stdout must stay empty)."""
        result = self.runner.invoke(app, ["--region", self.region, *args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        if code == 0:
            return json.loads(result.stdout)
        assert result.stdout == ""
        return json.loads(result.stderr)


@pytest.fixture
def cli(region_name: str) -> Shmkv:
    return Shmkv(region_name)


@pytest.fixture
def region(cli: Shmkv) -> Shmkv:
    """The CLI on a freshly created small region."""
    cli("init", "--arena-bytes", "4M")
    return cli


@pytest.fixture
def other_region() -> Iterator[Shmkv]:
    """The CLI on a second region, unlinked after the test whatever happened."""
    name = new_region_name()
    try:
        cli = Shmkv(name)
        cli("init", "--arena-bytes", "1M")
        yield cli
    finally:
        shmkv.Cache.unlink(name)


# --- region ---------------------------------------------------------------------------------
def test_init_prints_stats_of_the_new_region(cli: Shmkv) -> None:
    stats = cli("init", "--arena-bytes", "4M")
    assert stats["region"] == cli.region
    assert stats["arena_bytes"] == 4 << 20
    assert stats["items"] == 0


@pytest.mark.parametrize("size, expected", [("1M", 1 << 20), ("512K", 512 << 10),
                                            ("2MiB", 2 << 20), ("1048576", 1 << 20)])
def test_init_accepts_size_suffixes(cli: Shmkv, size: str, expected: int) -> None:
    assert cli("init", "--arena-bytes", size)["arena_bytes"] == expected


def test_init_with_a_bad_size_is_a_usage_error(cli: Shmkv) -> None:
    result = cli.runner.invoke(app, ["--region", cli.region, "init", "--arena-bytes", "4X"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert not os.path.exists(f"/dev/shm/{cli.region}")


def test_init_twice_without_exist_ok_fails_with_RegionExists(region: Shmkv) -> None:
    error = region("init", code=1)
    assert error["error"] == "RegionExists"
    assert "--exist-ok" in error["message"]


def test_init_with_exist_ok_attaches_to_the_existing_region(region: Shmkv) -> None:
    region("put", "k", "v")
    stats = region("init", "--exist-ok")
    assert stats["items"] == 1
    assert stats["arena_bytes"] == 4 << 20  # the size it was created with


@pytest.mark.parametrize("command", [
    ["status"], ["stats"], ["list"], ["new", "c"], ["use", "c"], ["rename", "a", "b"],
    ["delete", "c"], ["put", "k", "v"], ["get", "k"], ["del", "k"], ["clear"],
])
def test_commands_on_absent_region_exit_1_with_RegionNotFound(cli: Shmkv,
                                                              command: list[str]) -> None:
    error = cli(*command, code=1)
    assert error["error"] == "RegionNotFound"
    assert "shmkv" in error["message"] and "init" in error["message"]


def test_region_comes_from_SHMKV_REGION_when_not_given(
        region: Shmkv, monkeypatch: pytest.MonkeyPatch) -> None:
    region("put", "k", "v")
    monkeypatch.setenv("SHMKV_REGION", region.region)
    result = region.runner.invoke(app, ["get", "k"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"key": "k", "value": "v"}


def test_file_backed_region_is_named_by_a_path(tmp_path: Path) -> None:
    path = str(tmp_path / "region.shmkv")
    try:
        cli = Shmkv(path)
        cli("init", "--arena-bytes", "1M")
        cli("new", "c")
        cli("use", "c")
        cli("put", "k", "v")
        assert cli("get", "k") == {"key": "k", "value": "v"}
        assert cli("status")["collection"] == "c"
    finally:
        shmkv.Cache.unlink(path)


def test_status_reports_current_collection_and_sizes(region: Shmkv) -> None:
    region("new", "c")
    region("put", "k1", "v", "-c", "c")
    region("put", "k2", "v", "-c", "c")
    region("use", "c")
    status = region("status")
    assert status["region"] == region.region
    assert status["collection"] == "c"
    assert status["keys"] == 2
    assert status["collections"] == 1
    assert status["arena_used_bytes"] > 0
    assert status["arena_free_bytes"] > 0
    assert status["engine"] == shmkv.backend.ENGINE


def test_stats_prints_counters(region: Shmkv) -> None:
    region("put", "a", "1")
    region("put", "a", "2")
    region("del", "a")
    stats = region("stats")
    assert stats["sets"] == 2
    assert stats["deletes"] == 1
    assert stats["items"] == 0
    assert {"evictions", "expirations", "arena_bytes", "arena_used_bytes"} <= stats.keys()


def test_unlink_removes_the_region(region: Shmkv) -> None:
    assert region("unlink") == {"unlinked": True}
    assert region("status", code=1)["error"] == "RegionNotFound"
    assert region("unlink") == {"unlinked": False}


# --- keys -----------------------------------------------------------------------------------
def test_put_then_get_prints_value_as_json(region: Shmkv) -> None:
    assert region("put", "greeting", "héllo")["stored"] is True
    assert region("get", "greeting") == {"key": "greeting", "value": "héllo"}


def test_get_missing_key_exits_3_with_json_error(region: Shmkv) -> None:
    error = region("get", "absent", code=3)
    assert error["error"] == "KeyError"
    assert "absent" in error["message"]


def test_binary_values_come_back_as_base64(region: Shmkv) -> None:
    raw = b"\xff\x00\xfe binary"
    with shmkv.Cache.open(region.region) as c:
        c.set("blob", raw)
    value = region("get", "blob")["value"]
    assert base64.b64decode(value["base64"]) == raw


def test_put_with_ttl_expires_the_key(region: Shmkv) -> None:
    assert region("put", "k", "v", "--ttl", "0.5")["ttl"] == 0.5
    assert region("get", "k")["value"] == "v"
    # No sleeping: look at the region through a clock that is already past the TTL.
    later = shmkv.Cache.open(region.region, clock=lambda: time.time_ns() + 10**9)
    try:
        assert later.get("k") is None
    finally:
        later.close()


def test_put_with_a_bad_ttl_is_a_usage_error_with_json(region: Shmkv) -> None:
    assert region("put", "k", "v", "--ttl", "-1", code=2)["error"] == "ValueError"
    region("get", "k", code=3)


def test_del_reports_whether_the_key_was_there(region: Shmkv) -> None:
    region("put", "k", "v")
    assert region("del", "k") == {"deleted": True}
    assert region("del", "k") == {"deleted": False}
    region("get", "k", code=3)


def test_clear_removes_only_the_current_collections_keys(region: Shmkv) -> None:
    region("new", "c")
    region("put", "in-c", "v", "-c", "c")
    region("put", "in-default-1", "v")
    region("put", "in-default-2", "v")
    assert region("clear") == {"removed": 2}
    assert region("get", "in-c", "-c", "c")["value"] == "v"


def test_key_commands_refuse_a_collection_that_does_not_exist(region: Shmkv) -> None:
    error = region("put", "k", "v", "-c", "nope", code=1)
    assert error["error"] == "CollectionNotFound"
    assert region("list")["collections"] == []  # not created on the way


# --- collections ------------------------------------------------------------------------------
def test_new_collection_shows_in_list(region: Shmkv) -> None:
    assert region("new", "users") == {"created": "users"}
    region("new", "orders")
    assert region("list") == {"collections": ["orders", "users"], "current": ""}


def test_new_existing_collection_fails_with_CollectionExists(region: Shmkv) -> None:
    region("new", "users")
    assert region("new", "users", code=1)["error"] == "CollectionExists"


def test_bad_collection_name_is_a_usage_error_with_json(region: Shmkv) -> None:
    assert region("new", "x" * 100, code=2)["error"] == "ValueError"


def test_use_makes_later_puts_land_in_that_collection(region: Shmkv) -> None:
    region("new", "c")
    assert region("use", "c") == {"current": "c"}
    region("put", "k", "v")
    assert region("list")["current"] == "c"
    with shmkv.Cache.open(region.region) as cache:
        assert cache.get("k") is None
        assert cache.collection("c").get("k") == b"v"


def test_use_unknown_collection_fails_with_CollectionNotFound(region: Shmkv) -> None:
    assert region("use", "nope", code=1)["error"] == "CollectionNotFound"
    assert region("list")["current"] == ""


@pytest.mark.parametrize("back", [[""], ["--default"]])
def test_use_default_goes_back_to_the_default_collection(region: Shmkv, back: list[str]) -> None:
    region("new", "c")
    region("use", "c")
    assert region("use", *back) == {"current": ""}
    region("put", "k", "v")
    with shmkv.Cache.open(region.region) as cache:
        assert cache.get("k") == b"v"


def test_use_needs_a_name_or_default_but_not_both(region: Shmkv) -> None:
    region("new", "c")
    for args in (["use"], ["use", "c", "--default"]):
        result = region.runner.invoke(app, ["--region", region.region, *args])
        assert result.exit_code == 2
        assert result.stdout == ""


def test_use_persists_the_choice_under_XDG_STATE_HOME(region: Shmkv, isolated_env: Path) -> None:
    region("new", "c")
    region("use", "c")
    [state_file] = (isolated_env / "shmkv").glob("*.json")
    assert json.loads(state_file.read_text()) == {region.region: "c"}


def test_use_is_remembered_per_region(region: Shmkv, other_region: Shmkv) -> None:
    region("new", "c")
    region("use", "c")
    assert region("list")["current"] == "c"
    assert other_region("list")["current"] == ""


def test_env_collection_overrides_the_state_file(
        region: Shmkv, monkeypatch: pytest.MonkeyPatch) -> None:
    region("new", "chosen")
    region("new", "from-env")
    region("use", "chosen")
    monkeypatch.setenv("SHMKV_COLLECTION", "from-env")
    region("put", "k", "v")
    assert region("status")["collection"] == "from-env"
    assert region("get", "k", "-c", "from-env")["value"] == "v"
    region("get", "k", "-c", "chosen", code=3)


def test_collection_option_overrides_env_and_state_file(
        region: Shmkv, monkeypatch: pytest.MonkeyPatch) -> None:
    region("new", "chosen")
    region("new", "from-env")
    region("new", "from-option")
    region("use", "chosen")
    monkeypatch.setenv("SHMKV_COLLECTION", "from-env")
    region("put", "k", "v", "--collection", "from-option")
    with shmkv.Cache.open(region.region) as cache:
        assert cache.collection("from-option").get("k") == b"v"
        assert cache.collection("from-env").get("k") is None
        assert cache.collection("chosen").get("k") is None


def test_rename_keeps_current_collection_selected(region: Shmkv) -> None:
    region("new", "old")
    region("use", "old")
    region("put", "k", "v")
    assert region("rename", "old", "new") == {"renamed": "old", "to": "new"}
    assert region("list") == {"collections": ["new"], "current": "new"}
    assert region("get", "k")["value"] == "v"


def test_rename_onto_an_existing_collection_fails_with_CollectionExists(region: Shmkv) -> None:
    region("new", "a")
    region("new", "b")
    assert region("rename", "a", "b", code=1)["error"] == "CollectionExists"


def test_delete_collection_removes_its_keys(region: Shmkv) -> None:
    region("new", "c")
    region("put", "k1", "v", "-c", "c")
    region("put", "k2", "v", "-c", "c")
    region("put", "kept", "v")
    assert region("delete", "c") == {"collection": "c", "removed": 2}
    assert region("list")["collections"] == []
    assert region("stats")["items"] == 1
    region("new", "c")  # a new collection of that name starts empty
    region("get", "k1", "-c", "c", code=3)


def test_deleting_the_current_collection_goes_back_to_the_default(region: Shmkv) -> None:
    region("new", "c")
    region("use", "c")
    region("delete", "c")
    assert region("status")["collection"] == ""


def test_delete_unknown_collection_fails_with_CollectionNotFound(region: Shmkv) -> None:
    assert region("delete", "nope", code=1)["error"] == "CollectionNotFound"


# --- the installed command ----------------------------------------------------------------------
def _shmkv_command() -> list[str]:
    # The console script of the interpreter running the tests, not one elsewhere on PATH.
    script = shutil.which("shmkv", path=sysconfig.get_path("scripts"))
    return [script] if script else [sys.executable, "-m", "shmkv.cli"]


def test_installed_command_runs_init_put_get(region_name: str, isolated_env: Path) -> None:
    env = {**os.environ, "SHMKV_REGION": region_name, "XDG_STATE_HOME": str(isolated_env)}

    def run(*args: str) -> Any:
        done = subprocess.run([*_shmkv_command(), *args], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert run("init", "--arena-bytes", "1M")["region"] == region_name
    assert run("put", "k", "v")["stored"] is True
    assert run("get", "k") == {"key": "k", "value": "v"}


def test_doctor_reports_a_consistent_region(region: Shmkv) -> None:
    region("put", "k", "v")
    assert region("doctor") == {"region": region.region, "consistent": True, "problems": [],
                                "repaired": None, "view_records": []}


def test_doctor_repair_reclaims_a_block_a_dead_writer_leaked(region: Shmkv) -> None:
    with shmkv.Cache.open(region.region) as c:  # a block allocated, never published
        c._locks.acquire_arena()
        c._region.arena.alloc_locked(256)
        c._locks.release_arena()
    assert region("doctor")["consistent"] is False
    report = region("doctor", "--repair")
    assert report["consistent"] is True and report["repaired"]["blocks_reclaimed"] == 1


def test_gc_without_yes_is_a_dry_run_that_prints_one_json_report(region: Shmkv) -> None:
    # gc of the real host, so only a dry run here: tests/unit/test_gc.py removes orphans in a
    # private IPC namespace and /dev/shm.
    region("put", "k", "v")
    report = region("gc")
    assert set(report) == {"dry_run", "grace_s", "searched", "orphans", "kept", "removed",
                           "failed"}
    assert report["dry_run"] is True and report["removed"] == report["failed"] == 0
    assert region.region not in {o["region"] for o in report["orphans"] + report["kept"]}
    assert region("get", "k") == {"key": "k", "value": "v"}


def test_gc_with_a_negative_grace_period_is_a_usage_error(region: Shmkv) -> None:
    assert region("gc", "--grace-s", "-1", code=2)["error"] == "ValueError"


# --- snapshot and restore -----------------------------------------------------------------
def test_snapshot_then_restore_into_a_new_region_creates_it_sized_from_the_snapshot(
        region: Shmkv, tmp_path: Path) -> None:
    region("put", "k", "v", "--ttl", "600")
    region("new", "users")
    region("put", "u", "w", "-c", "users")
    path = str(tmp_path / "s.snp")
    report = region("snapshot", path)
    assert report["keys"] == 2 and report["collections"] == ["users"]
    assert report["path"] == path and report["bytes"] == os.path.getsize(path)
    name = new_region_name()
    try:
        fresh = Shmkv(name)
        restored = fresh("restore", path)
        assert restored["created"] is True and restored["keys"] == 2
        assert fresh("get", "k") == {"key": "k", "value": "v"}
        assert fresh("get", "u", "-c", "users") == {"key": "u", "value": "w"}
        with shmkv.Cache.open(name) as c:
            assert 590 < c.ttl("k") <= 600
    finally:
        shmkv.Cache.unlink(name)


def test_restore_without_replace_keeps_the_regions_own_keys_and_with_replace_drops_them(
        region: Shmkv, other_region: Shmkv, tmp_path: Path) -> None:
    region("put", "k", "from the snapshot")
    region("snapshot", str(tmp_path / "s.snp"))
    other_region("put", "own", "kept")
    assert other_region("restore", str(tmp_path / "s.snp"))["created"] is False
    assert other_region("get", "own") == {"key": "own", "value": "kept"}
    other_region("restore", str(tmp_path / "s.snp"), "--replace")
    assert other_region("get", "own", code=3)["error"] == "KeyError"
    assert other_region("get", "k") == {"key": "k", "value": "from the snapshot"}


def test_restore_of_a_damaged_file_fails_with_json_and_creates_no_region(
        cli: Shmkv, tmp_path: Path) -> None:
    bad = tmp_path / "bad.snp"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    error = cli("restore", str(bad), code=1)
    assert error["error"] == "CorruptSnapshot" and "byte offset 0" in error["message"]
    assert cli("status", code=1)["error"] == "RegionNotFound"


def test_restore_of_a_damaged_file_into_a_new_region_unlinks_the_region_it_made(
        region: Shmkv, cli: Shmkv, tmp_path: Path) -> None:
    region("put", "k", "v")
    path = tmp_path / "s.snp"
    region("snapshot", str(path))
    data = bytearray(path.read_bytes())
    data[-20] ^= 1  # the trailer: the header is fine, so the region is made, then refused
    path.write_bytes(bytes(data))
    name = new_region_name()
    try:
        assert Shmkv(name)("restore", str(path), code=1)["error"] == "CorruptSnapshot"
        assert not shmkv.Cache.unlink(name)
    finally:
        shmkv.Cache.unlink(name)


def test_snapshot_or_restore_of_a_missing_path_fails_with_json(region: Shmkv,
                                                               tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "s.snp")
    assert region("snapshot", missing, code=1)["error"] == "FileNotFoundError"
    assert region("restore", missing, code=1)["error"] == "FileNotFoundError"


def test_snapshot_draws_a_progress_bar_on_stderr_only_when_it_is_a_terminal(
        region_name: str, isolated_env: Path, tmp_path: Path) -> None:
    import pty

    with shmkv.Cache.create(region_name, arena_bytes=8 << 20) as c:
        for i in range(10_000):
            c.set(f"k{i}", b"v")
    env = {**os.environ, "XDG_STATE_HOME": str(isolated_env), "SHMKV_REGION": region_name}
    argv = [*_shmkv_command(), "snapshot", str(tmp_path / "s.snp")]
    plain = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and plain.stderr == ""
    assert json.loads(plain.stdout)["keys"] == 10_000
    primary, secondary = pty.openpty()
    try:
        on_tty = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=secondary,
                                text=True, timeout=60)
        os.close(secondary)
        secondary = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the other side is closed and everything was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert on_tty.returncode == 0 and json.loads(on_tty.stdout)["keys"] == 10_000
    assert b"snapshot [" in drawn and b"100% 10000/10000" in drawn
