"""broker.config: where each node setting comes from (flag > SHMKV_* > config file > default),
and the ConfigError that names the source and the key of a bad one. The last tests run the
`serve` command in-process with a stand-in for the server, to see what it passes on."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import shmkv
from shmkv.broker.config import (
    CONFIG_ENV,
    FIELDS,
    NodeConfig,
    doors,
    env_var,
    flag,
    load_config,
    metrics_address,
)
from shmkv.cli import EXIT_USAGE, app


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


LAST_CPU = max(os.sched_getaffinity(0))  # a CPU list must name CPUs the node may use

# One value per field, as a file, a variable and a flag would give it; each differs from the
# default and from the values of the other levels, so the winner is unambiguous.
FILE_VALUES: dict[str, Any] = {
    "region": "from-file", "arena_bytes": "2M", "maintain_interval_s": 0.5,
    "bind": "tcp://127.0.0.1:7001", "pub_bind": "tcp://127.0.0.1:7002", "pub_hwm": 11,
    "metrics_bind": "127.0.0.1:7003", "allow_remote": True, "region_owner": "root",
    "flush_interval_s": 0, "snapshot_path": "/var/lib/shmkv/file.snap", "snapshot_interval_s": 60,
    "curve_secret_key": "/etc/shmkv/node.key_secret", "curve_allow": "/etc/shmkv/clients",
    "ipc_dir": "/run/shmkv",
    "resp_bind": "127.0.0.1:7004", "requirepass": "file-secret",
    "resp_tls_cert": "file.crt", "resp_tls_key": "file.pem", "resp_tls_ca": "file-ca.pem",
    "repl_bind": "tcp://127.0.0.1:7005", "replica_of": "tcp://127.0.0.1:7006",
    "repl_curve_server_key": "/etc/shmkv/primary.key",
    "repl_curve_client_cert": "/etc/shmkv/node.key_secret",
    "etcd": "http://127.0.0.1:2379,http://127.0.0.2:2379", "cluster": "file-cluster",
    "advertise": "tcp://10.0.0.1:7007", "lease_ttl_s": 20, "loop_interval_s": 2,
    "retry_timeout_s": 4,
    "workers": 3, "cpu_affinity": "0",
    "repl_backlog_changes": 1000, "min_replicas_to_write": 1, "min_replicas_max_lag_s": 5,
}
ENV_VALUES = {
    "region": "from-env", "arena_bytes": "4M", "maintain_interval_s": "0.25",
    "bind": "ipc:///run/shmkv/env.sock", "pub_bind": "tcp://localhost:7012", "pub_hwm": "12",
    "metrics_bind": "[::1]:7013", "allow_remote": "no", "region_owner": "1001",
    "flush_interval_s": "0.5", "snapshot_path": "env.snap", "snapshot_interval_s": "0",
    "curve_secret_key": "env.key_secret", "curve_allow": "env-clients", "ipc_dir": "off",
    "resp_bind": "[::1]:7014", "requirepass": "env-secret",
    "resp_tls_cert": "env.crt", "resp_tls_key": "env.pem", "resp_tls_ca": "env-ca.pem",
    "repl_bind": "ipc:///run/shmkv/env-repl.sock", "replica_of": "tcp://localhost:7016",
    "repl_curve_server_key": "env-primary.key", "repl_curve_client_cert": "env.key_secret",
    "etcd": "https://etcd.example:2379", "cluster": "env-cluster",
    "advertise": "tcp://10.0.0.1:7017", "lease_ttl_s": "30", "loop_interval_s": "0.5",
    "retry_timeout_s": "2.5",
    "workers": "4", "cpu_affinity": "OFF",
    "repl_backlog_changes": "2000", "min_replicas_to_write": "2", "min_replicas_max_lag_s": "6",
}
CLI_VALUES: dict[str, Any] = {
    "region": "from-flag", "arena_bytes": 8 << 20, "maintain_interval_s": 2.0,
    "bind": "tcp://127.0.0.1:*", "pub_bind": "tcp://127.0.0.2:7022", "pub_hwm": 13,
    "metrics_bind": "off", "allow_remote": True, "region_owner": "0",
    "flush_interval_s": 2.5, "snapshot_path": "/tmp/flag.snap", "snapshot_interval_s": 10.0,
    "curve_secret_key": "/nonexistent/flag.key_secret", "curve_allow": "/nonexistent/clients",
    "ipc_dir": "/nonexistent/ipc",
    "resp_bind": "127.0.0.1:0", "requirepass": "flag-secret",
    "resp_tls_cert": "flag.crt", "resp_tls_key": "flag.pem", "resp_tls_ca": "flag-ca.pem",
    "repl_bind": "tcp://127.0.0.1:*", "replica_of": "tcp://127.0.0.2:7026",
    "repl_curve_server_key": "/nonexistent/primary.key",
    "repl_curve_client_cert": "/nonexistent/flag.key_secret",
    "etcd": "http://[::1]:2379", "cluster": "flag-cluster", "advertise": "tcp://10.0.0.1:7027",
    "lease_ttl_s": 40, "loop_interval_s": 3.0, "retry_timeout_s": 3.5,
    "workers": 5, "cpu_affinity": f" {LAST_CPU} ",
    "repl_backlog_changes": 3000, "min_replicas_to_write": 3, "min_replicas_max_lag_s": 7.0,
}
EXPECTED = {
    "file": {**FILE_VALUES, "arena_bytes": 2 << 20},
    "env": {**ENV_VALUES, "ipc_dir": "", "arena_bytes": 4 << 20, "maintain_interval_s": 0.25, "pub_hwm": 12,
            "allow_remote": False, "flush_interval_s": 0.5, "snapshot_interval_s": 0.0,
            "lease_ttl_s": 30, "loop_interval_s": 0.5, "retry_timeout_s": 2.5,
            "workers": 4, "cpu_affinity": "off",
            "repl_backlog_changes": 2000, "min_replicas_to_write": 2,
            "min_replicas_max_lag_s": 6.0},
    "flag": {**CLI_VALUES, "metrics_bind": "", "cpu_affinity": str(LAST_CPU)},
}
EXPECTED["file"].update(loop_interval_s=2.0, retry_timeout_s=4.0)


def test_load_config_gives_the_defaults_when_nothing_is_set() -> None:
    assert load_config({}, env={}) == NodeConfig()


def test_every_field_has_a_value_at_every_level() -> None:
    assert set(FILE_VALUES) == set(ENV_VALUES) == set(CLI_VALUES) == set(FIELDS)


@pytest.mark.parametrize("field", FIELDS)
def test_config_file_overrides_the_default(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, "node.json", json.dumps({field: FILE_VALUES[field]}))
    config = load_config({}, env={CONFIG_ENV: path})
    assert getattr(config, field) == EXPECTED["file"][field]
    assert getattr(config, field) != getattr(NodeConfig(), field)


@pytest.mark.parametrize("field", FIELDS)
def test_environment_overrides_the_config_file(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, "node.json", json.dumps({field: FILE_VALUES[field]}))
    config = load_config({}, env={CONFIG_ENV: path, env_var(field): ENV_VALUES[field]})
    assert getattr(config, field) == EXPECTED["env"][field]


@pytest.mark.parametrize("field", FIELDS)
def test_flag_overrides_the_environment(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, "node.json", json.dumps({field: FILE_VALUES[field]}))
    env = {CONFIG_ENV: path, env_var(field): ENV_VALUES[field]}
    config = load_config({field: CLI_VALUES[field]}, env=env)
    assert getattr(config, field) == EXPECTED["flag"][field]


def test_load_config_reads_toml_with_sizes_as_numbers_or_text(tmp_path: Path) -> None:
    path = write(tmp_path, "node.toml", 'region = "t"\narena_bytes = 1048576\npub_hwm = 5\n'
                 'maintain_interval_s = 1\nallow_remote = false\n')
    config = load_config({"config": path}, env={})
    assert (config.region, config.arena_bytes, config.pub_hwm) == ("t", 1 << 20, 5)
    assert config.maintain_interval_s == 1.0 and isinstance(config.maintain_interval_s, float)


def test_config_flag_overrides_the_config_variable(tmp_path: Path) -> None:
    by_flag = write(tmp_path, "flag.toml", 'region = "by-flag"\n')
    by_env = write(tmp_path, "env.toml", 'region = "by-env"\n')
    assert load_config({"config": by_flag}, env={CONFIG_ENV: by_env}).region == "by-flag"


def test_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write(tmp_path, "node.toml", 'region = "from-file"\n')
    assert load_config({}, env={CONFIG_ENV: path, "SHMKV_REGION": ""}).region == "from-file"
    assert load_config({}, env={CONFIG_ENV: ""}) == NodeConfig()


def test_none_flag_counts_as_not_given() -> None:
    assert load_config({"region": None, "config": None}, env={"SHMKV_REGION": "e"}).region == "e"


def test_flag_values_may_be_text_as_typed_on_a_command_line() -> None:
    config = load_config({"arena_bytes": "3M", "pub_hwm": "7", "allow_remote": "true"}, env={})
    assert (config.arena_bytes, config.pub_hwm, config.allow_remote) == (3 << 20, 7, True)


def test_other_shmkv_variables_are_ignored() -> None:
    assert load_config({}, env={"SHMKV_COLLECTION": "users", "SHMKV_NOPE": "1"}) == NodeConfig()


@pytest.mark.parametrize("endpoint", ["ipc:///run/shmkv/node.sock", "inproc://node",
                                      "tcp://[::1]:7370", "tcp://localhost:7370",
                                      "tcp://127.1.2.3:*", "tcp://lo:7370"])
def test_local_endpoints_need_no_allow_remote(endpoint: str) -> None:
    assert load_config({"bind": endpoint}, env={}).bind == endpoint


CURVE_ENV = {"SHMKV_CURVE_SECRET_KEY": "node.key_secret", "SHMKV_CURVE_ALLOW": "clients"}


@pytest.mark.parametrize("endpoint", ["tcp://*:7370", "tcp://0.0.0.0:7370", "tcp://eth0:7370",
                                      "tcp://192.0.2.1:7370", "tcp://[::]:7370"])
def test_non_loopback_endpoint_is_allowed_when_asked_for_and_protected(endpoint: str) -> None:
    config = load_config({"bind": endpoint}, env={"SHMKV_ALLOW_REMOTE": "1", **CURVE_ENV})
    assert config.bind == endpoint and config.allow_remote


def test_metrics_address_splits_host_and_port_or_is_none_when_off() -> None:
    assert metrics_address(NodeConfig()) == ("127.0.0.1", 9370)
    assert metrics_address(NodeConfig(metrics_bind="[::1]:0")) == ("::1", 0)
    assert metrics_address(NodeConfig(metrics_bind="")) is None


def test_config_error_is_a_shmkv_error_and_a_value_error() -> None:
    assert issubclass(shmkv.ConfigError, shmkv.ShmKVError)
    assert issubclass(shmkv.ConfigError, ValueError)
    assert "ConfigError" in shmkv.__all__


# --- errors: each names where the value came from, and the key ------------------------------
@pytest.mark.parametrize(("variable", "value", "says"), [
    ("SHMKV_ARENA_BYTES", "64Q", "is not a size"),
    ("SHMKV_ARENA_BYTES", "0", "must be positive"),
    ("SHMKV_MAINTAIN_INTERVAL_S", "soon", "is not a number of seconds"),
    ("SHMKV_MAINTAIN_INTERVAL_S", "-1", "positive number of seconds"),
    ("SHMKV_MAINTAIN_INTERVAL_S", "nan", "positive number of seconds"),
    ("SHMKV_PUB_HWM", "1.5", "is not a whole number"),
    ("SHMKV_PUB_HWM", "-3", "whole number >= 0"),
    ("SHMKV_BIND", "127.0.0.1:7370", "ZeroMQ endpoint"),
    ("SHMKV_BIND", "carrier-pigeon://x", "ZeroMQ endpoint"),
    ("SHMKV_BIND", "tcp://127.0.0.1", "host:port"),
    ("SHMKV_BIND", "tcp://127.0.0.1:70000", "port number"),
    ("SHMKV_PUB_BIND", "tcp://::1:7371", "host:port"),
    ("SHMKV_METRICS_BIND", "9370", "host:port"),
    ("SHMKV_METRICS_BIND", "127.0.0.1:*", "port number"),
    ("SHMKV_ALLOW_REMOTE", "perhaps", "true or false"),
    ("SHMKV_CURVE_SECRET_KEY", "/", "is a directory"),
    ("SHMKV_CURVE_ALLOW", "/etc/passwd", "is not a directory"),
    ("SHMKV_IPC_DIR", "/etc/passwd", "is not a directory"),
    ("SHMKV_CPU_AFFINITY", "most", "auto, off or a CPU list"),
    ("SHMKV_CPU_AFFINITY", "3-1", "rising ranges"),
    ("SHMKV_CPU_AFFINITY", "0,4095", "4095: not among the CPUs this node may run on"),
])
def test_unparsable_variable_names_the_variable_and_key(variable: str, value: str,
                                                        says: str) -> None:
    key = variable.removeprefix("SHMKV_").lower()
    with pytest.raises(shmkv.ConfigError, match=says) as info:
        load_config({}, env={variable: value})
    assert f"environment variable {variable}, key {key!r}" in str(info.value)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("pub_hwm", "10", "whole number"),  # a file has types: text is not a number there
    ("pub_hwm", True, "whole number"),
    ("arena_bytes", 1.5, "size in bytes"),
    ("maintain_interval_s", "0.1", "number of seconds"),
    ("allow_remote", "yes", "true or false"),
    ("allow_remote", 1, "true or false"),
    ("region", "", "region name"),
    ("region", 7, "region name"),
    ("bind", ["tcp://127.0.0.1:1"], "ZeroMQ endpoint"),
    ("metrics_bind", 9370, "host:port"),
    ("curve_secret_key", 1, "file path"),
    ("curve_allow", ["clients"], "directory path"),
    ("ipc_dir", False, "directory path"),
    ("resp_bind", 6379, "host:port"),
    ("requirepass", 1234, "a password"),
    ("repl_bind", 7005, "ZeroMQ endpoint"),
    ("replica_of", ["tcp://127.0.0.1:1"], "ZeroMQ endpoint"),
    ("cpu_affinity", 0, "auto, off or a CPU list"),
])
def test_wrong_type_in_file_names_the_file_and_key(tmp_path: Path, key: str, value: object,
                                                   says: str) -> None:
    path = write(tmp_path, "node.json", json.dumps({key: value}))
    with pytest.raises(shmkv.ConfigError, match=says) as info:
        load_config({}, env={CONFIG_ENV: path})
    assert f"config file {path}, key {key!r}" in str(info.value)


def test_unknown_key_in_file_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "node.toml", 'bnd = "tcp://127.0.0.1:1"\n')
    with pytest.raises(shmkv.ConfigError, match=r"unknown key 'bnd'; did you mean 'bind'\?") \
            as info:
        load_config({}, env={CONFIG_ENV: path})
    assert str(info.value).startswith(f"config file {path}: ")


def test_table_in_toml_file_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "node.toml", '[node]\nregion = "x"\n')
    with pytest.raises(shmkv.ConfigError, match="unknown key 'node'"):
        load_config({}, env={CONFIG_ENV: path})


def test_unknown_flag_key_is_named() -> None:
    with pytest.raises(shmkv.ConfigError, match="flag --colour: unknown key 'colour'"):
        load_config({"colour": "blue"}, env={})


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(shmkv.ConfigError, match="flag --pub-hwm, key 'pub_hwm': "):
        load_config({"pub_hwm": -1}, env={})


def test_missing_config_file_names_the_path_and_where_it_came_from(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(shmkv.ConfigError, match="cannot read it") as info:
        load_config({}, env={CONFIG_ENV: path})
    assert f"config file {path} (environment variable SHMKV_CONFIG)" in str(info.value)
    with pytest.raises(shmkv.ConfigError, match=r"\(flag --config\): cannot read it"):
        load_config({"config": path}, env={})


def test_config_file_of_unknown_format_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "node.yaml", "region: x\n")
    with pytest.raises(shmkv.ConfigError, match=r"flag --config: expected the path of a "
                       r"\*\.toml or \*\.json file, got '.*node\.yaml'"):
        load_config({"config": path}, env={})


@pytest.mark.parametrize(("name", "text", "says"), [
    ("node.toml", "region = \n", "not valid TOML"),
    ("node.json", "{region: 1}", "not valid JSON"),
    ("node.json", "[1, 2]", "expected a table of settings"),
    ("node.toml", "\udcff", "not valid TOML"),
])
def test_unparsable_config_file_names_the_path(tmp_path: Path, name: str, text: str,
                                               says: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(shmkv.ConfigError, match=says) as info:
        load_config({}, env={CONFIG_ENV: str(path)})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["bind", "pub_bind", "repl_bind"])
def test_non_loopback_address_is_refused_without_allow_remote(key: str) -> None:
    with pytest.raises(shmkv.ConfigError, match="not a loopback address") as info:
        load_config({}, env={env_var(key): "tcp://*:7999", **CURVE_ENV})
    assert f"environment variable {env_var(key)}, key {key!r}" in str(info.value)
    assert "--allow-remote" in str(info.value)


@pytest.mark.parametrize("key", ["bind", "pub_bind", "repl_bind"])
def test_allow_remote_without_curve_is_refused_naming_the_curve_settings(key: str) -> None:
    with pytest.raises(shmkv.ConfigError, match=f"{key} is not protected") as info:
        load_config({"allow_remote": True}, env={env_var(key): "tcp://0.0.0.0:7999"})
    assert "curve_secret_key and curve_allow" in str(info.value)
    assert "--curve-secret-key" in str(info.value)


def test_curve_without_its_allow_list_does_not_count_as_protection() -> None:
    with pytest.raises(shmkv.ConfigError, match="bind is not protected"):
        load_config({"allow_remote": True, "bind": "tcp://*:7999",
                     "curve_secret_key": "node.key_secret"}, env={})


@pytest.mark.parametrize("env", [{}, {"SHMKV_ALLOW_REMOTE": "1", **CURVE_ENV}])
def test_non_loopback_metrics_address_is_refused_whatever_else_is_set(env: dict[str, str]) \
        -> None:
    with pytest.raises(shmkv.ConfigError, match="metrics_bind has no encrypted authentication") as info:
        load_config({"metrics_bind": "0.0.0.0:9370"}, env=env)
    assert "flag --metrics-bind, key 'metrics_bind'" in str(info.value)
    assert "ssh tunnel" in str(info.value)


TLS_ENV = {"SHMKV_RESP_TLS_CERT": "door.crt", "SHMKV_RESP_TLS_KEY": "door.key"}


@pytest.mark.parametrize("env, missing", [
    ({}, "allow_remote"),
    ({"SHMKV_ALLOW_REMOTE": "1", **CURVE_ENV}, "resp_bind is not protected"),
    ({"SHMKV_ALLOW_REMOTE": "1", **TLS_ENV}, "resp_bind is not protected"),  # no password
])
def test_non_loopback_resp_address_needs_allow_remote_requirepass_and_tls(
        env: dict[str, str], missing: str) -> None:
    given = {"resp_bind": "0.0.0.0:6379"}
    if "SHMKV_RESP_TLS_CERT" not in env:
        given["requirepass"] = "pw"  # requirepass alone would send it in the clear
    with pytest.raises(shmkv.ConfigError, match=missing) as info:
        load_config(given, env=env)
    assert "--resp-tls-cert" in str(info.value) or "--allow-remote" in str(info.value)


def test_non_loopback_resp_address_is_served_with_allow_remote_requirepass_and_tls() -> None:
    config = load_config({"resp_bind": "0.0.0.0:6379", "requirepass": "pw"},
                         env={"SHMKV_ALLOW_REMOTE": "1", **TLS_ENV})
    [door] = [d for d in doors(config) if d.key == "resp_bind"]
    assert (door.local, door.protected) == (False, True)
    assert (config.resp_tls_cert, config.resp_tls_key) == ("door.crt", "door.key")


def test_doors_lists_each_endpoint_with_whether_it_is_local_and_protected() -> None:
    config = load_config({"allow_remote": True, "bind": "tcp://*:7370",
                          "pub_bind": "ipc:///run/shmkv/pub.sock"}, env=CURVE_ENV)
    assert [(d.key, d.local, d.protected) for d in doors(config)] == [
        ("bind", False, True), ("pub_bind", True, True), ("metrics_bind", True, False)]
    assert [d.key for d in doors(NodeConfig(metrics_bind=""))] == ["bind", "pub_bind"]
    assert not any(d.protected for d in doors(NodeConfig()))


def test_a_bad_password_setting_is_refused_without_showing_it() -> None:
    with pytest.raises(shmkv.ConfigError, match="without newlines") as info:
        load_config({}, env={env_var("requirepass"): "sec\nret"})
    assert "sec" not in str(info.value).replace("newlines", "")


def test_non_loopback_address_from_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node.toml", 'pub_bind = "tcp://0.0.0.0:7371"\n')
    with pytest.raises(shmkv.ConfigError, match=f"config file {path}, key 'pub_bind'"):
        load_config({}, env={CONFIG_ENV: path})


def test_remote_transport_counts_as_non_loopback() -> None:
    with pytest.raises(shmkv.ConfigError, match="not a loopback address"):
        load_config({"pub_bind": "epgm://eth0;239.192.1.1:5555"}, env={})


def test_same_endpoint_for_both_sockets_is_refused() -> None:
    with pytest.raises(shmkv.ConfigError, match="bind and pub_bind are both"):
        load_config({"bind": "tcp://127.0.0.1:7000"},
                    env={"SHMKV_PUB_BIND": "tcp://127.0.0.1:7000"})


def test_names_of_variables_and_flags_follow_the_fields() -> None:
    assert (env_var("arena_bytes"), flag("arena_bytes")) == ("SHMKV_ARENA_BYTES", "--arena-bytes")


# --- the serve command passes on only the flags that were given ------------------------------
@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[NodeConfig]:
    """Stand in for broker.supervisor (which runs the node, with or without workers): record
    the config serve() gets, and clear the caller's SHMKV_* variables."""
    for name in [*map(env_var, FIELDS), CONFIG_ENV]:
        monkeypatch.delenv(name, raising=False)
    configs: list[NodeConfig] = []

    def serve(config: NodeConfig, **_: object) -> int:
        configs.append(config)
        return 0

    fake = types.ModuleType("shmkv.broker.supervisor")
    fake.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shmkv.broker.supervisor", fake)
    return configs


def run_cli(*args: str) -> Any:
    try:  # Click before 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, list(args))


def test_serve_without_options_runs_the_default_node(served: list[NodeConfig]) -> None:
    assert run_cli("serve").exit_code == 0
    assert served == [NodeConfig()]


def test_serve_passes_given_flags_and_leaves_the_rest_to_file_and_environment(
        served: list[NodeConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "node.toml", 'pub_hwm = 5\narena_bytes = "1M"\nregion = "f"\n')
    monkeypatch.setenv("SHMKV_PUB_HWM", "6")
    result = run_cli("serve", "--config", path, "--arena-bytes", "2M",
                     "--metrics-bind", "127.0.0.1:0", "--allow-remote", "--bind", "tcp://*:*",
                     "--curve-secret-key", "n.key_secret", "--curve-allow", "clients")
    assert result.exit_code == 0, result.output
    assert served == [NodeConfig(region="f", arena_bytes=2 << 20, pub_hwm=6,
                                 metrics_bind="127.0.0.1:0", allow_remote=True, bind="tcp://*:*",
                                 curve_secret_key="n.key_secret", curve_allow="clients")]


def test_serve_region_flag_outranks_environment_and_file(
        served: list[NodeConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "node.toml", 'region = "from-file"\n')
    monkeypatch.setenv(CONFIG_ENV, path)
    assert run_cli("serve").exit_code == 0
    monkeypatch.setenv("SHMKV_REGION", "from-env")
    assert run_cli("serve").exit_code == 0
    assert run_cli("--region", "from-flag", "serve").exit_code == 0
    assert [c.region for c in served] == ["from-file", "from-env", "from-flag"]


def test_serve_reports_a_config_error_as_json_and_exits_2(
        served: list[NodeConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMKV_ARENA_BYTES", "lots")
    result = run_cli("serve")
    assert result.exit_code == EXIT_USAGE and served == []
    error = json.loads(result.stderr)
    assert error["error"] == "ConfigError"
    assert "SHMKV_ARENA_BYTES" in error["message"] and "'arena_bytes'" in error["message"]


def test_serve_refuses_allow_remote_on_all_interfaces_without_curve(
        served: list[NodeConfig]) -> None:
    result = run_cli("serve", "--allow-remote", "--bind", "tcp://0.0.0.0:7370")
    assert result.exit_code == EXIT_USAGE and served == []
    error = json.loads(result.stderr)
    assert error["error"] == "ConfigError" and "curve_secret_key" in error["message"]
