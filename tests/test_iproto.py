"""The IPROTO codec (``greenpool._iproto``) without a server: request bodies compared byte for byte with
tarantool-python's request builders, the greeting and the chap-sha1 scramble compared with its own, and the
reply reader fuzzed (any chunking, undecodable bodies, garbage) with hypothesis."""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any, Dict, List, Tuple

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tarantool import request as tr
from tarantool.error import DatabaseError
from tarantool.utils import greeting_decode

from greenpool import _iproto as ip


class FakeConnection:
    """What tarantool-python's request builders read from a connection."""

    encoding = "utf-8"
    version_id = (2 << 16) | (11 << 8) | 1
    schema = None
    schema_version = 0

    def __init__(self) -> None:
        self.sync = 0

    def _packer_factory(self) -> Any:
        return tr.packer_factory(self)

    def generate_sync(self) -> int:
        self.sync += 1
        return self.sync


def pack(obj: Any) -> bytes:
    return bytes(tr.packer_factory(FakeConnection()).pack(obj))


VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=12,
)
TUPLES = st.lists(VALUES, max_size=5)
IDS = st.integers(min_value=0, max_value=2**32 - 1)


# ---------------------------------------------------------------------- requests


@settings(max_examples=100, deadline=None)
@given(sid=IDS, iid=IDS, key=TUPLES, offset=IDS, limit=IDS, iterator=st.integers(0, 11), values=TUPLES)
def test_request_bodies_are_the_bytes_tarantool_python_packs(
    sid: int, iid: int, key: List[Any], offset: int, limit: int, iterator: int, values: List[Any]
) -> None:
    conn = FakeConnection()
    ops = [["=", 1, v] for v in values]
    pairs = [
        (
            ip.select_body(sid, iid, offset, limit, iterator, key),
            tr.RequestSelect(conn, sid, iid, key, offset, limit, iterator),
        ),
        (ip.store_body(sid, values), tr.RequestInsert(conn, sid, values)),
        (ip.store_body(sid, values), tr.RequestReplace(conn, sid, values)),
        (ip.delete_body(sid, iid, key), tr.RequestDelete(conn, sid, iid, key)),
        (ip.update_body(sid, iid, key, ops), tr.RequestUpdate(conn, sid, iid, key, ops)),
        (ip.upsert_body(sid, iid, values, ops), tr.RequestUpsert(conn, sid, iid, values, ops)),
        (ip.call_body("f", values), tr.RequestCall(conn, "f", values, False)),
        (ip.eval_body("return ...", values), tr.RequestEval(conn, "return ...", values)),
        (ip.execute_body("SELECT ?", values), tr.RequestExecute(conn, "SELECT ?", values)),
    ]
    for body, theirs in pairs:
        assert pack(body) == theirs._body


@given(
    code=st.sampled_from([ip.SELECT, ip.INSERT, ip.CALL, ip.PING]),
    sync=st.integers(0, 2**64 - 1),
    version=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    body=st.binary(max_size=40),
)
def test_a_header_decodes_to_what_tarantool_python_sends(code: int, sync: int, version: Any, body: bytes) -> None:
    # The header is packed by struct with fixed-width integers, tarantool-python's by msgpack with the shortest:
    # different bytes, the same MessagePack values.
    packed = ip.pack_header(code, sync, len(body), version) + body
    unpacker = msgpack.Unpacker(strict_map_key=False)
    unpacker.feed(packed)
    length = unpacker.unpack()
    start = unpacker.tell()
    header = unpacker.unpack()
    expected: Dict[int, int] = {ip.REQUEST_TYPE: code, ip.SYNC: sync}
    if version is not None:
        expected[ip.SCHEMA_VERSION] = version
    assert header == expected and length == len(packed) - start


def greeting(version: str = "2.11.1", salt: bytes = bytes(range(32)), protocol: str = "Binary") -> bytes:
    line1 = f"Tarantool {version} ({protocol}) {uuid.UUID(int=7)}"[:63].ljust(63).encode() + b"\n"
    line2 = base64.b64encode(salt).ljust(63) + b"\n"
    return line1 + line2


def test_the_greeting_and_the_scramble_agree_with_tarantool_python() -> None:
    raw = greeting()
    version_id, salt = ip.parse_greeting(raw, "h:1")
    theirs = greeting_decode(raw)
    assert version_id == theirs.version_id and salt == theirs.salt
    conn = FakeConnection()
    auth = tr.RequestAuthenticate(conn, theirs.salt, "tester", "s3cret")
    assert pack(ip.auth_body("tester", salt, "s3cret")) == auth._body


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (greeting(protocol="Lua console"), "speaks Lua console"),
        (b"HTTP/1.1 400 Bad Request\r\n".ljust(128), "did not send a Tarantool greeting"),
        (b"\xff" * 128, "did not send a Tarantool greeting"),
        (greeting(version="two.x"), "did not send a Tarantool greeting"),
    ],
)
def test_a_bad_greeting_is_a_value_error_naming_the_address(raw: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        ip.parse_greeting(raw, "db.example:3301")
    assert "db.example:3301" in str(info.value)


# ---------------------------------------------------------------------- the reply reader


def frame(header: Dict[int, Any], body: Any = None, raw_body: bytes = b"") -> bytes:
    payload = msgpack.packb(header) + (msgpack.packb(body) if body is not None else raw_body)
    return b"\xce" + struct.pack(">I", len(payload)) + payload


# A MessagePack str of two bytes that are not UTF-8: tarantool-python fails to decode it, and so does the reader.
NOT_UTF8 = b"\x81\x30\x91\xa2\xff\xfe"

REPLY = st.tuples(
    st.integers(0, 2**64 - 1),  # sync
    st.sampled_from(["ok", "error", "push", "undecodable", "no body"]),
    st.lists(VALUES, max_size=3),
)


def encode(replies: List[Tuple[int, str, List[Any]]]) -> Tuple[bytes, List[Tuple[int, str, Any]]]:
    """The stream of ``replies`` and what the reader must return for it."""
    stream, expected = b"", []
    for sync, kind, data in replies:
        if kind == "ok":
            stream += frame({ip.REQUEST_TYPE: 0, ip.SYNC: sync, ip.SCHEMA_VERSION: 80}, {ip.DATA: data})
            expected.append((sync, "ok", {ip.DATA: data}))
        elif kind == "no body":
            stream += frame({ip.REQUEST_TYPE: 0, ip.SYNC: sync})
            expected.append((sync, "ok", {}))
        elif kind == "error":
            stream += frame({ip.REQUEST_TYPE: 0x8000 | 3, ip.SYNC: sync}, {ip.ERROR_24: "no such space"})
            expected.append((sync, "error", 3))
        elif kind == "push":
            stream += frame({ip.REQUEST_TYPE: ip.CHUNK, ip.SYNC: sync}, {ip.DATA: data})
        else:
            stream += frame({ip.REQUEST_TYPE: 0, ip.SYNC: sync}, raw_body=NOT_UTF8)
            expected.append((sync, "undecodable", None))
    return stream, expected


@settings(max_examples=300, deadline=None)
@given(st.lists(REPLY, max_size=12), st.lists(st.integers(1, 64), max_size=20))
def test_the_reader_returns_each_reply_however_the_stream_is_cut(
    replies: List[Tuple[int, str, List[Any]]], cuts: List[int]
) -> None:
    stream, expected = encode(replies)
    reader = ip.ReplyReader()
    got: List[Tuple[int, int, Any]] = []
    position = 0
    for size in cuts:
        got.extend(reader.feed(memoryview(bytearray(stream[position : position + size]))))  # a reused buffer
        position += size
    got.extend(reader.feed(stream[position:]))
    assert reader.broken is None and len(got) == len(expected)
    for (sync, code, value), (want_sync, kind, want) in zip(got, expected):
        assert sync == want_sync
        if kind == "ok":
            assert code == 0 and value == want
        elif kind == "error":
            assert isinstance(value, DatabaseError) and value.code == want and "no such space" in value.message
        else:
            assert isinstance(value, UnicodeDecodeError)  # this reply alone; the next ones decode
    if any(kind == "ok" for _, kind, _ in replies):
        assert reader.schema_version == 80


def test_the_reader_takes_replies_a_batch_at_a_time() -> None:
    stream, _ = encode([(n, "ok", [n]) for n in range(40)])
    reader = ip.ReplyReader()
    reader.append(stream[:-3])
    sizes = []
    while True:
        batch = reader.take(16)
        sizes.append(len(batch))
        if len(batch) < 16:
            break
    assert sizes == [16, 16, 7]
    assert [sync for sync, _, _ in reader.feed(stream[-3:])] == [39]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=8))
def test_garbage_never_raises_and_either_decodes_or_breaks_the_stream(garbage: bytes, cuts: List[int]) -> None:
    reader = ip.ReplyReader()
    position = 0
    for size in [*cuts, len(garbage)]:
        for sync, code, value in reader.feed(garbage[position : position + size]):
            assert isinstance(sync, int) and isinstance(code, int)
            assert isinstance(value, (dict, Exception)) or value is not None
        position += size


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (b"\xa3abc", "length prefix is 'abc'"),
        (b"\x01\x82", "a reply header"),
        (b"\x02\xc1\xc1", "header does not decode"),
        (b"\x01\x05", "a reply header is 5"),
    ],
)
def test_a_stream_that_cannot_be_followed_says_why(stream: bytes, words: str) -> None:
    before, _ = encode([(1, "ok", [1])])
    reader = ip.ReplyReader()
    replies = reader.feed(before + stream + before)
    assert [sync for sync, _, _ in replies] == [1] and reader.broken is not None and words in reader.broken
