"""broker/resp.py: the request parser and the reply encoder, without sockets."""

from __future__ import annotations

import random

import pytest

from shmkv.broker.resp import (
    NIL_ARRAY, OK, Encoder, Error, Push, RequestParser, Simple, encode_request, split_inline,
)

PIPELINE = (encode_request("SET", "k", b"v\r\n\x00") + encode_request("GET", "k")
            + b"PING\r\n" + encode_request("MGET", "a", "b", "") + b'SET "a b" \'c\'\n')
EXPECTED = [[b"SET", b"k", b"v\r\n\x00"], [b"GET", b"k"], [b"PING"], [b"MGET", b"a", b"b", b""],
            [b"SET", b"a b", b"c"]]


def parse(data: bytes, parser: RequestParser | None = None) -> list[list[bytes]]:
    parser = parser or RequestParser()
    parser.feed(data)
    return parser.requests()


def test_a_pipeline_of_requests_parses_in_order() -> None:
    assert parse(PIPELINE) == EXPECTED


@pytest.mark.parametrize("seed", range(5))
def test_requests_split_anywhere_parse_the_same(seed: int) -> None:
    rng = random.Random(seed)
    parser, got = RequestParser(), []
    pos = 0
    while pos < len(PIPELINE):
        step = rng.randint(1, 7)
        got += parse(PIPELINE[pos:pos + step], parser)
        pos += step
    assert got == EXPECTED and parser.error is None and parser.pending_bytes == 0


def test_every_truncation_of_a_request_waits_for_the_rest() -> None:
    whole = encode_request("SET", "key", "value")
    for cut in range(len(whole)):
        parser = RequestParser()
        assert parse(whole[:cut], parser) == [] and parser.error is None
        assert parse(whole[cut:], parser) == [[b"SET", b"key", b"value"]]


def test_empty_and_null_multibulks_are_skipped_as_redis_does() -> None:
    assert parse(b"*0\r\n*-1\r\n\r\n" + encode_request("PING")) == [[b"PING"]]


@pytest.mark.parametrize("data, says", [
    (b"*1\r\n:5\r\n", "expected '$', got ':'"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*1\r\n$-5\r\n", "invalid bulk length"),
    (b"*1\r\n$ 3\r\nabc\r\n", "invalid bulk length"),
    (b"*%d\r\n" % ((1 << 20) + 1), "invalid multibulk length"),
    (b"*1\r\n$%d\r\n" % ((512 << 20) + 1), "invalid bulk length"),
    (b"*1\r\n$" + b"1" * (70 << 10), "too big bulk count string"),
    (b"GET" + b"x" * (70 << 10), "too big inline request"),
    (b'GET "abc\r\n', "unbalanced quotes"),
])
def test_malformed_or_oversized_requests_break_the_stream_with_redis_wording(
        data: bytes, says: str) -> None:
    parser = RequestParser()
    before = encode_request("PING")
    assert parse(before + data + encode_request("PING"), parser) == [[b"PING"]]
    assert parser.error is not None and says in str(parser.error)
    assert str(parser.error).startswith("Protocol error: ")
    assert parse(encode_request("PING"), parser) == []  # nothing after the break is read


def test_a_large_argument_is_not_parsed_again_for_every_read() -> None:
    parser = RequestParser()
    header = b"*2\r\n$3\r\nSET\r\n$1000000\r\n"
    parser.feed(header)
    assert parser.requests() == []
    for _ in range(999):
        parser.feed(b"x" * 1000)
        assert parser.requests() == []
    parser.feed(b"x" * 1000 + b"\r\n")
    assert parser.requests() == [[b"SET", b"x" * 1_000_000]]


@pytest.mark.parametrize("line, words", [
    (b"set a b", [b"set", b"a", b"b"]),
    (b'  set "a\\x41\\n" \'it\\\'s\'  ', [b"set", b"aA\n", b"it's"]),
    (b'echo ""', [b"echo", b""]),
    (b"", []),
])
def test_inline_commands_split_as_redis_cli_quotes_them(line: bytes, words: list[bytes]) -> None:
    assert split_inline(line) == words


@pytest.mark.parametrize("value, resp2, resp3", [
    (OK, b"+OK\r\n", b"+OK\r\n"),
    (Simple("PONG"), b"+PONG\r\n", b"+PONG\r\n"),
    (Error("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", b"-ERR bad  thing\r\n"),
    (42, b":42\r\n", b":42\r\n"),
    (b"a\r\nb", b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n"),
    ("é", b"$2\r\n\xc3\xa9\r\n", b"$2\r\n\xc3\xa9\r\n"),
    (None, b"$-1\r\n", b"_\r\n"),
    (NIL_ARRAY, b"*-1\r\n", b"_\r\n"),
    ([b"a", None, 1], b"*3\r\n$1\r\na\r\n$-1\r\n:1\r\n", b"*3\r\n$1\r\na\r\n_\r\n:1\r\n"),
    ({"k": 1}, b"*2\r\n$1\r\nk\r\n:1\r\n", b"%1\r\n$1\r\nk\r\n:1\r\n"),
    (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (True, b":1\r\n", b"#t\r\n"),
    (Push([b"message", b"c", b"m"]), b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
     b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"),
])
def test_replies_encode_as_resp2_and_resp3(value: object, resp2: bytes, resp3: bytes) -> None:
    assert Encoder(2).encode(value) == resp2
    assert Encoder(3).encode(value) == resp3


def test_a_value_with_no_resp_form_is_refused() -> None:
    with pytest.raises(TypeError, match="no RESP form"):
        Encoder(2).encode(object())
