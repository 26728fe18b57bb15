"""The packed batch form (protocol.pack, protocol.unpack_bytes, get_many's reply) made in C
(shmkv/_core_src/packed.c) is byte for byte what the Python code makes, and what C leaves
to Python (a framing that is not sound, items that are not bytes) gets Python's errors."""

from __future__ import annotations

import random
import struct

import pytest

from shmkv import backend
from shmkv.broker import protocol
from shmkv.errors import ProtocolError, RequestTooLarge

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
