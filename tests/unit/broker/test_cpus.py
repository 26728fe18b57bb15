"""broker/cpus.py: the --cpu-affinity setting, and the CPU each worker gets from it."""

from __future__ import annotations

import errno
import os

import pytest

from shmkv.broker import cpus


@pytest.mark.parametrize(("given", "normalised"), [
    ("auto", "auto"), (" AUTO ", "auto"), ("Off", "off"),
    ("0", "0"), ("3,1,2", "1-3"), ("0-3,8", "0-3,8"), ("8,0-3,2", "0-3,8"),
    ("5-5", "5"), ("0-1,3-4,6", "0-1,3-4,6"),
])
def test_a_setting_is_auto_off_or_a_cpu_list_written_in_rising_ranges(
        given: str, normalised: str) -> None:
    assert cpus.parse_setting(given) == normalised


@pytest.mark.parametrize(("given", "says"), [
    ("", "auto, off or a CPU list"), ("some", "auto, off or a CPU list"),
    ("1,,2", "auto, off or a CPU list"), ("1-2-3", "auto, off or a CPU list"),
    ("-1", "auto, off or a CPU list"), ("3-1", "rising ranges"), ("4096", "0 to 4095"),
    ("0," * 600, "characters"),
])
def test_a_setting_that_names_no_cpus_is_refused_saying_why(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        cpus.parse_setting(given)


def test_workers_take_the_cpus_in_turn(monkeypatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {4, 5, 6})
    assert cpus.worker_cpus("auto", 5) == [4, 5, 6, 4, 5]
    assert cpus.worker_cpus("6,4", 3) == [4, 6, 4]
    assert cpus.worker_cpus("off", 2) == [None, None]


def test_auto_leaves_the_workers_of_a_node_with_a_resp_door_free_and_a_list_does_not(
        monkeypatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpus.worker_cpus("auto", 2, resp_door=True) == [None, None]
    assert cpus.worker_cpus("1", 2, resp_door=True) == [1, 1]


def test_a_list_may_name_only_cpus_the_node_may_run_on(monkeypatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpus.chosen("1-2") == [1, 2]
    with pytest.raises(ValueError, match=r"4-5,7: not among the CPUs this node may run on "
                                         r"\(0-3\)"):
        cpus.chosen("2-5,7")


def test_a_pin_the_kernel_refuses_is_reported_and_leaves_the_process_where_it_was(
        monkeypatch) -> None:
    before = os.sched_getaffinity(0)

    def refuse(pid: int, mask: object) -> None:  # as for a CPU taken offline since the start
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(cpus.os, "sched_setaffinity", refuse)
    assert cpus.try_pin_process([3]) == "cannot run on CPU 3: Invalid argument"
    monkeypatch.undo()
    assert os.sched_getaffinity(0) == before
    assert cpus.try_pin_process(sorted(before)) is None
