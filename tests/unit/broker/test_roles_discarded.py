"""What a demoted node counts as discarded (broker/roles.py's `discarded`): its writes and
deletes made after its new primary's last copy of their stripe, and nothing the new primary
changed since it took over. Versions are the stripe's writes counter << 8 | stripe."""

from __future__ import annotations

from shmkv.broker.roles import discarded


def v(stored: int, stripe: int) -> int:
    return stored << 8 | stripe


TAKEOVER = [10, 20]  # the new primary's writes counter of stripes 0 and 1 when it took over


def test_a_write_after_the_new_primarys_copy_that_it_undid_is_a_discarded_set() -> None:
    before = {("", b"gone"): (v(21, 1), b"x"), ("", b"same version"): (v(11, 0), b"mine")}
    after = {("", b"same version"): (v(11, 0), b"theirs")}  # two histories, one version
    assert discarded(before, after, TAKEOVER) == (2, 0)


def test_what_the_new_primary_had_or_changed_since_it_took_over_is_not_discarded() -> None:
    before = {("", b"had, changed since"): (v(9, 0), b"x"),
              ("", b"had, deleted since"): (v(20, 1), b"x"),
              ("c", b"copied as it was written"): (v(21, 1), b"x")}
    after = {("", b"had, changed since"): (v(12, 0), b"y"),
             ("c", b"copied as it was written"): (v(21, 1), b"x"),
             ("", b"written since"): (v(25, 1), b"y")}
    assert discarded(before, after, TAKEOVER) == (0, 0)


def test_a_key_the_new_primary_had_at_takeover_that_this_node_lacked_is_a_discarded_delete(
) -> None:
    after = {("", b"deleted here"): (v(10, 0), b"x"), ("", b"new there"): (v(11, 0), b"y")}
    assert discarded({}, after, TAKEOVER) == (0, 1)


def test_versions_compare_across_the_stored_32_bits_wrapping() -> None:
    takeover = [2**32 + 5]  # the counter is 64 bits; an entry stores its low 32
    before = {("", b"before the copy"): (v(3, 0), b"x"), ("", b"after it"): (v(7, 0), b"x")}
    assert discarded(before, {}, takeover) == (1, 0)
