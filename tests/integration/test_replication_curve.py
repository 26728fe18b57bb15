"""Replication over CurveZMQ (broker/replication.py): a replica with a key its primary allows
converges from a primary whose replication door is CURVE-protected; one whose key is not
allowed is refused, says so in an event naming its key, and its region stays as it was."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from node_process import STOP_TIMEOUT_S, failed_start, next_event, running_node, start_node
from replication_support import (CONVERGE_S, dump, fill, fixed_clock, primary_region,
                                 repl_endpoint, wait_equal)
from tests_support import new_region_name

import shmkv
from shmkv.broker.auth import create_key_files, read_public_key
from shmkv.cli import EXIT_USAGE
from shmkv.clients import RemoteCache


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """The primary's key pair, an allowed replica's and a stranger's secret key files."""
    allow_dir = tmp_path / "allow"
    allow_dir.mkdir()
    primary_public, primary_secret = create_key_files(tmp_path / "primary")
    _, replica_secret = create_key_files(allow_dir / "replica")
    _, stranger_secret = create_key_files(tmp_path / "stranger")
    return {"primary_public": primary_public, "primary_secret": primary_secret,
            "allow": allow_dir, "replica": replica_secret, "stranger": stranger_secret}


def primary_options(keys: dict[str, Path]) -> tuple[str, ...]:
    return ("--repl-bind", "tcp://127.0.0.1:*", "--curve-secret-key",
            str(keys["primary_secret"]), "--curve-allow", str(keys["allow"]))


def replica_options(keys: dict[str, Path], primary_endpoint: str, who: str) -> tuple[str, ...]:
    return ("--replica-of", primary_endpoint, "--repl-curve-server-key",
            str(keys["primary_public"]), "--repl-curve-client-cert", str(keys[who]))


def test_a_replica_with_an_allowed_key_converges_from_a_curve_primary(
        region_name: str, keys: dict[str, Path]) -> None:
    copy_name = new_region_name()
    with primary_region(region_name) as primary, \
            running_node(region_name, *primary_options(keys)) as node:
        fill(primary, 2_000)
        with running_node(copy_name, *replica_options(keys, repl_endpoint(node), "replica")):
            with shmkv.Cache.open(copy_name, clock=fixed_clock) as copy:
                assert dump(copy) == dump(primary)  # ready means copied
                primary.set("later", b"after the first sync")
                primary.delete("k1")
                wait_equal(primary, copy)


def test_a_replica_whose_key_is_not_allowed_is_refused_and_keeps_its_region(
        region_name: str, keys: dict[str, Path]) -> None:
    copy_name = new_region_name()
    with primary_region(region_name) as primary, \
            running_node(region_name, *primary_options(keys)) as node:
        fill(primary, 500)
        endpoint = repl_endpoint(node)
        try:
            # a copy made while this node's key was allowed (running_node would unlink it)
            first = start_node(copy_name, *replica_options(keys, endpoint, "replica"))
            try:
                assert next_event(first, "ready", CONVERGE_S)
            finally:
                first.terminate()
                first.wait(timeout=STOP_TIMEOUT_S)
                first.stdout.close()  # type: ignore[union-attr]
                first.stderr.close()  # type: ignore[union-attr]
            with shmkv.Cache.open(copy_name, clock=fixed_clock) as copy:
                before = dump(copy)
            assert before == dump(primary)
            primary.set("unseen", b"written after the copy")
            process = start_node(copy_name, *replica_options(keys, endpoint, "stranger"))
            try:
                event = next_event(process, "replication_refused", timeout_s=20)
                stranger = read_public_key(str(keys["stranger"]), "test").decode()
                assert stranger in event["message"]
                assert "curve_allow" in event["message"]
                with shmkv.Cache.open(copy_name, clock=fixed_clock) as copy:
                    assert dump(copy) == before
                    assert copy.get("unseen") is None
            finally:
                process.terminate()
                process.wait(timeout=STOP_TIMEOUT_S)
                process.stdout.close()  # type: ignore[union-attr]
                process.stderr.close()  # type: ignore[union-attr]
        finally:
            shmkv.Cache.unlink(copy_name)


def test_a_replica_given_one_curve_key_file_alone_does_not_start(
        region_name: str, keys: dict[str, Path]) -> None:
    status, _, err = failed_start(region_name, "--replica-of", "tcp://127.0.0.1:1",
                                  "--repl-curve-server-key", str(keys["primary_public"]))
    assert status == EXIT_USAGE
    assert "repl_curve_client_cert" in err


def test_a_replica_given_a_public_key_as_its_own_cert_does_not_start(
        region_name: str, keys: dict[str, Path]) -> None:
    status, _, err = failed_start(region_name, "--replica-of", "tcp://127.0.0.1:1",
                                  "--repl-curve-server-key", str(keys["primary_public"]),
                                  "--repl-curve-client-cert", str(keys["primary_public"]))
    assert status == EXIT_USAGE
    assert "repl_curve_client_cert" in err and "no secret key" in err


def test_replicaof_a_curve_primary_that_refuses_the_key_says_so_while_the_node_answers(
        region_name: str, keys: dict[str, Path]) -> None:
    other = new_region_name()
    with primary_region(region_name), running_node(region_name, *primary_options(keys)) as node, \
            running_node(other, "--repl-curve-server-key", str(keys["primary_public"]),
                         "--repl-curve-client-cert", str(keys["stranger"])) as switched, \
            RemoteCache(switched.endpoint, timeout_s=5) as remote:
        remote.set("k", b"v")
        assert remote.replicaof(repl_endpoint(node))["role"] == "replica"
        event = next_event(switched.process, "replication_refused", timeout_s=20)
        stranger = read_public_key(str(keys["stranger"]), "test").decode()
        assert stranger in event["message"]
        t0 = time.monotonic()
        assert remote.get("k") == b"v" and remote.ping()["role"]["role"] == "replica"
        assert time.monotonic() - t0 < 0.5  # the node answers while its hello is refused
        failed = next_event(switched.process, "follow_failed", timeout_s=20)
        assert stranger in failed["message"] and "curve_allow" in failed["message"]
        role = remote.ping()["role"]
        assert role["role"] == "candidate" and stranger in role["follow_failed"]
        assert remote.get("k") == b"v"
