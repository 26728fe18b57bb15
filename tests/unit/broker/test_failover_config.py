"""The failover settings (broker/config.py, broker/failover.py): etcd URLs and a cluster name
are checked, and with etcd the loop and retry timings must let a primary renew its lease
before its write fence passes (loop + 2 x retry <= ttl)."""

from __future__ import annotations

import pytest

import shmkv
from shmkv.broker.config import load_config

ETCD = {"etcd": "http://127.0.0.1:2379", "cluster": "c", "advertise": "tcp://127.0.0.1:7400",
        "repl_bind": "tcp://127.0.0.1:7400"}


def test_timings_that_let_a_primary_renew_before_its_fence_passes_are_accepted() -> None:
    config = load_config({**ETCD, "lease_ttl_s": "3", "loop_interval_s": "1",
                          "retry_timeout_s": "1"}, env={})
    assert (config.lease_ttl_s, config.loop_interval_s, config.retry_timeout_s) == (3, 1, 1)


def test_a_lease_shorter_than_a_loop_and_two_retries_is_refused_naming_the_sources() -> None:
    with pytest.raises(shmkv.ConfigError, match=r"= 3\.5 s is over lease_ttl_s = 3 s") as info:
        load_config({**ETCD, "lease_ttl_s": "3", "loop_interval_s": "1.5"},
                    env={"SHMKV_RETRY_TIMEOUT_S": "1"})
    assert "flag --loop-interval-s, environment variable SHMKV_RETRY_TIMEOUT_S, flag " \
        "--lease-ttl-s" in str(info.value)


def test_the_timings_are_not_checked_without_etcd() -> None:
    assert load_config({"lease_ttl_s": "2"}, env={}).lease_ttl_s == 2


@pytest.mark.parametrize("urls", ["127.0.0.1:2379", "http://127.0.0.1", "http://a:1,ftp://b:2",
                                  "http://a:99999"])
def test_etcd_urls_that_are_not_http_host_port_are_refused(urls: str) -> None:
    with pytest.raises(shmkv.ConfigError, match="key 'etcd'"):
        load_config({"etcd": urls}, env={})


def test_etcd_urls_are_kept_comma_separated_without_spaces() -> None:
    config = load_config({"etcd": "http://a:2379, https://[::1]:2379"}, env={})
    assert config.etcd == "http://a:2379,https://[::1]:2379"


def test_a_cluster_name_that_would_not_make_a_plain_etcd_key_is_refused() -> None:
    with pytest.raises(shmkv.ConfigError, match="cluster name"):
        load_config({"cluster": "a/b"}, env={})
