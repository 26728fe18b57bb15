"""Regions between two real users of the host: a squatter's region is refused unless its owner
is named, a world-writable one always; a user without access gets PermissionDenied (and JSON
from the CLI), never a raw OSError or a traceback.

The tests run as root: they add a user (removed at the end, whatever happens) and run Python
as that user. They skip when not root, when useradd is missing, or when that user cannot
reach this interpreter (a home directory of mode 0700 on the way: .ci/run opens the path).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from node_process import failed_start, running_node

import shmkv

RUN_TIMEOUT_S = 60


@dataclass
class User:
    name: str
    uid: int
    gid: int

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run this interpreter with args as the user (no supplementary groups)."""
        home = tempfile.gettempdir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
               "XDG_STATE_HOME": os.path.join(home, f"shmkv-state-{self.name}"),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        if "SHMKV_PURE_PYTHON" in os.environ:  # the engine of this test run
            env["SHMKV_PURE_PYTHON"] = os.environ["SHMKV_PURE_PYTHON"]
        return subprocess.run([sys.executable, *args], user=self.uid, group=self.gid,
                              extra_groups=[], env=env, cwd=home, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)

    def python(self, code: str) -> str:
        """Run code as the user; its stdout (it must succeed)."""
        done = self.run("-c", code)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def shmkv(self, *args: str) -> tuple[int, str, str]:
        done = self.run("-m", "shmkv.cli", *args)
        return done.returncode, done.stdout, done.stderr


@pytest.fixture
def other_user() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.skip("needs root, to add a second user")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd and userdel")
    name = f"shmkvt{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        user = User(name, entry.pw_uid, entry.pw_gid)
        try:
            probe = user.run("-c", "import shmkv")
            why = probe.stderr.strip().splitlines()[-1:] if probe.returncode else None
        except PermissionError as exc:  # the interpreter itself is out of its reach
            why = str(exc)
        if why:
            pytest.skip(f"user {name} cannot run {sys.executable} with shmkv (make the "
                        f"directories on the way searchable, as .ci/run does): {why}")
        yield user
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _error(stderr: str) -> dict[str, str]:
    assert "Traceback" not in stderr and "╭" not in stderr, stderr
    return json.loads(stderr)


def test_a_region_squatted_by_another_user_is_refused_unless_that_owner_is_named(
        other_user: User, region_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    other_user.python(f"import shmkv; shmkv.Cache.create({region_name!r}, 1 << 20, "
                      "mode=0o640).set('planted', 'by the squatter')")
    with pytest.raises(shmkv.PermissionDenied, match=f"user '{other_user.name}'"):
        shmkv.Cache.open(region_name)
    with pytest.raises(shmkv.PermissionDenied, match="--region-owner"):
        shmkv.Cache.create(region_name, 1 << 20, exist_ok=True)

    # a service starting on the squatted name
    code, out, err = failed_start(region_name, timeout_s=RUN_TIMEOUT_S)
    assert code == 1 and out == ""
    assert _error(err)["error"] == "PermissionDenied"

    with shmkv.Cache.open(region_name, owner=other_user.name) as c:
        assert c.get("planted") == b"by the squatter"
    with shmkv.Cache.create(region_name, 1 << 20, exist_ok=True, owner=other_user.uid) as c:
        assert c.get("planted") == b"by the squatter"

    other_user.python(f"import os; os.chmod('/dev/shm/{region_name}', 0o666)")
    for owner in (None, other_user.name):
        with pytest.raises(shmkv.PermissionDenied, match="writable by every user"):
            shmkv.Cache.open(region_name, owner=owner)
    other_user.python(f"import os; os.chmod('/dev/shm/{region_name}', 0o640)")

    # the node takes the owner from its settings (here SHMKV_REGION_OWNER); last, as
    # running_node unlinks the region when it is done
    monkeypatch.setenv("SHMKV_REGION_OWNER", other_user.name)
    with running_node(region_name) as node:
        assert node.ready["config"]["region_owner"] == other_user.name
        assert node.ready["stats"]["items"] == 1


def test_another_user_without_access_gets_permissiondenied_and_json_from_the_cli(
        other_user: User, region_name: str) -> None:
    with shmkv.Cache.create(region_name, 1 << 20) as c:  # root's, mode 0600
        c.set("k", "v")
        raised = other_user.python(
            "import shmkv\n"
            f"try:\n    shmkv.Cache.open({region_name!r})\n"
            "except shmkv.PermissionDenied as exc:\n    print('PermissionDenied', exc)\n")
        assert raised.startswith("PermissionDenied") and "permission denied" in raised
        for command in (["get", "k"], ["unlink"], ["doctor"]):
            code, out, err = other_user.shmkv("--region", region_name, *command)
            assert (code, out) == (1, ""), (command, err)
            assert _error(err)["error"] == "PermissionDenied"
        assert c.get("k") == b"v"  # nothing was removed or changed


def test_a_group_shared_region_opens_for_a_member_who_names_its_owner(
        other_user: User, region_name: str) -> None:
    with shmkv.Cache.create(region_name, 1 << 20, mode=0o660) as c:
        c.set("k", "shared")
        os.chown(f"/dev/shm/{region_name}", -1, other_user.gid)
        group = grp.getgrgid(other_user.gid).gr_name
        code, _, err = other_user.shmkv("--region", region_name, "get", "k")
        assert code == 1 and _error(err)["error"] == "PermissionDenied"
        code, out, err = other_user.shmkv("--region", region_name, "--region-owner", "root",
                                          "get", "k")
        assert code == 0, err
        assert json.loads(out)["value"] == "shared"
        assert group  # the region's group is the member's own
