"""The packed batch form (protocol.pack, protocol.unpack_bytes, get_many's reply, a client's keys
and its reading of that reply) made in C (shmkv/_core_src/packed.c) is byte for byte what the
Python code makes, and what C leaves to Python (a framing that is not sound, items that are not
bytes, keys too long) gets Python's errors."""

from __future__ import annotations

import random
import struct
from itertools import compress

import pytest

from shmkv import backend
from shmkv.broker import protocol
from shmkv.clients.commands import found_values, pack_keys
from shmkv.errors import KeyTooLarge, ProtocolError, RequestTooLarge
from shmkv.layout import MAX_KEY_BYTES

pytestmark = pytest.mark.skipif(backend.pack_c is None, reason="the compiled engine only")


def python_pack(items: list[bytes]) -> list[bytes]:
    return [struct.pack(f"<{len(items)}I", *map(len, items)), b"".join(items)]


def random_items(rng: random.Random) -> list[bytes]:
    return [rng.randbytes(rng.choice([0, 1, 7, 300, 70_000])) for _ in range(rng.randrange(40))]


@pytest.mark.parametrize("seed", range(20))
def test_pack_and_unpack_bytes_in_c_match_python(seed: int) -> None:
    items = random_items(random.Random(seed))
    frames = backend.pack_c(items)  # type: ignore[misc]
    assert frames == python_pack(items) == protocol.pack(items)
    assert backend.unpack_bytes_c(*frames, protocol.MAX_BATCH_KEYS) == items  # type: ignore[misc]
    assert protocol.unpack_bytes(*frames) == items
    assert protocol.unpack_bytes(memoryview(frames[0]), bytearray(frames[1])) == items


@pytest.mark.parametrize("seed", range(10))
def test_get_manys_reply_in_c_matches_python(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.choice([None, *random_items(rng)[:1], b""]) for _ in range(rng.randrange(50))]
    present = [v for v in values if v is not None]
    assert backend.pack_found_c(values) == (  # type: ignore[misc]
        [v is not None for v in values], python_pack(present))


def test_items_that_are_not_bytes_are_left_to_python() -> None:
    assert backend.pack_c([b"a", memoryview(b"b")]) is None  # type: ignore[misc]
    assert backend.pack_c((b"a", "b")) is None  # type: ignore[misc]
    assert protocol.pack([b"a", memoryview(b"bc")]) == python_pack([b"a", b"bc"])
    assert backend.pack_found_c([b"a", 1]) is None  # type: ignore[misc]


@pytest.mark.parametrize("lengths, data, error", [
    (b"\x01\x00\x00", b"x", ProtocolError), (b"\x02\x00\x00\x00", b"x", ProtocolError),
    (b"", b"extra", ProtocolError),
    (struct.pack(f"<{protocol.MAX_BATCH_KEYS + 1}I", *[0] * (protocol.MAX_BATCH_KEYS + 1)), b"",
     RequestTooLarge),
], ids=["torn", "short", "long", "too-many"])
def test_a_framing_c_refuses_gets_pythons_error(lengths: bytes, data: bytes,
                                                 error: type[Exception]) -> None:
    assert backend.unpack_bytes_c(lengths, data, protocol.MAX_BATCH_KEYS) is None  # type: ignore[misc]
    with pytest.raises(error):
        protocol.unpack_bytes(lengths, data)


def test_keys_past_the_key_limit_are_left_to_python_and_refused_there() -> None:
    pack_c = backend.pack_c
    assert pack_c is not None
    assert pack_c([b"k" * MAX_KEY_BYTES], MAX_KEY_BYTES) == python_pack([b"k" * MAX_KEY_BYTES])
    assert pack_c([b"a", b"k" * (MAX_KEY_BYTES + 1)], MAX_KEY_BYTES) is None
    with pytest.raises(KeyTooLarge):
        pack_keys([b"a", b"k" * (MAX_KEY_BYTES + 1)])
    assert pack_keys(["a", b"b"]) == python_pack([b"a", b"b"])


@pytest.mark.parametrize("seed", range(10))
def test_a_get_many_reply_read_in_c_is_the_dict_python_makes(seed: int) -> None:
    rng = random.Random(seed)
    keys: list = [rng.choice([b"k%d" % i, "s%d" % i, b"same"]) for i in range(rng.randrange(50))]
    found = [rng.random() < 0.5 for _ in keys]
    values = random_items(rng)[:sum(found)]
    values += [b"v"] * (sum(found) - len(values))
    frames = python_pack(values)
    expected = dict(zip(compress(keys, found), values))
    assert backend.found_values_c(keys, found, *frames) == expected  # type: ignore[misc]
    assert found_values(keys, protocol.Reply(1, found, frames)) == expected


@pytest.mark.parametrize("found, frames", [
    ([True, False], python_pack([b"a", b"b"])),  # a value more than found
    ([True, True], python_pack([b"a"])),  # a value less
    ([True], python_pack([b"a"])),  # not one per key
    ([True, False], [b"\x05\x00\x00\x00", b"a"]),  # lengths past the data
], ids=["more", "fewer", "short", "torn"])
def test_a_get_many_reply_that_does_not_hold_is_a_protocol_error(found: list,
                                                                  frames: list[bytes]) -> None:
    assert backend.found_values_c([b"x", b"y"], found, *frames) is None  # type: ignore[misc]
    with pytest.raises(ProtocolError):
        found_values([b"x", b"y"], protocol.Reply(1, found, frames))
