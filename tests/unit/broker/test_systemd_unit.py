"""systemd/shmkv.service: the directives the node relies on, the SHMKV_* defaults (which must
load), and `systemd-analyze verify` when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from shmkv.broker.config import FIELDS, env_var, load_config

UNIT_PATH = Path(__file__).resolve().parents[3] / "systemd" / "shmkv.service"
Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """INI-style parsing as configparser does it, but keeping every value of a repeated key
    (systemd appends Environment=, SystemCallFilter=, ... instead of replacing them)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and section is not None, f"line {number} is not Key=value: {line!r}"
        assert not value.endswith("\\"), f"line {number}: keep directives on one line"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT_PATH.read_text())


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, is {values}"
    return values[0]


def seconds(value: str) -> float:
    """systemd time spans as used in the unit: 10s, 1min, 500ms, or plain seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    assert match, f"not a time span: {value!r}"
    return float(match[1]) * {"ms": 1e-3, "s": 1.0, "min": 60.0, None: 1.0}[match[2]]


def test_unit_has_the_three_sections(unit: Unit) -> None:
    assert {"Unit", "Service", "Install"} <= set(unit)
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_service_notifies_systemd_and_has_a_watchdog(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert seconds(one(unit, "Service", "WatchdogSec")) > 0


def test_service_restarts_on_failure_and_stops_on_sigterm(unit: Unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "KillMode") == "mixed"  # the node stops its workers itself
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > 0
    # exit status 2 is the CLI's usage/configuration error: restarting cannot fix it
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"


def test_service_runs_as_a_static_user_that_keeps_its_region(unit: Unit) -> None:
    """RemoveIPC=yes removes the user's POSIX shm objects, the files in /dev/shm, when the
    unit stops, and DynamicUser=yes implies it: the region would be unlinked at every stop.
    A static system user with RemoveIPC=no keeps it."""
    assert one(unit, "Service", "User") == "shmkv"
    assert unit["Service"].get("DynamicUser", ["no"]) == ["no"]
    assert one(unit, "Service", "RemoveIPC") == "no"


def _covers_dev_shm(value: str) -> bool:
    """Whether a path setting's value names /dev/shm or a directory above it. Values are
    space-separated paths, each perhaps prefixed with - or + and followed by :options."""
    for entry in value.split():
        path = entry.lstrip("-+").split(":", 1)[0].rstrip("/") or "/"
        if path in ("/", "/dev", "/dev/shm"):
            return True
    return False


def test_dev_shm_stays_the_hosts_and_writable(unit: Unit) -> None:
    """The region is a /dev/shm object: the unit must see the host's /dev/shm, writable. (A
    private IPC namespace would not matter: the region's locks live in it, not in SysV IPC.)"""
    service = unit["Service"]
    for key in ("InaccessiblePaths", "TemporaryFileSystem", "ReadOnlyPaths", "BindPaths",
                "BindReadOnlyPaths"):
        assert not any(_covers_dev_shm(v) for v in service.get(key, [])), key
    assert _covers_dev_shm("-/dev/shm:ro") and _covers_dev_shm("/dev") \
        and not _covers_dev_shm("/var/lib/shmkv /dev/shmkv")


def test_service_has_a_runtime_directory(unit: Unit) -> None:
    assert one(unit, "Service", "RuntimeDirectory") == "shmkv"


def test_exec_start_runs_shmkv_serve_by_absolute_path(unit: Unit) -> None:
    command = one(unit, "Service", "ExecStart").split()
    assert command[0].startswith("/") and command[0].endswith("/shmkv")
    assert command[1:] == ["serve"]


def test_environment_defaults_are_known_settings_that_load(unit: Unit) -> None:
    env = dict(v.split("=", 1) for v in unit["Service"]["Environment"])
    shmkv_vars = {k for k in env if k.startswith("SHMKV_")}
    known = {env_var(field) for field in FIELDS} | {"SHMKV_CONFIG"}
    assert shmkv_vars <= known, f"unknown variables in the unit: {shmkv_vars - known}"
    assert {"SHMKV_REGION", "SHMKV_ARENA_BYTES", "SHMKV_BIND", "SHMKV_PUB_BIND",
            "SHMKV_METRICS_BIND"} <= shmkv_vars
    config = load_config({}, env=env)  # the unit's defaults are a valid configuration
    assert (config.region, config.arena_bytes) == ("shmkv", 64 << 20)


def test_comments_say_what_the_service_owns_and_who_unlinks_it() -> None:
    text = UNIT_PATH.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "/dev/shm/$SHMKV_REGION" in comments and "Nothing else" in comments
    assert "never unlinks" in comments and "shmkv unlink" in comments
    assert "RemoveIPC=yes" in comments and "/dev/shm" in comments
    # what SysV semaphores needed is gone: no stale advice about them
    for stale in ("ipcs -s", "SEM_UNDO", "semget"):
        assert stale not in comments, stale


def _installed_shmkv() -> str:
    """An executable to stand in for /usr/local/bin/shmkv: verify checks that it exists."""
    script = Path(sysconfig.get_path("scripts")) / "shmkv"
    return str(script) if script.exists() else (shutil.which("shmkv") or sys.executable)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # The unit runs /usr/local/bin/shmkv, which verify requires to exist: check a copy that
    # points at the shmkv of this environment instead, and is otherwise the same file.
    text = UNIT_PATH.read_text()
    original = one(parse_unit(text), "Service", "ExecStart").split()[0]
    copy = tmp_path / "shmkv.service"
    copy.write_text(text.replace(f"ExecStart={original} ", f"ExecStart={_installed_shmkv()} "))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shmkv.service" not in result.stdout + result.stderr, result.stdout + result.stderr
