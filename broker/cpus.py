"""Which CPUs the node's request-serving processes run on (`--cpu-affinity`).

A ZeroMQ request crosses two threads in the process that answers it: libzmq's I/O thread reads
the socket and wakes the loop's thread through an eventfd, and the reply goes back the same
way. On a small VM a wake-up on another CPU costs an interrupt to wake it (a halted vCPU exits
to the hypervisor); one on the same CPU does not. So each worker of a node with several runs
on one CPU, pinned before it makes its ZeroMQ context, whose I/O thread then inherits the pin
(Linux threads take their creator's mask). On 2 vCPUs (bench/README.md, "Workers on their own
CPU"): 5-9% off a get's round trip, and up to a fifth more gets a second from 8 client
processes, in rounds alternating with the workers unpinned. That is the thread-per-core shape
nginx's worker_cpu_affinity and Redis's server_cpulist offer; here it is the default.

    setting   a node with several workers        the single-process node (--workers 1)
    auto      worker i on the i-th (mod n) of    left to the scheduler: it also maintains,
              the node's own CPUs, as            flushes and snapshots, which had better be
              sched_getaffinity says at start    free to move
              (systemd's CPUAffinity= and
              taskset narrow them); with a
              RESP door, left to the scheduler
    off       left to the scheduler              left to the scheduler
    LIST      worker i on the i-th (mod n) of    the whole process on LIST (as taskset: its
    (0-3,8)   LIST                               threads and children inherit it)

Not with a RESP door under auto: its connections are the worker's own sockets, read by the
loop with no I/O thread between, so the pin saves no wake-up, and a worker pinned beside a
busy client cannot move away from it: redis-benchmark -c 50 -P 1 against two pinned workers
did 65-83k SETs/s against 93-115k for two free ones (alternating, 2 vCPUs).

`off` suits a host where the node shares a few CPUs with busy processes (a pinned worker cannot
move to an idle CPU when its own is taken), and a client on the node's host that happens to
run on its worker's CPU waits for it (remote clients never do). The supervisor, with the
node's maintenance, snapshots and replication, is never pinned.
"""

from __future__ import annotations

import os

AUTO, OFF = "auto", "off"
MAX_SETTING_CHARS = 1024  # a list of every CPU of a large host, as ranges, fits


def parse_setting(value: str) -> str:
    """The setting normalised ("auto", "off", or a CPU list as "0-3,8" sorted); ValueError
    saying what is wrong. CPUs the process may not use are refused when the node starts."""
    text = value.strip().lower()
    if text in (AUTO, OFF):
        return text
    return format_cpus(parse_cpus(text))


def parse_cpus(text: str) -> list[int]:
    """The CPUs of a list such as "0-3,8" (taskset's and systemd's form), sorted, once each."""
    if len(text) > MAX_SETTING_CHARS:
        raise ValueError(f"expected auto, off or a CPU list, got {len(text)} characters")
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"expected auto, off or a CPU list such as 0-3,8, got {text!r}") \
                from None
        if not 0 <= first <= last < 4096:  # CPU_SETSIZE is 1024; the kernel's limit 4096
            raise ValueError(f"expected CPU numbers from 0 to 4095 in rising ranges, got "
                             f"{part.strip()!r}")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def format_cpus(cpus: list[int]) -> str:
    """"0-3,8" for [0, 1, 2, 3, 8]."""
    ranges: list[list[int]] = []
    for cpu in cpus:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def allowed() -> list[int]:
    """The CPUs this process may run on, sorted."""
    return sorted(os.sched_getaffinity(0))


def chosen(setting: str) -> list[int] | None:
    """The CPUs the setting names for this process (None: off); ValueError for a CPU of the
    list this process may not use."""
    if setting == OFF:
        return None
    mine = allowed()
    if setting == AUTO:
        return mine
    listed = parse_cpus(setting)
    foreign = sorted(set(listed) - set(mine))
    if foreign:
        raise ValueError(f"{format_cpus(foreign)}: not among the CPUs this node may run on "
                         f"({format_cpus(mine)})")
    return listed


def worker_cpus(setting: str, count: int, resp_door: bool = False) -> list[int | None]:
    """The CPU each of count workers is pinned to (None: not pinned); auto pins none of the
    workers of a node with a RESP door (see the module's docstring)."""
    cpus = None if setting == AUTO and resp_door else chosen(setting)
    return [None if cpus is None else cpus[i % len(cpus)] for i in range(count)]


def pin_process(cpus: list[int]) -> None:
    """Run this process on cpus: each of its threads now (a pool numpy's BLAS started at
    import, say), and so the threads and processes they start later. OSError if the kernel
    refuses (a CPU taken offline or out of the cgroup's cpuset since the node started)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that has ended since
            pass


def try_pin_process(cpus: list[int]) -> str | None:
    """pin_process, or why it could not be (the process then runs where it may: a worker
    that serves unpinned beats one that cannot start)."""
    try:
        pin_process(cpus)
    except OSError as exc:
        return f"cannot run on CPU {format_cpus(cpus)}: {exc.strerror}"
    return None
