"""`shmkv gc` (shmkv/gc.py): a region whose creator died before writing the magic is removed
once it is past the grace period and open in no process; everything else stays: regions being
created or held open, ready regions (used or not), files that are not regions, other users'
objects, and regions of older layouts (reported only).

Half-created regions are made the way they happen: a real process is SIGKILLed inside
Cache.create, after the header and before the magic. The clock gc judges ages by is injected
(an hour later), so no test waits. A gc that removes (yes=True) of the real /dev/shm could take
what other test sessions on this host made on purpose, so those scenarios run gc on private
directories (`shm_dir` and `search_dirs`), where it sees only what the test made; on the real
/dev/shm, gc runs dry, and a test removes the one orphan it made with gc.remove.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_cli import Shmkv  # the CLI runner of tests/test_cli.py
from tests_support import ctx, new_region_name

import shmkv
from shmkv import gc, holders
from shmkv import layout as L

ARENA_BYTES = 1 << 20
WAIT_S = 60  # for a child to get where it is going; never a wait for state to change
Dirs = tuple[str, str]


def _an_hour_later() -> float:
    """gc's clock: whatever a test made is an hour old, past any grace period."""
    return time.time() + 3600


def _path(name: str) -> str:
    return name if "/" in name else os.path.join("/dev/shm", name)


# --- half-created regions, made by a creator that dies ---------------------------------------
def _create_and_stop(name: str, conn) -> None:
    """In a child: Cache.create(name), stopped right after the creator took its locks (the
    header is written by then, the magic is not), until the parent kills it."""
    real_attach = holders.attach

    def attach_then_stop(fd: int, timeout_s: float) -> bool:
        alone = real_attach(fd, timeout_s)
        conn.send("stopped in create")
        conn.recv()  # never answered: SIGKILLed here
        return alone

    holders.attach = attach_then_stop
    try:
        shmkv.Cache.create(name, arena_bytes=ARENA_BYTES)
        conn.send("create returned")
    except BaseException:  # noqa: BLE001 - the parent fails with it
        conn.send(traceback.format_exc())


@contextmanager
def creator_stopped_in_create(name: str) -> Iterator[object]:
    """A live process inside Cache.create(name), holding the region's INIT and HOLDERS locks
    as a creator does; SIGKILLed on leaving, if the test has not killed it yet."""
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_create_and_stop, args=(name, there))
    proc.start()
    there.close()  # so that a child that dies early ends our wait (EOF)
    try:
        assert here.poll(WAIT_S), "the creator did not get into Cache.create"
        assert here.recv() == "stopped in create"
        header = gc.read_header(_path(name))
        assert header is not None and not header.ready, "expected a header without magic"
        yield proc
    finally:
        proc.kill()
        proc.join(WAIT_S)
        here.close()


def half_created(name: str) -> None:
    """Leave a half-created region under name: its creator is SIGKILLed before the magic."""
    with creator_stopped_in_create(name) as proc:
        proc.kill()  # type: ignore[attr-defined]
        proc.join(WAIT_S)  # type: ignore[attr-defined]
        assert proc.exitcode == -signal.SIGKILL  # type: ignore[attr-defined]


def _header_bytes(**fields: int) -> tuple[bytes, int]:
    """A creation header of ARENA_BYTES (magic zero) and its region's size, with fields
    changed: version, magic (1 = written), lock_kind."""
    layout = L.plan_layout(ARENA_BYTES, None, L.DEFAULT_STRIPES, L.DEFAULT_MAX_COLLECTIONS)
    head = bytearray(L.pack_header(layout, 1, time.time_ns()))
    if fields.get("magic"):
        head[0:8] = L.MAGIC
    if "version" in fields:
        struct.pack_into("<I", head, 8, fields["version"])
    if "lock_kind" in fields:
        struct.pack_into("<I", head, L.H_LOCK_KIND, fields["lock_kind"])
    return bytes(head), layout.region_bytes


def _write(path: str, head: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


# --- private directories for gc --------------------------------------------------------------
@pytest.fixture
def dirs() -> Iterator[Dirs]:
    """A private stand-in for /dev/shm and a private searched directory: gc there sees only
    what the test made. Removed after the test with whatever is left in them."""
    top = tempfile.mkdtemp(prefix="shmkv-gc-test-")
    try:
        shm, state = os.path.join(top, "shm"), os.path.join(top, "state")
        os.mkdir(shm)
        os.mkdir(state)
        yield shm, state
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_gc(dirs: Dirs, yes: bool = False, **kwargs: object) -> dict:
    shm, state = dirs
    kwargs.setdefault("clock", _an_hour_later)
    return gc.collect_garbage(yes, search_dirs=[state], shm_dir=shm, **kwargs)  # type: ignore


def _regions(entries: list[dict]) -> dict[str, str]:
    return {o["region"]: o["kind"] for o in entries}


# --- the tests --------------------------------------------------------------------------------
def test_a_half_created_region_whose_creator_died_goes_after_the_grace_period(
        dirs: Dirs) -> None:
    shm, state = dirs
    in_shm, in_state = os.path.join(shm, "half"), os.path.join(state, "half.shmkv")
    half_created(in_shm)
    half_created(in_state)
    expected = {"half": gc.HALF_CREATED, in_state: gc.HALF_CREATED}

    # Within the grace period (the real clock: they are a moment old): kept, even with yes.
    report = run_gc(dirs, yes=True, clock=time.time)
    assert report["orphans"] == [] and report["removed"] == 0
    assert _regions(report["kept"]) == expected
    assert all("grace period" in o["reason"] for o in report["kept"])
    assert os.path.exists(in_shm) and os.path.exists(in_state)

    # An hour later, a dry run: both are orphans, and still there.
    report = run_gc(dirs)
    assert report["dry_run"] is True and report["searched"] == [shm, state]
    assert _regions(report["orphans"]) == expected and report["kept"] == []
    assert all(o["outcome"] == "would remove" and "died" in o["reason"]
               for o in report["orphans"])
    assert os.path.exists(in_shm) and os.path.exists(in_state)

    report = run_gc(dirs, yes=True)
    assert (report["dry_run"], report["removed"], report["failed"]) == (False, 2, 0)
    assert all(o["outcome"] == "removed" for o in report["orphans"])
    assert os.listdir(shm) == os.listdir(state) == []
    assert run_gc(dirs, yes=True)["orphans"] == []


def test_a_half_created_region_is_kept_while_a_live_process_holds_its_holders_lock(
        dirs: Dirs) -> None:
    shm, _ = dirs
    path = os.path.join(shm, "half")
    # Its creator alive (stopped in create, INIT and HOLDERS held exclusively): kept.
    with creator_stopped_in_create(path):
        report = run_gc(dirs, yes=True)
        assert report["orphans"] == [] and _regions(report["kept"]) == {"half": gc.HALF_CREATED}
        assert "has it open" in report["kept"][0]["reason"]
        assert os.path.exists(path)
    # The creator is dead, but a live handle holds HOLDERS shared, as every open handle does
    # (an OFD lock: gc's own descriptor sees it even in this process).
    fd = os.open(path, os.O_RDWR)
    try:
        assert holders.attach(fd, 1.0)  # the creator's locks went with it: we are alone
        holders.attached(fd)
        report = run_gc(dirs, yes=True)
        assert report["orphans"] == [] and "has it open" in report["kept"][0]["reason"]
        assert os.path.exists(path)
    finally:
        os.close(fd)
    report = run_gc(dirs, yes=True)
    assert report["removed"] == 1 and not os.path.exists(path)


def test_removal_looks_again_and_leaves_what_changed_or_is_held_now(dirs: Dirs) -> None:
    shm, _ = dirs
    path = os.path.join(shm, "half")
    half_created(path)
    (orphan,) = gc.find_orphans(search_dirs=(), shm_dir=shm, clock=_an_hour_later).orphans
    fd = os.open(path, os.O_RDWR)  # someone attaches between the scan and the removal
    try:
        holders.attach(fd, 1.0)
        holders.attached(fd)
        with pytest.raises(BlockingIOError):
            gc.remove(orphan)
        assert os.path.exists(path)
    finally:
        os.close(fd)
    with open(path, "r+b") as f:  # its header changes between the scan and the removal
        f.seek(L.H_STATE)
        f.write(struct.pack("<I", 1))
    with pytest.raises(FileExistsError):
        gc.remove(orphan)
    assert os.path.exists(path)
    os.unlink(path)  # another object under the name
    half_created(path)
    with pytest.raises(FileExistsError):
        gc.remove(orphan)
    assert os.path.exists(path)
    (orphan,) = gc.find_orphans(search_dirs=(), shm_dir=shm, clock=_an_hour_later).orphans
    gc.remove(orphan)
    assert not os.path.exists(path)


def test_ready_regions_are_never_removed_used_or_not(dirs: Dirs) -> None:
    shm, state = dirs
    idle, used = os.path.join(shm, "idle"), os.path.join(state, "used.shmkv")
    with shmkv.Cache.create(idle, arena_bytes=ARENA_BYTES) as c:
        c.set("k", b"idle")
    half_created(os.path.join(shm, "half"))  # so that gc has something to remove
    with shmkv.Cache.create(used, arena_bytes=ARENA_BYTES) as c:
        c.set("k", b"used")
        report = run_gc(dirs, yes=True, grace_s=0)
        assert _regions(report["orphans"]) == {"half": gc.HALF_CREATED}
        assert report["removed"] == 1 and report["kept"] == []
        assert c.get("k") == b"used"
    report = run_gc(dirs, yes=True, grace_s=0)  # nobody has either open now
    assert report["orphans"] == report["kept"] == []
    assert sorted(os.listdir(shm)) == ["idle"] and os.listdir(state) == ["used.shmkv"]
    with shmkv.Cache.open(idle) as c:
        assert c.get("k") == b"idle"


def test_files_that_are_not_half_created_regions_are_ignored(dirs: Dirs) -> None:
    shm, state = dirs
    head, size = _header_bytes()  # a header without magic, as a creator leaves it
    elsewhere = os.path.join(os.path.dirname(shm), "not-searched")
    os.mkdir(elsewhere)
    _write(os.path.join(elsewhere, "half"), head, size)
    foreign = {
        "empty": b"", "text": b"hello\n" * 1000, "zeros": bytes(8192),
        "magic-then-garbage": L.MAGIC + os.urandom(8192),
        "garbage-after-zero-magic": bytes(8) + os.urandom(8192),
    }
    for name, data in foreign.items():
        Path(shm, name).write_bytes(data)
        Path(state, name).write_bytes(data)
    _write(os.path.join(shm, "truncated"), head, size - 4096)  # size and header disagree
    _write(os.path.join(shm, "sem.posix"), head, size)  # a POSIX semaphore's name
    _write(os.path.join(shm, "other-magic"), b"NOTSHMKV" + head[8:], size)
    _write(os.path.join(shm, "not a region name"), head, size)
    os.symlink(os.path.join(elsewhere, "half"), os.path.join(shm, "link"))
    os.symlink(os.path.join(elsewhere, "half"), os.path.join(state, "link"))
    os.mkdir(os.path.join(shm, "a-directory"))
    os.mkfifo(os.path.join(shm, "a-fifo"))
    before = sorted(os.listdir(shm)), sorted(os.listdir(state))

    report = run_gc(dirs, yes=True, grace_s=0)
    assert report["orphans"] == report["kept"] == [] and report["failed"] == 0
    assert (sorted(os.listdir(shm)), sorted(os.listdir(state))) == before
    # the same header under a name gc does look at is an orphan: the rest were left for
    # what they are, not for want of evidence
    _write(os.path.join(shm, "half"), head, size)
    assert _regions(run_gc(dirs)["orphans"]) == {"half": gc.HALF_CREATED}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_objects_of_other_users_are_left_alone(dirs: Dirs) -> None:
    shm, _ = dirs
    path = os.path.join(shm, "theirs")
    half_created(path)
    os.chown(path, 4242, 4242)
    report = run_gc(dirs, yes=True, grace_s=0)
    assert report["orphans"] == report["kept"] == [] and os.path.exists(path)


def test_regions_of_an_older_layout_with_semaphores_are_reported_never_removed(
        dirs: Dirs) -> None:
    shm, state = dirs
    for path, fields in {os.path.join(shm, "v5"): {"version": 5, "magic": 1},
                         os.path.join(state, "v6-sysv"): {"version": 6, "lock_kind": 1, "magic": 1},
                         os.path.join(shm, "v4-half"): {"version": 4}}.items():
        _write(path, *_header_bytes(**fields))
    report = run_gc(dirs, yes=True, grace_s=0)
    assert report["orphans"] == [] and report["removed"] == 0
    kept = {o["region"]: o for o in report["kept"]}
    assert set(kept) == {"v5", os.path.join(state, "v6-sysv"), "v4-half"}
    assert all(o["kind"] == gc.OLDER_LAYOUT and o["outcome"] == "kept"
               and "SysV semaphores" in o["reason"] and "unlink" in o["reason"]
               for o in kept.values())
    assert sorted(os.listdir(shm)) == ["v4-half", "v5"] and os.listdir(state) == ["v6-sysv"]


def test_gc_command_prints_the_report_and_removes_with_yes(
        dirs: Dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    shm, state = dirs
    monkeypatch.setattr(gc, "SHM_DIR", shm)  # the command's /dev/shm: private to this test
    half_created(os.path.join(shm, "half"))
    shmkv.Cache.create(os.path.join(state, "ready.shmkv"), arena_bytes=ARENA_BYTES).close()
    cli = Shmkv("unused")  # gc ignores --region
    search = ("--search", state)

    report = cli("gc", *search)  # within the default grace period: kept
    assert set(report) == {"dry_run", "grace_s", "searched", "orphans", "kept", "removed",
                           "failed"}
    assert report["searched"] == [shm, state] and report["grace_s"] == gc.DEFAULT_GRACE_S
    assert report["orphans"] == [] and _regions(report["kept"]) == {"half": gc.HALF_CREATED}

    dry = cli("gc", "--grace-s", "0", *search)
    assert dry["dry_run"] is True and dry["removed"] == 0 and dry["kept"] == []
    assert dry["orphans"] == [{"kind": gc.HALF_CREATED, "region": "half",
                               "reason": dry["orphans"][0]["reason"],
                               "outcome": "would remove"}]
    assert os.listdir(shm) == ["half"]

    done = cli("gc", "--yes", "--grace-s", "0", *search)
    assert (done["dry_run"], done["removed"], done["failed"]) == (False, 1, 0)
    assert done["orphans"][0]["outcome"] == "removed"
    assert os.listdir(shm) == [] and os.listdir(state) == ["ready.shmkv"]


# --- on the real /dev/shm: dry runs, and removing only what the test made ------------------
def test_a_dry_run_of_the_host_removes_nothing(region_name: str) -> None:
    half, foreign = new_region_name(), new_region_name()
    try:
        Path("/dev/shm", foreign).write_bytes(b"not a region\n" * 1000)
        half_created(half)
        with shmkv.Cache.create(region_name, arena_bytes=ARENA_BYTES) as c:
            c.set("k", b"v")
            report = gc.collect_garbage(clock=_an_hour_later)
            assert report["dry_run"] is True and report["removed"] == report["failed"] == 0
            assert all(o["outcome"] == "would remove" for o in report["orphans"])
            mine = [o for o in report["orphans"] + report["kept"]
                    if o["region"] in (half, foreign, region_name)]
            assert mine == [o for o in report["orphans"] if o["region"] == half]
            assert mine[0]["kind"] == gc.HALF_CREATED
            assert all(os.path.exists(_path(n)) for n in (half, foreign, region_name))
            assert c.get("k") == b"v"
    finally:
        shmkv.Cache.unlink(half)
        Path("/dev/shm", foreign).unlink(missing_ok=True)  # not a region: unlink refuses it


def test_a_half_created_object_in_dev_shm_is_found_and_removed(region_name: str) -> None:
    half_created(region_name)
    report = gc.find_orphans(search_dirs=(), clock=_an_hour_later)
    (orphan,) = [o for o in report.orphans if o.region == region_name]
    assert orphan.kind == gc.HALF_CREATED and orphan.header.path == f"/dev/shm/{region_name}"
    gc.remove(orphan)
    assert not os.path.exists(f"/dev/shm/{region_name}")


def test_read_header_ignores_files_that_are_not_regions(tmp_path: Path) -> None:
    for name, data in {"empty": b"", "text": b"hello" * 1000, "zeros": bytes(8192),
                       "magic-then-garbage": L.MAGIC + os.urandom(8192)}.items():
        (tmp_path / name).write_bytes(data)
        assert gc.read_header(str(tmp_path / name)) is None, name
    _write(str(tmp_path / "half"), *_header_bytes())
    assert gc.read_header(str(tmp_path / "half")) is not None
    (tmp_path / "link").symlink_to(tmp_path / "half")
    assert gc.read_header(str(tmp_path / "link")) is None


@pytest.mark.parametrize("grace_s", [-1.0, float("nan")])
def test_a_grace_period_must_be_a_number_of_seconds_not_below_zero(grace_s: float) -> None:
    with pytest.raises(ValueError):
        gc.collect_garbage(grace_s=grace_s)
