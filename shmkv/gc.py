"""`shmkv gc`: find, and with `yes` remove, what dead shmkv processes left behind on this host.

A region outlives the processes that use it on purpose (a cache that survives restarts), so gc
never removes a region for being unused. A region owns nothing outside its /dev/shm object or
its file (its locks live inside it: locks.py, holders.py), so the one thing a dead process can
leave behind is a half-created region: its creator died between making the object and writing
the magic, which it writes last (SharedRegion.create, region.py). Nobody can open it, and it
holds its memory (or disk) until removed. gc removes those, and only objects owned by the user
running it (run it as each user that creates regions).

Evidence. An object is taken for a half-created region only if all of this holds:
  * it is a regular file owned by this user, in /dev/shm (under a name Cache.create could
    have made) or in one of `search_dirs` (file-backed regions; by default /var/lib/shmkv,
    where the systemd unit keeps them). Symbolic links are not followed;
  * its magic is zero and the rest of its header is one this release writes, whole and
    consistent with the object's size (as layout.unpack_header judges it): a region this
    release began to create. Anything else is not ours and is left alone, however old;
  * the header's created_at_ns is older than the grace period (a creator writes the header
    and then takes its locks: for a moment, a creator at work holds none);
  * no process has it open. Every handle holds a shared OFD lock on the object's HOLDERS byte
    for its whole life, a creator holds INIT and HOLDERS exclusively while creating, and the
    kernel drops those locks with the last descriptor of their open file description,
    however the process ends (holders.py). gc asks (F_OFD_GETLK) through a descriptor of its
    own, which holds nothing: the answer is exact, with no scan of processes.
A ready region (magic written) is never removed, used or not. A region of an older layout
whose locks were SysV semaphores (layout versions 3 to 5, or 6 with lock kind 1) cannot be
opened by this release: gc reports it and never removes it (`shmkv unlink` does; its
semaphores go at reboot, or with ipcrm). Suspects that are kept are reported with the reason.

Before removing, gc looks again while holding the object as a creator does: it takes INIT and
HOLDERS exclusively (holders.attach; nobody can attach meanwhile), and removes the name only
if nobody else held HOLDERS, and the name and the header still are what the scan saw.
"""

from __future__ import annotations

import os
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import holders
from . import layout as L
from . import region as R
from .errors import IncompatibleLayout

SHM_DIR = "/dev/shm"
DEFAULT_SEARCH_DIRS = ("/var/lib/shmkv",)  # StateDirectory of systemd/shmkv.service
DEFAULT_GRACE_S = 60.0
HALF_CREATED = "half-created region"
OLDER_LAYOUT = "region of an older layout (SysV semaphores)"
# Layouts whose locks were SysV semaphores: 3 to 5, and 6 when its lock_kind says so
_FIRST_SYSV_LAYOUT, _LAST_SYSV_LAYOUT, _LOCKS_SYSV = 3, 6, 1


@dataclass(frozen=True)
class Header:
    """A shmkv header found in a file: where it was read, whose it is and what it claims."""

    path: str
    identity: tuple[int, int]  # st_dev, st_ino
    owner_uid: int
    ready: bool  # the magic is written
    created_at_ns: int
    version: int
    sysv: bool  # an older layout locked with SysV semaphores: this release cannot open it
    creation: bytes  # the header as its creator wrote it, magic aside (what "changed" means)


@dataclass
class Orphan:
    """Something gc removes with yes=True (or a suspect it keeps: see `Report.kept`)."""

    kind: str  # HALF_CREATED or OLDER_LAYOUT (never removed)
    reason: str
    region: str  # the name to give shmkv: a /dev/shm name, or the file's path
    header: Header
    outcome: str = "would remove"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "region": self.region, "reason": self.reason,
                "outcome": self.outcome}


@dataclass
class Report:
    orphans: list[Orphan]
    kept: list[Orphan]  # looks like shmkv's, but not provably an orphan: left alone


# --- what gc reads ---------------------------------------------------------------------------
def _open(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def read_header(path: str) -> Header | None:
    """The shmkv header of the regular file at path (ready, half-created, or of an older SysV
    layout), or None if it has none. Symbolic links are not followed."""
    try:
        fd = _open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _header(fd, path)
    finally:
        os.close(fd)


def _header(fd: int, path: str) -> Header | None:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < L.HEADER_BYTES:
            return None
        head = os.pread(fd, L.CREATION_HEADER_BYTES, 0)
    except OSError:
        return None
    ready = head[:8] == L.MAGIC
    if not ready and any(head[:8]):
        return None  # not ours: a half-created region has zeros where the magic goes
    fields = L.HEADER.unpack_from(head)  # magic, version, header_bytes, region_bytes, ...
    version, header_bytes, region_bytes = fields[1:4]
    created_at_ns = fields[-2]  # the last two: created_at_ns, state
    lock_kind = int.from_bytes(head[L.H_LOCK_KIND:L.H_LOCK_KIND + 4], "little")
    sysv = (_FIRST_SYSV_LAYOUT <= version < _LAST_SYSV_LAYOUT
            or (version == _LAST_SYSV_LAYOUT and lock_kind == _LOCKS_SYSV))
    if sysv:  # judged by what older releases check first: the sizes they recorded
        if header_bytes != L.HEADER_BYTES or region_bytes != st.st_size:
            return None
    else:
        try:  # the header is written whole before the magic: judge it as if it were there
            L.unpack_header(L.MAGIC + head[8:], st.st_size)
        except IncompatibleLayout:
            return None
    return Header(path, (st.st_dev, st.st_ino), st.st_uid, ready, created_at_ns, version,
                  sysv, head[8:])


def _files_in(directory: str) -> Iterator[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in sorted(names):
        yield os.path.join(directory, name)


def _candidates(shm_dir: str, search_dirs: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(region name, path) of what may be a region: names in shm_dir that Cache.create could
    have made (sem.* are POSIX semaphores), and every file in search_dirs."""
    for path in _files_in(shm_dir):
        name = os.path.basename(path)
        if not name.startswith("sem."):
            try:
                yield R.check_name(name), path
            except ValueError:
                continue
    for directory in search_dirs:
        for path in _files_in(directory):
            yield path, path


# --- finding ---------------------------------------------------------------------------------
def find_orphans(grace_s: float = DEFAULT_GRACE_S,
                 search_dirs: Iterable[str] = DEFAULT_SEARCH_DIRS, *,
                 clock: Callable[[], float] = time.time, shm_dir: str | None = None) -> Report:
    """Look, remove nothing: the orphans, and the suspects kept (with why)."""
    now_s, uid = clock(), os.geteuid()
    report = Report([], [])
    for region, path in _candidates(SHM_DIR if shm_dir is None else shm_dir, search_dirs):
        try:
            fd = _open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            header = _header(fd, path)
            if header is None or header.owner_uid != uid:
                continue
            if header.sysv:
                report.kept.append(Orphan(OLDER_LAYOUT, _older_reason(region, header),
                                          region, header))
            elif not header.ready:
                _judge(report, Orphan(HALF_CREATED, "", region, header),
                       holders.others_attached(fd), now_s - header.created_at_ns / 1e9,
                       grace_s)
        finally:
            os.close(fd)
    return report


def _judge(report: Report, suspect: Orphan, open_somewhere: bool, age_s: float,
           grace_s: float) -> None:
    if open_somewhere:
        suspect.reason = "no magic yet, but a process has it open (its creator, still at work)"
    elif age_s < grace_s:
        suspect.reason = (f"no magic yet, but {age_s:.0f} s old, within the grace period of "
                          f"{grace_s:g} s: its creator may still be at work")
    else:
        suspect.reason = (f"its creator died before writing the magic: {age_s:.0f} s old, "
                          "and no process has it open")
        report.orphans.append(suspect)
        return
    report.kept.append(suspect)


def _older_reason(region: str, header: Header) -> str:
    state = "" if header.ready else "half-created, "
    return (f"{state}layout version {header.version}, locked with SysV semaphores: this "
            f"release cannot open it. `shmkv --region {shlex.quote(region)} unlink` removes "
            "it; its semaphores go at reboot, or with ipcrm")


# --- removing --------------------------------------------------------------------------------
def remove(orphan: Orphan) -> None:
    """Remove one orphan's name after looking again; raises OSError (or a ShmKVError) if that
    fails or if it is no longer what the scan saw."""
    path, seen = orphan.header.path, orphan.header
    fd = _open(path, os.O_RDWR)
    try:
        # Held as its creator held it (INIT, HOLDERS exclusively): nobody attaches meanwhile.
        if not holders.attach(fd, 0.0):
            raise BlockingIOError(f"{orphan.region} is open in a process now; left alone")
        st = os.lstat(path)
        if _header(fd, path) != seen or (st.st_dev, st.st_ino) != seen.identity:
            raise FileExistsError(f"{orphan.region} changed since the scan; left alone")
        os.unlink(path)  # what shm_unlink does for a /dev/shm name
    finally:
        os.close(fd)  # drops our locks


def collect_garbage(yes: bool = False, grace_s: float = DEFAULT_GRACE_S,
                    search_dirs: Iterable[str] = DEFAULT_SEARCH_DIRS, *,
                    clock: Callable[[], float] = time.time,
                    shm_dir: str | None = None) -> dict[str, Any]:
    """Find orphans and, with yes, remove them; the report `shmkv gc` prints. A removal that
    fails is reported in its orphan's outcome and counted in "failed"; the others go on.
    shm_dir defaults to SHM_DIR, read when called."""
    search_dirs = list(search_dirs)
    shm_dir = SHM_DIR if shm_dir is None else shm_dir
    if not grace_s >= 0:  # NaN too
        raise ValueError("grace_s must be a number of seconds >= 0")
    report = find_orphans(grace_s, search_dirs, clock=clock, shm_dir=shm_dir)
    failed = 0
    for orphan in report.orphans if yes else ():
        try:
            remove(orphan)
            orphan.outcome = "removed"
        except Exception as exc:  # noqa: BLE001 - reported, and the others still go
            orphan.outcome = f"not removed: {type(exc).__name__}: {exc}"
            failed += 1
    return {
        "dry_run": not yes,
        "grace_s": grace_s,
        "searched": [shm_dir, *search_dirs],
        "orphans": [o.to_json() for o in report.orphans],
        "kept": [o.to_json() | {"outcome": "kept"} for o in report.kept],
        "removed": sum(o.outcome == "removed" for o in report.orphans),
        "failed": failed,
    }
