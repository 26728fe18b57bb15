"""A region's replication history (shmkv/replica.py): new_history keeps the previous id and
offset as repl_id2 and repl_offset2, so that replicas of the old history can resync partially."""

from __future__ import annotations

import re

import shmkv
from shmkv import layout as L
from shmkv import replica as RP


def test_a_new_history_keeps_the_previous_one_as_the_second(cache: shmkv.Cache) -> None:
    region = cache._region
    assert RP.repl_id(region) == "" and cache.stats()["replication"] is None
    first = RP.new_history(region)
    assert re.fullmatch(r"[0-9a-f]{40}", first) and RP.repl_id(region) == first
    RP.set_position(region, first, 1234)
    second = RP.new_history(region)
    assert second != first and RP.repl_id(region) == second
    assert RP.repl_id(region, previous=True) == first
    assert region.q[L.H_REPL_OFFSET2 >> 3] == 1234 and region.q[L.H_REPL_OFFSET >> 3] == 0
    assert cache.stats()["replication"] == {"repl_id": second, "offset": 0, "epoch": 0}
