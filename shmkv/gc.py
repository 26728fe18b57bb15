"""`shmkv gc`: find, and with `yes` remove, what dead shmkv processes left behind on this host.

A region outlives the processes that use it on purpose (a cache that survives restarts), so gc
never removes a region for being unused. It removes three kinds of orphan, and only objects
owned by the user running it (run it as each user that creates regions):

  * orphaned semaphores: the SysV semaphores of a region whose shm object is gone (removed by
    hand, or a creator that died between making its semaphores and recording them). Nothing
    can reach them again; they count against the kernel's semaphore limits until reboot.
  * half-created regions: a /dev/shm object with a plausible shmkv header but no magic (its
    creator writes the magic last, see region.py), older than the grace period and open in no
    process: its creator died. Removed with the semaphores its header records.
  * regions without their semaphores: a ready region some of whose semaphores were removed
    behind its back (by hand, or by systemd-logind's RemoveIPC). Nobody can open it again
    ("the region's semaphores are gone"); it is removed, with those of its semaphores that
    remain, unless a process still has it open.

Evidence, since SysV semaphores carry no name. A semaphore set is taken for an orphaned shmkv
semaphore only if all of this holds:
  * no region claims its key: every region header gc can find records the first key of its
    run (H_SEM_KEY) and the run's length follows from the header (RegionLocks.count). Headers
    are read from every object in /dev/shm, from the files in `search_dirs` (file-backed
    regions; by default /var/lib/shmkv, where the systemd unit keeps them), and from every file
    that a process has open (so a region whose name was removed but which processes still use
    keeps its semaphores, and so does a file-backed region anywhere that is open). A file-backed
    region elsewhere that nobody has open is invisible: name its directory with `search_dirs`,
    or gc takes its semaphores for orphans.
  * it looks like one of ours: a single-semaphore set (RegionLocks makes no other kind), with a
    key in RegionLocks' range [KEY_MIN, KEY_MAX), owned and created by this user, with a mode
    that lets its owner read and write and has no execute bits (regions pass a file mode);
  * it is one of a run of at least MIN_RUN such sets under consecutive keys (a region has one
    per stripe, one for the arena and one per process record), all created within
    RUN_CREATED_WITHIN_S of each other (RegionLocks.create_all makes them in one loop);
  * the run is older than the grace period (a creator records the key a few microseconds after
    making the run), and no semaphore in it is held or waited for: a holder would be a live
    process (the kernel gives back the semaphores of a dead one, SEM_UNDO).
What does not fit is left alone, however old: other software's semaphores, and ours that gc
cannot prove orphaned. Things that look like shmkv's but are kept are reported with the reason.

Before removing anything, gc looks again: a semaphore is removed by its id (a set re-created
under the same key has another id) and only while it is still free, a region name only while
its header still says what it said.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import layout as L
from . import region as R
from .errors import IncompatibleLayout
from .locks import KEY_MAX, KEY_MIN, RegionLocks

SHM_DIR = "/dev/shm"
DEFAULT_SEARCH_DIRS = ("/var/lib/shmkv",)  # StateDirectory of systemd/shmkv.service
DEFAULT_GRACE_S = 60.0
MIN_RUN = 3  # the fewest semaphores a region has: one stripe, the arena, one process record
RUN_CREATED_WITHIN_S = 10
SEMAPHORES = "semaphores"
HALF_CREATED = "half-created region"
WITHOUT_SEMAPHORES = "region without semaphores"


# --- what gc reads ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SemSet:
    """One row of /proc/sysvipc/sem."""

    key: int
    sem_id: int
    mode: int
    nsems: int
    uid: int
    cuid: int
    created_at_s: int  # ctime: creation, or the last semctl that changed the set


@dataclass(frozen=True)
class Header:
    """A shmkv header found in a file: where it was read and what it claims."""

    path: str  # where it can be read (for an open file: /proc/<pid>/fd/<n>)
    identity: tuple[int, int]  # st_dev, st_ino
    owner_uid: int
    ready: bool  # the magic is written
    created_at_ns: int
    sem_keys: range  # empty when no key is recorded yet


@dataclass
class Orphan:
    """Something gc removes with yes=True (or a suspect it keeps: see `kept`)."""

    kind: str  # SEMAPHORES, HALF_CREATED or WITHOUT_SEMAPHORES
    reason: str
    region: str | None = None  # the /dev/shm name
    sem_ids: dict[int, int] = field(default_factory=dict)  # key -> id, as seen by the scan
    header: Header | None = None
    outcome: str = "would remove"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "region": self.region,
                "sem_keys": _key_ranges(self.sem_ids), "reason": self.reason,
                "outcome": self.outcome}


@dataclass
class Report:
    orphans: list[Orphan]
    kept: list[Orphan]  # looks like shmkv's, but not provably an orphan: left alone


def read_semaphores(path: str = "/proc/sysvipc/sem") -> dict[int, SemSet]:
    """Every SysV semaphore set of this IPC namespace, by key (key 0, IPC_PRIVATE, skipped)."""
    sets = {}
    with open(path) as f:
        next(f)  # key semid perms nsems uid gid cuid cgid otime ctime
        for line in f:
            key, sem_id, perms, nsems, uid, _, cuid, _, _, ctime = line.split()[:10]
            if int(key):
                sets[int(key)] = SemSet(int(key), int(sem_id), int(perms, 8), int(nsems),
                                        int(uid), int(cuid), int(ctime))
    return sets


def open_files() -> dict[tuple[int, int], tuple[set[int], str]]:
    """{(st_dev, st_ino): (pids, a /proc path to read it)} of the regular files that processes
    have open, deleted ones included. Processes gc may not look into are not listed."""
    found: dict[tuple[int, int], tuple[set[int], str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            path = f"{fd_dir}/{fd}"
            try:
                if not os.readlink(path).startswith("/"):  # sockets, pipes, anon inodes
                    continue
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                pids, _ = found.setdefault((st.st_dev, st.st_ino), (set(), path))
                pids.add(int(pid))
    return found


def read_header(path: str, follow_links: bool = False) -> Header | None:
    """The shmkv header of the file at path (ready or half-created), or None if it has none.
    Symbolic links are not followed unless asked (a /proc/<pid>/fd/<n> path is one)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < L.HEADER_BYTES:
            return None
        head = os.pread(fd, L.HEADER_BYTES, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    ready = head[:8] == L.MAGIC
    if not ready and any(head[:8]):
        return None  # not ours: a half-created region has zeros where the magic goes
    try:  # the header is written whole before the magic: judge it as if the magic were there
        layout, _ = L.unpack_header(L.MAGIC + head[8:], st.st_size)
    except IncompatibleLayout:
        return None
    key = int.from_bytes(head[L.H_SEM_KEY:L.H_SEM_KEY + 4], "little")
    created_at_ns = L.HEADER.unpack_from(head)[-2]  # the last two fields: created_at_ns, state
    keys = range(key, key + RegionLocks.count(layout)) if key else range(0)
    return Header(path, (st.st_dev, st.st_ino), st.st_uid, ready, created_at_ns, keys)


def _files_in(directory: str) -> Iterator[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in sorted(names):
        yield os.path.join(directory, name)


def _shm_names(shm_dir: str) -> Iterator[str]:
    """Names in shm_dir that Cache.create could have made (sem.* are POSIX semaphores)."""
    for path in _files_in(shm_dir):
        name = os.path.basename(path)
        if not name.startswith("sem."):
            try:
                yield R.check_name(name)
            except ValueError:
                continue


# --- finding ---------------------------------------------------------------------------------
def find_orphans(grace_s: float = DEFAULT_GRACE_S,
                 search_dirs: Iterable[str] = DEFAULT_SEARCH_DIRS, *,
                 clock: Callable[[], float] = time.time, shm_dir: str = SHM_DIR) -> Report:
    """Look, remove nothing: the orphans, and the suspects kept (with why)."""
    now_s, uid = clock(), os.geteuid()
    sems = read_semaphores()
    held_open = open_files()
    in_shm = {name: read_header(os.path.join(shm_dir, name)) for name in _shm_names(shm_dir)}
    claims = [h for h in in_shm.values() if h]
    claims += [h for h in map(read_header, (p for d in search_dirs for p in _files_in(d))) if h]
    claims += [h for h in (read_header(path, True) for _, path in held_open.values()) if h]
    claimed = {key for h in claims for key in h.sem_keys}

    report = Report([], [])
    for name, header in in_shm.items():
        if header and header.owner_uid == uid:
            _judge_region(report, name, header, sems, held_open, grace_s, now_s)
    ours = {key: s for key, s in sems.items() if key not in claimed and _looks_ours(s, uid)}
    for run in _runs(sorted(ours)):
        _judge_run(report, [ours[key] for key in run], grace_s, now_s)
    return report


def _looks_ours(s: SemSet, uid: int) -> bool:
    return (s.nsems == 1 and KEY_MIN <= s.key < KEY_MAX and s.uid == s.cuid == uid
            and s.mode & 0o600 == 0o600 and not s.mode & 0o111)


def _runs(keys: list[int]) -> Iterator[list[int]]:
    """Maximal runs of consecutive keys in a sorted list."""
    run: list[int] = []
    for key in keys:
        if run and key != run[-1] + 1:
            yield run
            run = []
        run.append(key)
    if run:
        yield run


def _judge_run(report: Report, run: list[SemSet], grace_s: float, now_s: float) -> None:
    if len(run) < MIN_RUN:
        return  # too short to be a region's: not ours to judge
    created = [s.created_at_s for s in run]
    if max(created) - min(created) > RUN_CREATED_WITHIN_S:
        return  # not made in one go: not a region's run
    suspect = Orphan(SEMAPHORES, "", sem_ids={s.key: s.sem_id for s in run})
    busy = [s.key for s in run if not _free(s.key, s.sem_id)]
    if busy:
        suspect.reason = f"no region records them, but semaphore {busy[0]} is held or waited " \
                         "for: a live process uses them"
        report.kept.append(suspect)
    elif now_s - max(created) < grace_s:
        suspect.reason = (f"no region records them, but they are {now_s - max(created):.0f} s "
                          f"old, within the grace period of {grace_s:g} s: a region may be "
                          "being created")
        report.kept.append(suspect)
    else:
        suspect.reason = (f"a run of {len(run)} shmkv semaphores that no region in /dev/shm, "
                          "the searched directories or any open file records: their region "
                          "is gone")
        report.orphans.append(suspect)


def _judge_region(report: Report, name: str, header: Header, sems: dict[int, SemSet],
                  held_open: dict[tuple[int, int], tuple[set[int], str]], grace_s: float,
                  now_s: float) -> None:
    uid = header.owner_uid
    # a region's own semaphores go with it, those that still are what it made
    own = {key: sems[key].sem_id for key in header.sem_keys
           if key in sems and _looks_ours(sems[key], uid)}
    users = held_open.get(header.identity, (set(), ""))[0]
    if not header.ready:
        age_s = now_s - header.created_at_ns / 1e9
        suspect = Orphan(HALF_CREATED, "", name, own, header)
        if users:
            suspect.reason = f"no magic yet, but open in pids {sorted(users)}: being created"
        elif age_s < grace_s:
            suspect.reason = (f"no magic yet, but {age_s:.0f} s old, within the grace period of "
                              f"{grace_s:g} s: its creator may still be at work")
        else:
            suspect.reason = (f"its creator died {age_s:.0f} s ago before writing the magic "
                              "(the object is open in no process)")
            report.orphans.append(suspect)
            return
        report.kept.append(suspect)
        return
    missing = [key for key in header.sem_keys if key not in own]
    if not missing:
        return  # a live region, used or not
    suspect = Orphan(WITHOUT_SEMAPHORES, "", name, own, header)
    if users:
        suspect.reason = (f"semaphore {missing[0]} and {len(missing) - 1} more are gone, but "
                          f"pids {sorted(users)} still have it open")
        report.kept.append(suspect)
    else:
        suspect.reason = (f"semaphore {missing[0]} and {len(missing) - 1} more of its "
                          f"{len(header.sem_keys)} are gone (removed by hand or by "
                          "RemoveIPC): it cannot be opened again")
        report.orphans.append(suspect)


def _free(key: int, sem_id: int) -> bool:
    """The set at key is still sem_id, nobody holds it and nobody waits on it."""
    seen = RegionLocks.probe(key)
    return seen is not None and seen[0] == sem_id and seen[1] == 1 and not seen[2]


# --- removing --------------------------------------------------------------------------------
def remove(orphan: Orphan, shm_dir: str = SHM_DIR) -> None:
    """Remove one orphan, after looking again; raises OSError (or a ShmKVError) if that fails
    or if it is no longer what the scan saw."""
    if orphan.region is not None:
        assert orphan.header is not None
        now = read_header(os.path.join(shm_dir, orphan.region))
        if now != orphan.header:
            raise FileExistsError(f"{orphan.region} changed since the scan; left alone")
    busy = [key for key, sem_id in orphan.sem_ids.items() if not _free(key, sem_id)]
    if busy:
        raise PermissionError(f"semaphore {busy[0]} is held now; left alone")
    if orphan.region is not None:
        R.unlink_mapping(orphan.region)  # the name first: nobody opens it while its locks go
    for sem_id in orphan.sem_ids.values():
        RegionLocks.remove_by_id(sem_id)


def collect_garbage(yes: bool = False, grace_s: float = DEFAULT_GRACE_S,
                    search_dirs: Iterable[str] = DEFAULT_SEARCH_DIRS, *,
                    clock: Callable[[], float] = time.time,
                    shm_dir: str = SHM_DIR) -> dict[str, Any]:
    """Find orphans and, with yes, remove them; the report `shmkv gc` prints. A removal that
    fails is reported in its orphan's outcome and counted in "failed"; the others go on."""
    search_dirs = list(search_dirs)
    if not grace_s >= 0:  # NaN too
        raise ValueError("grace_s must be a number of seconds >= 0")
    report = find_orphans(grace_s, search_dirs, clock=clock, shm_dir=shm_dir)
    failed = 0
    for orphan in report.orphans if yes else ():
        try:
            remove(orphan, shm_dir)
            orphan.outcome = "removed"
        except Exception as exc:  # noqa: BLE001 - reported, and the others still go
            orphan.outcome = f"not removed: {type(exc).__name__}: {exc}"
            failed += 1
    return {
        "dry_run": not yes,
        "grace_s": grace_s,
        "searched": [shm_dir, *search_dirs],  # and every file open in a process
        "orphans": [o.to_json() for o in report.orphans],
        "kept": [o.to_json() | {"outcome": "kept"} for o in report.kept],
        "removed": sum(o.outcome == "removed" for o in report.orphans),
        "failed": failed,
    }


def _key_ranges(sem_ids: dict[int, int]) -> list[list[int]]:
    """Keys as [first, last] runs, for people reading the report."""
    return [[run[0], run[-1]] for run in _runs(sorted(sem_ids))]
