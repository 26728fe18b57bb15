"""A replica's apply path (shmkv/replica.py's Applier) after a failover: a demoted node and its
new primary continued one history each, so the same key can have the same version and value
length on both with other bytes; the demoted node must take the new primary's value."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from replication_support import copy_stripe
from tests_support import new_region_name

import shmkv
from shmkv import replica as RP


@pytest.fixture
def two_histories() -> Iterator[tuple[shmkv.Cache, shmkv.Cache]]:
    """(new primary, demoted node): two regions of one format, both writable."""
    names = [new_region_name(), new_region_name()]
    primary = shmkv.Cache.create(names[0], arena_bytes=4 << 20)
    try:  # the same hash seed: a key lands in the same stripe on both
        demoted = RP.create_clone(names[1], RP.region_params(primary._region), 0o600, 1.0,
                                  time.time_ns)
    except BaseException:
        primary.close()
        shmkv.Cache.unlink(names[0])
        raise
    try:
        yield primary, demoted
    finally:
        for cache, name in ((primary, names[0]), (demoted, names[1])):
            cache.close()
            shmkv.Cache.unlink(name)


def test_the_same_key_version_and_length_with_other_bytes_takes_the_primarys_value(
        two_histories: tuple[shmkv.Cache, shmkv.Cache]) -> None:
    primary, demoted = two_histories
    primary.set("k", b"new's")
    demoted.set("k", b"old's")  # the first write of its stripe on both: the same version
    assert primary.get_with_version("k")[1] == demoted.get_with_version("k")[1]
    stripe = primary.get_with_version("k")[1] & 0xFF
    copy_stripe(primary, demoted, stripe, RP.stripe_counters(primary._region)[1][stripe])
    assert demoted.get("k") == b"new's"


def test_a_write_after_promotion_stores_a_newer_version_than_an_entry_copied_late(
        two_histories: tuple[shmkv.Cache, shmkv.Cache]) -> None:
    """A round records the primary's writes counter at its start; an entry the primary wrote
    after that and the round copied anyway must not be followed, once promoted, by a write
    of an older version (a cas holding a version would then match a later value)."""
    primary, replica = two_histories
    primary.set("k", b"1")
    stripe = primary.get_with_version("k")[1] & 0xFF
    counter_at_start = RP.stripe_counters(primary._region)[1][stripe]
    primary.set("k", b"2")  # after the round's start, before its read
    copied = primary.get_with_version("k")[1]
    copy_stripe(primary, replica, stripe, counter_at_start)
    assert replica.get_with_version("k") == (b"2", copied)
    replica.set("k", b"3")  # promoted: this region takes writes of its own
    assert replica.get_with_version("k")[1] >> 8 > copied >> 8
