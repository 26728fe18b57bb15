"""broker.config: every numeric node setting has a range, and the region name and owner are
checked, wherever the value comes from (flag, SHMKV_* variable, config file); the ConfigError
names the source and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import shmkv
from shmkv import layout
from shmkv.broker.config import CONFIG_ENV, RANGES, env_var, flag, load_config

OUT_OF_RANGE = [
    ("pub_hwm", 3_000_000_000),
    ("pub_hwm", 10_000_001),
    ("maintain_interval_s", 1e-300),
    ("maintain_interval_s", 0.0009),
    ("maintain_interval_s", 1e300),
    ("arena_bytes", 4095),
    ("arena_bytes", layout.MAX_ARENA_BYTES + 1),
    ("arena_bytes", 10**30),
    ("lease_ttl_s", 1),
    ("lease_ttl_s", 3601),
    ("loop_interval_s", 0.01),
    ("retry_timeout_s", 601),
]


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE)
def test_an_out_of_range_setting_is_refused_from_every_source(tmp_path: Path, key: str,
                                                              value: float) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({key: value}))
    sources = [
        ({}, {env_var(key): repr(value)}, f"environment variable {env_var(key)}"),
        ({key: value}, {}, f"flag {flag(key)}"),
        ({}, {CONFIG_ENV: str(path)}, f"config file {path}"),
    ]
    for cli, env, source in sources:
        with pytest.raises(shmkv.ConfigError, match="out of range") as info:
            load_config(cli, env=env)
        assert str(info.value).startswith(f"{source}, key {key!r}: ")


@pytest.mark.parametrize("key", sorted(RANGES))
def test_the_ends_of_each_range_are_accepted(key: str) -> None:
    for value in RANGES[key]:
        assert getattr(load_config({key: value}, env={}), key) == value


def test_the_defaults_are_inside_their_ranges() -> None:
    config = load_config({}, env={})
    for key, (low, high) in RANGES.items():
        assert low <= getattr(config, key) <= high


@pytest.mark.parametrize(("key", "value", "says"), [
    ("region", "a b", "bad region name"),
    ("region", "/tmp/", "directory"),
    ("region_owner", "no-such-user-of-this-host", "no user"),
    ("region_owner", "-5", "no user"),
])
def test_a_region_or_owner_no_node_could_use_is_refused(key: str, value: str,
                                                        says: str) -> None:
    with pytest.raises(shmkv.ConfigError, match=says) as info:
        load_config({}, env={env_var(key): value})
    assert f"environment variable {env_var(key)}, key {key!r}" in str(info.value)


def test_region_owner_takes_a_user_name_or_a_uid() -> None:
    assert load_config({}, env={"SHMKV_REGION_OWNER": "root"}).region_owner == "root"
    assert load_config({"region_owner": "54321"}, env={}).region_owner == "54321"
    assert load_config({}, env={}).region_owner == ""
