"""broker/resp.py: the request parser and the reply encoder, without sockets."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shmkv.broker import resp
from shmkv.broker.resp import (
    NIL_ARRAY, OK, Encoder, Error, Push, RequestParser, Simple, encode_request, split_inline,
)

PIPELINE = (encode_request("SET", "k", b"v\r\n\x00") + encode_request("GET", "k")
            + b"PING\r\n" + encode_request("MGET", "a", "b", "") + b'SET "a b" \'c\'\n')
EXPECTED = [[b"SET", b"k", b"v\r\n\x00"], [b"GET", b"k"], [b"PING"], [b"MGET", b"a", b"b", b""],
            [b"SET", b"a b", b"c"]]


@pytest.fixture(params=["hiredis", "python"])
def parse(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """parse(data, parser=None): RequestParser.parse, with hiredis's fast path (when it is
    installed) or the Python parser alone: both must give the same requests and errors."""
    if request.param == "hiredis":
        if resp.hiredis is None:
            pytest.skip("hiredis is not installed")
    else:
        monkeypatch.setattr(resp, "hiredis", None)

    def run(data: bytes, parser: RequestParser | None = None) -> list[list[bytes]]:
        return (parser or RequestParser()).parse(data)
    return run


def test_a_pipeline_of_requests_parses_in_order(parse: Any) -> None:
    assert parse(PIPELINE) == EXPECTED


@pytest.mark.parametrize("seed", range(5))
def test_requests_split_anywhere_parse_the_same(parse: Any, seed: int) -> None:
    rng = random.Random(seed)
    parser, got = RequestParser(), []
    pos = 0
    while pos < len(PIPELINE):
        step = rng.randint(1, 7)
        got += parse(PIPELINE[pos:pos + step], parser)
        pos += step
    assert got == EXPECTED and parser.error is None and parser.pending_bytes == 0


def test_every_truncation_of_a_request_waits_for_the_rest(parse: Any) -> None:
    whole = encode_request("SET", "key", "value")
    for cut in range(len(whole)):
        parser = RequestParser()
        assert parse(whole[:cut], parser) == [] and parser.error is None
        assert parse(whole[cut:], parser) == [[b"SET", b"key", b"value"]]


def test_empty_and_null_multibulks_are_skipped_as_redis_does(parse: Any) -> None:
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
        parse: Any, data: bytes, says: str) -> None:
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


@pytest.mark.parametrize("data", [
    b"*2\r\n$03\r\nGET\r\n$1\r\nk\r\n",  # a length with a leading zero
    b"*1\r\n+GET\r\n",  # a simple string where a bulk belongs
    b"*2\r\n$3\r\nGET\r\n$-1\r\n",  # a nil argument
    b"*1\r\n*1\r\n$1\r\nx\r\n",  # a nested array
    b"*2000000000\r\n",
])
def test_what_hiredis_would_read_differently_gets_the_python_parsers_answer(
        data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    if resp.hiredis is None:
        pytest.skip("hiredis is not installed")
    fast = RequestParser()
    got = fast.parse(data + encode_request("PING"))
    monkeypatch.setattr(resp, "hiredis", None)
    slow = RequestParser()
    assert got == slow.parse(data + encode_request("PING"))
    assert str(fast.error) == str(slow.error)


def test_a_huge_array_count_never_reaches_hiredis(monkeypatch: pytest.MonkeyPatch) -> None:
    # hiredis would allocate, then free element by element, an array of that many elements
    fed: list[bytes] = []

    class Reader:
        def feed(self, data: bytes) -> None:
            fed.append(data)

        def gets(self) -> object:
            return False

    monkeypatch.setattr(resp, "hiredis", type("FakeHiredis", (), {"Reader": Reader}))
    parser = RequestParser()
    assert parser.parse(b"*2000000000\r\n") == []
    assert fed == [] and "invalid multibulk length" in str(parser.error)
    RequestParser().parse(encode_request("PING"))
    assert fed == [encode_request("PING")]  # what is not huge does reach it
