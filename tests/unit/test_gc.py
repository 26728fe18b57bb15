"""`shmkv gc` (shmkv/gc.py): exactly the orphans go; live regions, their semaphores, and
semaphores of other software stay.

gc looks at every semaphore and every /dev/shm object of the host, and other test sessions may
be running meanwhile (their regions half-made, their file-backed regions closed): a gc of the
real host from a test could take their semaphores. So each scenario runs in a forked child with
its own SysV IPC namespace and its own tmpfs on /dev/shm, where gc sees only what the scenario
made, and where the kernel removes every semaphore and shm object when the child exits, however
the test ends. Without the privilege to make namespaces, the scenarios are skipped.
"""

from __future__ import annotations

import ctypes
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import sysv_ipc
from test_cli import Shmkv  # the CLI runner of tests/test_cli.py
from tests_support import ctx, sysv_semaphore_keys

import shmkv
from shmkv import gc
from shmkv import layout as L
from shmkv.locks import KEY_MIN

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
SCENARIO_TIMEOUT_S = 120
ARENA_BYTES = 1 << 20


# --- a private host for each scenario ----------------------------------------------------
def _enter_private_namespaces() -> None:
    """Own SysV IPC namespace, own mount namespace with a fresh tmpfs on /dev/shm. Without
    root, through a user namespace in which we are root (where the kernel allows them). The
    mounts are made private before the tmpfs goes on: nothing propagates to the host."""
    libc = ctypes.CDLL(None, use_errno=True)

    def call(name: str, *args: object) -> None:
        if getattr(libc, name)(*args):
            code = ctypes.get_errno()
            raise OSError(code, f"{name}: {os.strerror(code)}")

    uid, gid = os.getuid(), os.getgid()
    try:
        call("unshare", CLONE_NEWNS | CLONE_NEWIPC)
    except PermissionError:
        call("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    call("mount", b"tmpfs", b"/dev/shm", b"tmpfs", 0, b"size=64m,mode=1777")


def _child(conn, scenario: Callable[[], None]) -> None:
    try:
        _enter_private_namespaces()
    except OSError as exc:
        conn.send(("skip", f"cannot make a private IPC namespace and /dev/shm here: {exc}"))
        return
    try:
        scenario()
    except BaseException:  # noqa: BLE001 - the parent reports it
        conn.send(("fail", traceback.format_exc()))
    else:
        conn.send(("ok", ""))


def run_isolated(scenario: Callable[[], None]) -> None:
    """Run scenario in a child with a private IPC namespace and /dev/shm; fail or skip here
    as it did there."""
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, scenario))
    child.start()
    child.join(SCENARIO_TIMEOUT_S)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the scenario hung")
    if not receive.poll():
        pytest.fail(f"the scenario's process died with exit code {child.exitcode}")
    status, text = receive.recv()
    if status == "skip":
        pytest.skip(text)
    if status == "fail":
        pytest.fail(text, pytrace=False)


# --- making orphans (inside the private namespaces) --------------------------------------
def _sem_keys(name: str) -> set[int]:
    """The semaphore keys a /dev/shm region's header records."""
    header = gc.read_header(f"/dev/shm/{name}")
    assert header is not None, name
    return set(header.sem_keys)


def _live_region(name: str) -> set[int]:
    with shmkv.Cache.create(name, arena_bytes=ARENA_BYTES) as c:
        c.set("k", b"still here")
    return _sem_keys(name)


def _orphan_semaphores(name: str) -> set[int]:
    """A region whose /dev/shm object was removed by hand: its semaphores stay behind."""
    keys = _live_region(name)
    os.unlink(f"/dev/shm/{name}")
    return keys


def _half_created(name: str) -> set[int]:
    """A region whose creator died after writing the header, before the state and the magic."""
    keys = _live_region(name)
    with open(f"/dev/shm/{name}", "r+b") as f:
        f.write(bytes(8))
        f.seek(L.H_STATE)
        f.write(bytes(4))
    return keys


def _without_a_semaphore(name: str) -> set[int]:
    """A region one of whose semaphores was removed behind its back: the rest stay."""
    keys = _live_region(name)
    sysv_ipc.Semaphore(min(keys)).remove()
    return keys - {min(keys)}


def _foreign_semaphores(key0: int = KEY_MIN + 12345) -> set[int]:
    """Sets of other software, in shmkv's key range: must survive any gc. (The namespace is
    private: only a region's random keys could take these, once in ~10**6 runs.)"""
    made = {
        # a run as long as a region's, but made with execute bits in its mode
        key0: 0o700, key0 + 1: 0o700, key0 + 2: 0o700,
        # single ones and pairs: no region has fewer than gc.MIN_RUN semaphores
        key0 + 10: 0o600, key0 + 20: 0o600, key0 + 21: 0o600,
    }
    for key, mode in made.items():
        sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=mode, initial_value=1)
    # a run of ours in every respect but its owner
    for key in range(key0 + 30, key0 + 33):
        sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=0o600, initial_value=1).uid = 4242
    return set(made) | set(range(key0 + 30, key0 + 33))


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _in_an_hour() -> float:
    """A clock for gc: everything made by the scenario is an hour old, past any grace."""
    return time.time() + 3600


def _kinds(report: dict) -> dict[str, str]:
    """{region name or first semaphore key: kind} of the orphans in a gc report."""
    return {o["region"] or str(o["sem_keys"][0][0]): o["kind"] for o in report["orphans"]}


def _keys_of(report_entry: dict) -> set[int]:
    return {key for first, last in report_entry["sem_keys"] for key in range(first, last + 1)}


def _assert_live_region_intact(name: str) -> None:
    with shmkv.Cache.open(name) as c:
        assert c.get("k") == b"still here"
        c.set("k2", b"writes work")  # its locks are all there


# --- scenarios (they run in the child) ------------------------------------------------------
def _scenario_module_api() -> None:
    live = _live_region("live")
    orphaned = _orphan_semaphores("gone")
    half = _half_created("half")
    without = _without_a_semaphore("nosem")
    foreign = _foreign_semaphores()

    # A dry run within the grace period: only the region without semaphores is an orphan
    # (a ready region has had all of them since before its magic); the rest is too young.
    report = gc.collect_garbage(search_dirs=())
    assert report["dry_run"] is True and report["removed"] == 0
    assert _kinds(report) == {"nosem": gc.WITHOUT_SEMAPHORES}
    assert {o["kind"] for o in report["kept"]} == {gc.SEMAPHORES, gc.HALF_CREATED}
    assert all("grace period" in o["reason"] for o in report["kept"])

    # An hour later: all three orphans, each with its semaphores; nothing removed yet.
    report = gc.collect_garbage(search_dirs=(), clock=_in_an_hour)
    by_kind = {o["kind"]: o for o in report["orphans"]}
    assert sorted(by_kind) == sorted([gc.SEMAPHORES, gc.HALF_CREATED, gc.WITHOUT_SEMAPHORES])
    assert _keys_of(by_kind[gc.SEMAPHORES]) == orphaned
    assert (by_kind[gc.HALF_CREATED]["region"], _keys_of(by_kind[gc.HALF_CREATED])) \
        == ("half", half)
    assert (by_kind[gc.WITHOUT_SEMAPHORES]["region"],
            _keys_of(by_kind[gc.WITHOUT_SEMAPHORES])) == ("nosem", without)
    assert all(o["outcome"] == "would remove" for o in report["orphans"])
    assert _shm_names() == {"live", "half", "nosem"}
    assert orphaned | half | without <= sysv_semaphore_keys()

    # --yes: exactly the orphans go
    report = gc.collect_garbage(yes=True, search_dirs=(), clock=_in_an_hour)
    assert report["removed"] == 3 and report["failed"] == 0
    assert all(o["outcome"] == "removed" for o in report["orphans"])
    assert _shm_names() == {"live"}
    assert sysv_semaphore_keys() == live | foreign
    _assert_live_region_intact("live")
    # and a second gc finds nothing more
    assert gc.collect_garbage(yes=True, search_dirs=(), clock=_in_an_hour)["orphans"] == []


def _scenario_regions_in_use_keep_their_semaphores() -> None:
    # A region whose name was removed while a process still uses it: its semaphores are
    # found through the open file, and stay.
    in_use = shmkv.Cache.create("in-use", arena_bytes=ARENA_BYTES)
    keys = _sem_keys("in-use")
    os.unlink("/dev/shm/in-use")
    # A region whose semaphore was removed, but that a process still has open: kept, said so.
    _without_a_semaphore("nosem")
    fd = os.open("/dev/shm/nosem", os.O_RDONLY)  # (open() would fail: its semaphore is gone)
    # A file-backed region nobody has open, in a searched directory: its semaphores stay.
    os.makedirs("/dev/shm/state")  # on the private tmpfs: removed with it
    file_region = "/dev/shm/state/data.shmkv"
    shmkv.Cache.create(file_region, arena_bytes=ARENA_BYTES).close()
    file_keys = set(gc.read_header(file_region).sem_keys)  # type: ignore[union-attr]
    try:
        report = gc.collect_garbage(yes=True, search_dirs=("/dev/shm/state",),
                                    clock=_in_an_hour)
        assert report["orphans"] == []
        kept = {o["region"]: o for o in report["kept"]}
        assert list(kept) == ["nosem"] and "still have it open" in kept["nosem"]["reason"]
        assert keys | file_keys <= sysv_semaphore_keys()
        in_use.set("k", b"v")  # its locks still work
        assert in_use.get("k") == b"v"
        # Without the directory, the closed file-backed region is invisible: gc would take its
        # semaphores for orphans (the documented limit), and a dry run says so.
        report = gc.collect_garbage(search_dirs=(), clock=_in_an_hour)
        assert [_keys_of(o) for o in report["orphans"]] == [file_keys]
    finally:
        os.close(fd)
        in_use.close()


def _scenario_held_semaphores_are_kept() -> None:
    # An orphaned run one of whose semaphores a live process holds: not provably an orphan.
    keys = _orphan_semaphores("gone")
    held = sysv_ipc.Semaphore(max(keys))
    held.undo = True
    held.acquire()
    report = gc.collect_garbage(yes=True, search_dirs=(), clock=_in_an_hour)
    assert report["orphans"] == [] and report["removed"] == 0
    assert [o["kind"] for o in report["kept"]] == [gc.SEMAPHORES]
    assert "held" in report["kept"][0]["reason"]
    assert keys <= sysv_semaphore_keys()
    held.release()
    report = gc.collect_garbage(yes=True, search_dirs=(), clock=_in_an_hour)
    assert report["removed"] == 1 and not keys & sysv_semaphore_keys()


def _scenario_cli() -> None:
    _cli = Shmkv("unused")  # gc ignores --region
    live = _live_region("live")
    orphaned = _orphan_semaphores("gone")
    _half_created("half")
    os.makedirs("/dev/shm/nothing-here")
    search = ("--search", "/dev/shm/nothing-here")

    dry = _cli("gc", "--grace-s", "0", *search)
    assert dry["dry_run"] is True and dry["grace_s"] == 0
    assert _kinds(dry) == {str(min(orphaned)): gc.SEMAPHORES, "half": gc.HALF_CREATED}
    assert all(o["reason"] and o["outcome"] == "would remove" for o in dry["orphans"])
    assert _shm_names() == {"live", "half", "nothing-here"}

    done = _cli("gc", "--yes", "--grace-s", "0", *search)
    assert (done["dry_run"], done["removed"], done["failed"]) == (False, 2, 0)
    assert _shm_names() == {"live", "nothing-here"}
    assert sysv_semaphore_keys() == live
    _assert_live_region_intact("live")


# --- the tests ----------------------------------------------------------------------------
def test_gc_removes_exactly_the_orphans_through_the_module_api() -> None:
    run_isolated(_scenario_module_api)


def test_gc_keeps_the_semaphores_of_regions_in_use_or_in_searched_directories() -> None:
    run_isolated(_scenario_regions_in_use_keep_their_semaphores)


def test_gc_keeps_an_orphan_run_while_a_live_process_holds_one_of_its_semaphores() -> None:
    run_isolated(_scenario_held_semaphores_are_kept)


def test_gc_command_reports_dry_then_removes_with_yes() -> None:
    run_isolated(_scenario_cli)


# Outside a private namespace, only what cannot remove anything: a dry run of the real host.
def test_gc_dry_run_of_the_host_removes_nothing(region_name: str) -> None:
    with shmkv.Cache.create(region_name, arena_bytes=ARENA_BYTES) as c:
        c.set("k", b"v")
        report = gc.collect_garbage()
        assert report["dry_run"] is True and report["removed"] == 0
        # our region is in use: never an orphan, its semaphores never suspects
        mine = _sem_keys(region_name)
        assert not any(_keys_of(o) & mine for o in report["orphans"] + report["kept"])
        assert region_name not in {o["region"] for o in report["orphans"] + report["kept"]}
        assert mine <= sysv_semaphore_keys() and c.get("k") == b"v"


def test_read_header_ignores_files_that_are_not_regions(tmp_path: Path) -> None:
    for name, data in {"empty": b"", "text": b"hello" * 1000, "zeros": bytes(8192),
                       "magic-then-garbage": L.MAGIC + os.urandom(8192)}.items():
        (tmp_path / name).write_bytes(data)
        assert gc.read_header(str(tmp_path / name)) is None, name
    (tmp_path / "link").symlink_to(tmp_path / "text")
    assert gc.read_header(str(tmp_path / "link")) is None

