"""Keyspace events are on while any live handle wants them: one handle letting go leaves them
on for another, a closed handle or a dead process wants none (holders.py's EVENTS lock)."""

from __future__ import annotations

import os
import signal

from tests_support import ctx

import shmkv


def test_events_stay_on_while_another_handle_still_wants_them(region_name: str) -> None:
    with shmkv.Cache.create(region_name, 1 << 20) as first, \
            shmkv.Cache.open(region_name) as second:
        first.enable_events(True)
        second.enable_events(True)
        second.enable_events(False)
        assert first.events_enabled and second.events_enabled
        second.enable_events(False)  # saying it twice changes nothing
        assert first.events_enabled
        first.enable_events(False)
        assert not first.events_enabled and not second.events_enabled


def test_wanting_events_twice_is_one_share(region_name: str) -> None:
    with shmkv.Cache.create(region_name, 1 << 20) as c:
        c.enable_events(True)
        c.enable_events(True)
        c.enable_events(False)
        assert not c.events_enabled


def test_closing_a_handle_that_wants_events_lets_go_of_them(region_name: str) -> None:
    with shmkv.Cache.create(region_name, 1 << 20) as c:
        other = shmkv.Cache.open(region_name)
        other.enable_events(True)
        assert c.events_enabled
        other.close()
        assert not c.events_enabled


def _want_events_then_wait(name: str, ready_w: int) -> None:
    cache = shmkv.Cache.open(name)
    cache.enable_events(True)
    os.write(ready_w, b"x")
    signal.pause()  # until SIGKILL


def test_a_killed_holders_share_goes_with_it_at_the_next_maintain(region_name: str) -> None:
    with shmkv.Cache.create(region_name, 1 << 20) as c:
        ready_r, ready_w = os.pipe()
        holder = ctx.Process(target=_want_events_then_wait, args=(region_name, ready_w))
        holder.start()
        try:
            assert os.read(ready_r, 1) == b"x"
            assert c.events_enabled
            c.maintain()
            assert c.events_enabled  # alive: still wanted
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(60)
            assert c.events_enabled  # nobody has looked yet
            c.maintain()
            assert not c.events_enabled
        finally:
            if holder.is_alive():
                holder.kill()
                holder.join(60)
            os.close(ready_r)
            os.close(ready_w)
