"""The IPROTO codec of ``greenpool.TarantoolMux``: request packing, the greeting, chap-sha1 authentication and a
reply reader that frames the stream before it decodes it.

Nothing here touches a socket or a greenlet, so all of it is tested (and fuzzed) without a server. A request is
``<length> <header map> <body map>``; the header carries the request type, the ``sync`` that the reply repeats,
and, for a request built from names resolved through the schema, the schema version they were resolved at.
The bodies are the maps tarantool-python's request builders (``tarantool.request``) pack, key for key, so the
bytes are the same. :class:`ReplyReader` cuts the stream into replies by their length prefix first, then decodes
each one's header and body: a body that cannot be decoded fails only its own request.

Depends on msgpack and tarantool-python (its error and MessagePack extension types).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgpack
from msgpack import OutOfData

try:
    from tarantool.error import DatabaseError
    from tarantool.msgpack_ext.unpacker import ext_hook as _ext_hook
    from tarantool.types import decode_box_error
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("greenpool.TarantoolMux needs tarantool-python: pip install 'greenpool[tarantool]'") from exc

__all__ = [
    "GREETING_SIZE",
    "ITERATORS",
    "ReplyReader",
    "auth_body",
    "new_unpacker",
    "pack_header",
    "parse_greeting",
    "scramble",
]

# Header and body keys.
REQUEST_TYPE, SYNC, SCHEMA_VERSION = 0x00, 0x01, 0x05
SPACE_ID, INDEX_ID, LIMIT, OFFSET, ITERATOR = 0x10, 0x11, 0x12, 0x13, 0x14
KEY, TUPLE, FUNCTION_NAME, USER_NAME, EXPR, OPS = 0x20, 0x21, 0x22, 0x23, 0x27, 0x28
DATA, ERROR_24, SQL_TEXT, SQL_BIND, ERROR = 0x30, 0x31, 0x40, 0x41, 0x52

# Request types.
SELECT, INSERT, REPLACE, UPDATE, DELETE, AUTH = 1, 2, 3, 4, 5, 7
EVAL, UPSERT, CALL, EXECUTE, PING = 8, 9, 10, 11, 64
# Reply types besides OK (0): an out-of-band push, and the error bit (the rest is the error code).
CHUNK = 0x80
TYPE_ERROR = 0x8000
ER_WRONG_SCHEMA_VERSION = 109

GREETING_SIZE = 128

#: Iterator names accepted by ``TarantoolMux.select`` besides the numbers tarantool-python takes.
ITERATORS: Dict[str, int] = {
    "EQ": 0,
    "REQ": 1,
    "ALL": 2,
    "LT": 3,
    "LE": 4,
    "GE": 5,
    "GT": 6,
    "BITS_ALL_SET": 7,
    "BITS_ANY_SET": 8,
    "BITS_ALL_NOT_SET": 9,
    "OVERLAPS": 10,
    "NEIGHBOR": 11,
}

# The header is packed by hand, with the length as a uint32 and the sync (and schema version) as uint64: valid
# MessagePack for any value, one struct call.
HEADER = struct.Struct(">BIBBBBBQ")  # 0xce len | 0x82 0x00 type 0x01 0xcf sync
HEADER_SV = struct.Struct(">BIBBBBBQBBQ")  # ... | 0x83 ... 0x05 0xcf schema_version
_HEADER_LEN = HEADER.size - 5
HEADER_SV_LEN = HEADER_SV.size - 5


_FAILED: Any = object()  # a body that did not decode


# ---------------------------------------------------------------------- requests


def pack_header(code: int, sync: int, body_length: int, schema_version: Optional[int] = None) -> bytes:
    """The length prefix and header of a request of type ``code`` whose packed body is ``body_length`` bytes."""
    if schema_version is None:
        return HEADER.pack(0xCE, _HEADER_LEN + body_length, 0x82, REQUEST_TYPE, code, SYNC, 0xCF, sync)
    return HEADER_SV.pack(
        0xCE, HEADER_SV_LEN + body_length, 0x83, REQUEST_TYPE, code, SYNC, 0xCF, sync, SCHEMA_VERSION, 0xCF,
        schema_version,
    )  # fmt: skip


def select_body(sid: int, iid: int, offset: int, limit: int, iterator: int, key: Any) -> Dict[int, Any]:
    return {SPACE_ID: sid, INDEX_ID: iid, OFFSET: offset, LIMIT: limit, ITERATOR: iterator, KEY: key}


def store_body(sid: int, values: Any) -> Dict[int, Any]:
    """The body of an INSERT or a REPLACE."""
    return {SPACE_ID: sid, TUPLE: values}


def delete_body(sid: int, iid: int, key: Any) -> Dict[int, Any]:
    return {SPACE_ID: sid, INDEX_ID: iid, KEY: key}


def update_body(sid: int, iid: int, key: Any, ops: Any) -> Dict[int, Any]:
    return {SPACE_ID: sid, INDEX_ID: iid, KEY: key, TUPLE: ops}


def upsert_body(sid: int, iid: int, tuple_value: Any, ops: Any) -> Dict[int, Any]:
    return {SPACE_ID: sid, INDEX_ID: iid, TUPLE: tuple_value, OPS: ops}


def call_body(function_name: str, arguments: Any) -> Dict[int, Any]:
    return {FUNCTION_NAME: function_name, TUPLE: arguments}


def eval_body(expr: str, arguments: Any) -> Dict[int, Any]:
    return {EXPR: expr, TUPLE: arguments}


def execute_body(query: str, bind: Any) -> Dict[int, Any]:
    return {SQL_TEXT: query, SQL_BIND: bind}


# ---------------------------------------------------------------------- greeting and authentication


def parse_greeting(greeting: bytes, address: str) -> Tuple[int, bytes]:
    """Return ``(version_id, salt)`` from the 128-byte greeting (``Tarantool 2.11.1 (Binary) <uuid>``, then the
    base64 salt), or raise ``ValueError`` saying what is wrong (naming ``address``)."""
    try:
        product, version, rest = greeting[:64].decode().strip().split(" ", 2)
        if product != "Tarantool" or not rest.startswith("("):
            raise ValueError(product)
        protocol = rest[1 : rest.index(")")]
        major, minor, patch = (int(part) for part in version.split("-")[0].split(".")[:3])
        salt = base64.b64decode(greeting[64:108].strip())[:20]
    except (ValueError, UnicodeDecodeError, TypeError):
        raise ValueError(f"{address} did not send a Tarantool greeting") from None
    if protocol != "Binary":
        raise ValueError(f"{address} speaks {protocol}, not the binary protocol")
    return (major << 16) | (minor << 8) | patch, salt


def scramble(salt: bytes, password: str) -> bytes:
    """chap-sha1: ``sha1(password) xor sha1(salt + sha1(sha1(password)))``."""
    hash1 = hashlib.sha1(password.encode()).digest()
    hash2 = hashlib.sha1(hash1).digest()
    hash3 = hashlib.sha1(salt[:20] + hash2).digest()
    return bytes(a ^ b for a, b in zip(hash1, hash3))


def auth_body(user: str, salt: bytes, password: str) -> Dict[int, Any]:
    """The body of a chap-sha1 AUTH request (sent with ``schema_version=0``, as tarantool-python does)."""
    return {USER_NAME: user, TUPLE: ("chap-sha1", scramble(salt, password))}


def auth_error(code: int, body: Any) -> Tuple[int, str]:
    """The error code and message of a refused authentication (its reply's type and body)."""
    message = body.get(ERROR_24, "") if isinstance(body, dict) else ""
    return code & (TYPE_ERROR - 1), str(message)


# ---------------------------------------------------------------------- replies


def new_unpacker() -> Any:
    """An unpacker of replies: strings as ``str``, arrays as lists, Tarantool's extension types decoded."""
    return msgpack.Unpacker(
        use_list=True, raw=False, strict_map_key=False, ext_hook=_unpack_ext, max_buffer_size=2**31 - 1
    )


def _unpack_ext(code: int, data: bytes) -> Any:
    return _ext_hook(code, data, msgpack.Unpacker(use_list=True, raw=False, strict_map_key=False))


def error_reply(code: int, body: Any) -> DatabaseError:
    """The ``DatabaseError`` an error reply (type ``code``, with the error bit) stands for."""
    message = body.get(ERROR_24, "") if body.__class__ is dict else ""
    extra = body.get(ERROR) if body.__class__ is dict else None
    return DatabaseError(
        code & (TYPE_ERROR - 1), message, extra_info=decode_box_error(extra) if extra is not None else None
    )


#: One decoded reply: its sync, its type (0: OK, else the error bit and code) and its body as a dict, or the
#: exception its request raises (the server's ``DatabaseError``, or why its body could not be decoded).
Reply = Tuple[int, int, Any]


class ReplyReader:
    """Cuts a reply stream into replies and decodes them, a batch at a time.

    :meth:`append` a chunk, then :meth:`take` replies until it returns fewer than asked for (only then may the
    chunk's memory be reused, and the next chunk be appended); :meth:`feed` does both. A reply is decoded only
    once all of it has arrived, as its length prefix says; so a body that does not decode becomes its own
    request's error (what msgpack raised, such as ``UnicodeDecodeError``, as tarantool-python raises it) and the
    reader goes on with the next reply, which starts where the length prefix said. Out-of-band pushes
    (``box.session.push``) are skipped. ``schema_version`` is the highest the replies carried.

    After a length prefix or a reply header that does not decode, :meth:`take` returns what it decoded before
    and sets ``broken`` to the reason; the stream cannot be followed any more (no reply can be matched).
    """

    __slots__ = ("_base", "_chunk", "_end", "_fed", "_unpacker", "broken", "schema_version")

    def __init__(self) -> None:
        self._unpacker = new_unpacker()
        self._fed = 0  # bytes fed to the unpacker (its stream positions run from 0 to this)
        self._base = 0  # the unpacker's position of the first byte of the last chunk
        self._chunk: Any = b""  # the last chunk, until take() has returned short
        self._end = 0  # where the reply whose length prefix has been read ends (0: none)
        self.schema_version = 0
        self.broken: Optional[str] = None

    def feed(self, chunk: Any) -> List[Reply]:
        """Append ``chunk`` and return every reply it completes, in order (:data:`Reply` tuples)."""
        self.append(chunk)
        replies: List[Reply] = []
        while True:
            batch = self.take(1024)
            replies.extend(batch)
            if len(batch) < 1024:
                return replies

    def append(self, chunk: Any) -> None:
        """Add ``chunk`` (bytes or a memoryview, left unchanged until :meth:`take` returns short) to the stream."""
        self._base = self._fed
        self._fed += len(chunk)
        self._chunk = chunk
        self._unpacker.feed(chunk)

    def take(self, limit: int) -> List[Reply]:
        """Decode up to ``limit`` complete replies; fewer: the reader keeps an incomplete one, or is ``broken``."""
        replies: List[Reply] = []
        if self.broken is not None:
            return replies
        append = replies.append
        unpack, tell, fed = self._unpacker.unpack, self._unpacker.tell, self._fed
        end = self._end  # where the reply being read ends, once its length prefix has been read (else 0)
        while limit:
            if not end:
                try:
                    length = unpack()
                except OutOfData:
                    break
                except Exception as exc:
                    self.broken = f"a reply's length prefix does not decode ({exc!r})"
                    break
                if length.__class__ is not int or length < 0:
                    self.broken = f"a reply's length prefix is {length!r}"
                    break
                end = tell() + length
            if end > fed:
                break  # not all of it has arrived
            try:
                header = unpack()
            except Exception as exc:
                self.broken = f"a reply header does not decode ({exc!r})"
                break
            at = tell()
            if header.__class__ is not dict or at > end:
                self.broken = f"a reply header is {header!r} (or runs past the reply's length)"
                break
            get = header.get
            version = get(SCHEMA_VERSION)
            if version is not None and version.__class__ is int and version > self.schema_version:
                self.schema_version = version
            body: Any = {}
            if at < end:
                try:
                    body = unpack()
                except Exception as exc:  # this reply alone fails, with what tarantool-python raises too
                    append((get(SYNC, -1), get(REQUEST_TYPE, 0), exc))
                    limit -= 1
                    body = _FAILED
                if body is _FAILED or tell() != end:  # a failed unpacker's state is unknown: start afresh
                    if not self._restart(end):
                        break
                    unpack, tell, fed = self._unpacker.unpack, self._unpacker.tell, self._fed
                    if body is _FAILED:
                        end = 0
                        continue
            end = 0
            code = get(REQUEST_TYPE, 0)
            if code != CHUNK:  # an out-of-band push is no reply
                append((get(SYNC, -1), code, error_reply(code, body) if code else body))
                limit -= 1
        self._end = end
        if limit:
            self._chunk = b""
        return replies

    def _restart(self, end: int) -> bool:
        """Go on with a new unpacker from ``end`` (the state of one that failed is unknown). Everything after
        ``end`` is in the last chunk: replies are decoded as soon as they are complete. False: the reader is
        broken."""
        offset = end - self._base
        if offset < 0:  # pragma: no cover - take() was not called until it returned short before append()
            self.broken = "the reader lost its place"
            return False
        rest = self._chunk[offset:]
        self._unpacker = new_unpacker()
        self._unpacker.feed(rest)
        self._base -= end
        self._fed = len(rest)
        return True


def check_values(name: str, value: Any) -> None:
    if value.__class__ is not list and not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list or a tuple, got {value!r} ({type(value).__name__})")


def check_ops(op_list: Any) -> None:
    check_values("op_list", op_list)
    for op in op_list:
        if not isinstance(op, (list, tuple)) or len(op) < 2:
            raise TypeError(f"each operation in op_list must be a list or tuple like ('=', 2, value), got {op!r}")


def check_space(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"space_name must be a str (space name) or an int (space id), got {value!r}")


def check_index(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"index must be a str (index name) or an int (index id), got {value!r}")


def iterator_number(iterator: Any, key: Any) -> int:
    """``select``'s ``iterator`` as a number: ``None`` is ``EQ`` (``ALL`` for an empty key), a name of
    :data:`ITERATORS`, or a number."""
    if iterator is None:
        return 2 if key is None or (isinstance(key, (list, tuple)) and len(key) == 0) else 0
    if isinstance(iterator, str):
        if iterator.upper() not in ITERATORS:
            raise ValueError(f"iterator must be one of {', '.join(ITERATORS)} or a number, got {iterator!r}")
        return ITERATORS[iterator.upper()]
    if isinstance(iterator, bool) or not isinstance(iterator, int):
        raise TypeError(f"iterator must be an int, got {iterator!r} ({type(iterator).__name__})")
    if iterator < 0:
        raise ValueError(f"iterator must be >= 0, got {iterator!r}")
    return iterator


def arguments(args: Sequence[Any]) -> Any:
    """``call``/``eval`` arguments as tarantool-python takes them: one list or tuple is the argument list."""
    return args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
