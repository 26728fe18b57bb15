"""broker.auth: the CurveZMQ key files `shmkv keygen` writes (names, modes, never overwritten,
readable by zmq.auth), and the checks that turn a wrong key file into an error naming the
setting, for the node and for clients."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import zmq.auth
from typer.testing import CliRunner

import shmkv
from shmkv.broker.auth import (
    CurveClient,
    CurveServer,
    allowed_keys,
    create_key_files,
    read_key_pair,
    read_public_key,
)
from shmkv.cli import EXIT_ERROR, app


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keygen_writes_a_public_file_and_a_secret_file_only_its_owner_reads(
        tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the secret file's mode must not depend on the umask
    try:
        public_path, secret_path = create_key_files(tmp_path / "node")
    finally:
        os.umask(old_umask)
    assert (public_path, secret_path) == (tmp_path / "node.key", tmp_path / "node.key_secret")
    assert (mode(public_path), mode(secret_path)) == (0o644, 0o600)
    public, secret = zmq.auth.load_certificate(secret_path)
    assert zmq.auth.load_certificate(public_path) == (public, None)
    assert secret is not None and zmq.curve_public(secret) == public


def test_each_keygen_makes_a_new_key(tmp_path: Path) -> None:
    first = read_public_key(str(create_key_files(tmp_path / "a")[0]), "x")
    assert first != read_public_key(str(create_key_files(tmp_path / "b")[0]), "x")


@pytest.mark.parametrize("existing", [".key", ".key_secret"])
def test_keygen_never_overwrites_either_file(tmp_path: Path, existing: str) -> None:
    (tmp_path / f"node{existing}").write_text("precious")
    with pytest.raises(FileExistsError, match="never overwrites"):
        create_key_files(tmp_path / "node")
    assert [p.name for p in tmp_path.iterdir()] == [f"node{existing}"]
    assert (tmp_path / f"node{existing}").read_text() == "precious"


def test_keygen_command_prints_the_files_and_the_public_key_and_refuses_a_second_time(
        tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keygen", str(tmp_path / "client")])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["secret_key_file"] == str(tmp_path / "client.key_secret")
    assert made["public_key"].encode() == read_public_key(made["public_key_file"], "x")
    again = CliRunner().invoke(app, ["keygen", str(tmp_path / "client")])
    assert again.exit_code == EXIT_ERROR
    assert json.loads(again.stderr)["error"] == "FileExistsError"


def test_a_secret_key_file_that_others_may_read_is_refused(tmp_path: Path) -> None:
    _, secret_path = create_key_files(tmp_path / "node")
    secret_path.chmod(0o640)
    with pytest.raises(ValueError, match=r"curve_secret_key: .* mode 0640.*chmod 600"):
        read_key_pair(str(secret_path), "curve_secret_key")


def test_a_public_key_file_given_as_a_secret_key_is_refused(tmp_path: Path) -> None:
    public_path, _ = create_key_files(tmp_path / "node")
    with pytest.raises(ValueError, match="curve_client_cert: .* holds no secret key"):
        read_key_pair(str(public_path), "curve_client_cert")


@pytest.mark.parametrize(("text", "says"), [
    (None, "cannot read a key"),
    ("just text\n", "cannot read a key"),
    ('curve\n    public-key = "short"\n', "malformed key"),
])
def test_a_missing_or_malformed_key_file_names_the_setting(tmp_path: Path, text: str | None,
                                                           says: str) -> None:
    path = tmp_path / "server.key"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=f"curve_server_key: .*{says}"):
        read_public_key(str(path), "curve_server_key")


def test_the_allow_list_is_the_public_keys_of_the_key_files_in_its_directory(
        tmp_path: Path) -> None:
    create_key_files(tmp_path / "a")
    create_key_files(tmp_path / "b")
    (tmp_path / "notes.txt").write_text("not a key")
    expected = sorted(read_public_key(str(tmp_path / f"{n}.key"), "x") for n in "ab")
    assert sorted(allowed_keys(str(tmp_path))) == expected


def test_an_empty_or_missing_allow_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no \\*.key files"):
        allowed_keys(str(tmp_path))
    with pytest.raises(ValueError, match="is not a directory"):
        allowed_keys(str(tmp_path / "absent"))


@pytest.mark.parametrize("given", [("node.key_secret", ""), ("", "allow")])
def test_the_node_needs_both_curve_settings(tmp_path: Path, given: tuple[str, str]) -> None:
    with zmq.Context() as context, pytest.raises(shmkv.ConfigError, match="CurveZMQ needs both"):
        CurveServer(context, *given)


def test_a_bad_key_file_stops_the_node_with_a_config_error(tmp_path: Path) -> None:
    with zmq.Context() as context, \
            pytest.raises(shmkv.ConfigError, match="curve_secret_key: cannot read"):
        CurveServer(context, str(tmp_path / "absent.key_secret"), str(tmp_path))


def test_a_client_has_curve_with_both_files_or_neither(tmp_path: Path) -> None:
    public_path, _ = create_key_files(tmp_path / "node")
    _, client_secret = create_key_files(tmp_path / "client")
    assert CurveClient.from_files(None, None) is None
    curve = CurveClient.from_files(public_path, client_secret)
    assert curve is not None
    assert curve.server_public == read_public_key(str(public_path), "x")
    with pytest.raises(ValueError, match="needs both"):
        CurveClient.from_files(public_path, None)
    with pytest.raises(ValueError, match="needs both"):
        CurveClient.from_files(None, client_secret)


def test_keygen_into_a_missing_directory_says_which_file_it_could_not_write(
        tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keygen", str(tmp_path / "absent" / "node")])
    assert result.exit_code == EXIT_ERROR
    error = json.loads(result.stderr)
    assert error["error"] == "FileNotFoundError"
    assert f"cannot write {tmp_path / 'absent' / 'node'}" in error["message"]
    assert not (tmp_path / "absent").exists()
