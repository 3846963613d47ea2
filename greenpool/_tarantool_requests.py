"""The tarantool-python request methods of ``greenpool.TarantoolMux`` (``ping``, ``select``, ``insert``,
``replace``, ``update``, ``upsert``, ``delete``, ``call``, ``eval``, ``execute``): argument checks, space and
index names resolved through the cached schema, request bodies built by ``greenpool._iproto``, replies returned
as tarantool-python's ``Response`` objects. :class:`RequestMethods` is a mixin: the class that uses it sends a
request with ``_request`` (lifecycle and scheduling live there).

Depends on tarantool-python (its response, schema, error and key-wrapping code) and ``greenpool._iproto``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from greenpool import _iproto as ip
from greenpool._validate import check_int

try:
    from tarantool.error import DatabaseError, NetworkError
    from tarantool.response import Response, ResponseExecute
    from tarantool.utils import wrap_key
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("greenpool.TarantoolMux needs tarantool-python: pip install 'greenpool[tarantool]'") from exc

__all__ = ["MuxResponse", "MuxResponseExecute", "RequestMethods"]

_SPACE_ID, _TUPLE = ip.SPACE_ID, ip.TUPLE


class MuxResponse(Response):  # type: ignore[misc]
    """A ``tarantool.response.Response`` built from an already parsed reply (no second unpacking)."""

    def __init__(self, conn: Any, sync: int, body: Dict[int, Any], data: Any, schema_version: int) -> None:
        self.conn = conn
        self._sync = sync
        self._code = 0
        self._return_code = 0
        self._body = body
        self._data = data
        self._schema_version = schema_version


class MuxResponseExecute(ResponseExecute):  # type: ignore[misc]
    """A ``tarantool.response.ResponseExecute`` built from an already parsed reply."""

    __init__ = MuxResponse.__init__


class RequestMethods:
    """tarantool-python's request methods over ``_request(code, body, schema_version, cls)``, which sends one
    request and returns its reply as a ``cls`` (the body when ``cls`` is None) or raises."""

    _schema: Any
    _space_ids: Dict[Any, int]
    _index_ids: Dict[Tuple[int, Any], int]
    _pack: Callable[[Any], bytes]
    _shared: Any  # schema_version, on_schema()

    def _request(self, code: int, body: bytes, schema_version: Optional[int], cls: Any) -> Any:
        raise NotImplementedError

    # -------------------------------------------------------------- schema

    def _space_id(self, space: Any) -> int:
        if space.__class__ is int:
            return space
        sid = self._space_ids.get(space)
        if sid is None:
            ip.check_space(space)
            if isinstance(space, int):
                return space
            sid = self._schema.get_space(space).sid
            self._space_ids[space] = sid
        return sid

    def _index_id(self, sid: int, index: Any) -> int:
        if index.__class__ is int:
            return index
        iid = self._index_ids.get((sid, index))
        if iid is None:
            ip.check_index(index)
            if isinstance(index, int):
                return index
            iid = self._schema.get_index(sid, index).iid
            self._index_ids[(sid, index)] = iid
        return iid

    def _ops(self, sid: int, op_list: Any) -> List[Any]:
        """``op_list`` with field names replaced by their numbers (as tarantool-python does)."""
        ops = []
        for op in op_list:
            if isinstance(op[1], str):
                op = list(op)
                op[1] = self._schema.get_field(sid, op[1])["id"]
            ops.append(op)
        return ops

    def _space_request(self, code: int, space: Any, build: Callable[[int], Any], names: bool = False) -> Any:
        """Send a request on a space given by name or id (``names``: it also names an index or fields).

        A request built from names carries the schema version they were resolved at; when the server's
        schema has moved since, it refuses the request, and it is rebuilt from fresh names and sent again.
        """
        if space.__class__ is int and not names:
            return self._request(code, self._pack(build(space)), None, MuxResponse)
        for attempt in (1, 2, 3):
            payload = self._pack(build(self._space_id(space)))
            try:
                return self._request(code, payload, self._shared.schema_version, MuxResponse)
            except DatabaseError as exc:
                if exc.code != ip.ER_WRONG_SCHEMA_VERSION or isinstance(exc, NetworkError) or attempt == 3:
                    raise
                self._shared.on_schema()
        raise AssertionError("unreachable")  # pragma: no cover

    def flush_schema(self) -> None:
        """Forget the cached space and index ids; they are fetched again on next use. Never blocks."""
        self._shared.on_schema()

    # -------------------------------------------------------------- the tarantool-python API

    def ping(self, notime: bool = False) -> Union[float, str]:
        """Send a PING; return the round trip in seconds (``"Success"`` with ``notime``). Blocks until the reply."""
        start = time.time()
        self._request(ip.PING, b"", None, None)
        if notime:
            return "Success"
        return time.time() - start

    def select(
        self,
        space_name: Union[str, int],
        key: Any = None,
        *,
        offset: int = 0,
        limit: int = 0xFFFFFFFF,
        index: Union[str, int] = 0,
        iterator: Union[str, int, None] = None,
    ) -> Response:
        """SELECT from a space by ``key`` on ``index`` (name or id); ``iterator`` is a number or a name of
        :data:`ITERATORS` (default ``EQ``, or ``ALL`` for an empty key). Returns a ``Response`` of tuples."""
        ip.check_space(space_name)
        ip.check_index(index)
        offset = check_int("offset", offset)
        limit = check_int("limit", limit)
        it = ip.iterator_number(iterator, key)
        key = wrap_key(key, select=True)

        def build(sid: int) -> Dict[int, Any]:
            return ip.select_body(sid, self._index_id(sid, index), offset, limit, it, key)

        return self._space_request(ip.SELECT, space_name, build, isinstance(index, str))

    def insert(self, space_name: Union[str, int], values: Sequence[Any]) -> Response:
        """INSERT ``values`` (a list or tuple) into a space; a duplicate key raises ``DatabaseError``.
        Returns a ``Response`` holding the inserted tuple."""
        return self._store(ip.INSERT, space_name, values)

    def replace(self, space_name: Union[str, int], values: Sequence[Any]) -> Response:
        """REPLACE ``values`` (a list or tuple) in a space. Returns a ``Response`` holding the new tuple."""
        return self._store(ip.REPLACE, space_name, values)

    def _store(self, code: int, space_name: Any, values: Any) -> Any:
        if values.__class__ is not list and values.__class__ is not tuple:
            ip.check_values("values", values)
        # ip.store_body, inlined on the hot path.
        if space_name.__class__ is int:
            return self._request(code, self._pack({_SPACE_ID: space_name, _TUPLE: values}), None, MuxResponse)
        sid = self._space_ids.get(space_name) if space_name.__class__ is str else None
        if sid is not None:
            payload = self._pack({_SPACE_ID: sid, _TUPLE: values})
            try:
                return self._request(code, payload, self._shared.schema_version, MuxResponse)
            except DatabaseError as exc:
                if exc.code != ip.ER_WRONG_SCHEMA_VERSION or isinstance(exc, NetworkError):
                    raise
                self._shared.on_schema()
        ip.check_space(space_name)
        return self._space_request(code, space_name, lambda sid: ip.store_body(sid, values))

    def delete(self, space_name: Union[str, int], key: Any, *, index: Union[str, int] = 0) -> Response:
        """DELETE the tuple with ``key`` on ``index`` (name or id). Returns a ``Response`` with the deleted tuple."""
        ip.check_space(space_name)
        ip.check_index(index)
        key = wrap_key(key)

        def build(sid: int) -> Dict[int, Any]:
            return ip.delete_body(sid, self._index_id(sid, index), key)

        return self._space_request(ip.DELETE, space_name, build, isinstance(index, str))

    def update(
        self, space_name: Union[str, int], key: Any, op_list: Sequence[Any], *, index: Union[str, int] = 0
    ) -> Response:
        """UPDATE the tuple with ``key`` by ``op_list`` (``[('+', 2, 1), ('=', 'value', x)]``, fields by number
        as tarantool-python takes them, or by name). Returns a ``Response`` with the updated tuple."""
        ip.check_space(space_name)
        ip.check_index(index)
        ip.check_ops(op_list)
        key = wrap_key(key)

        def build(sid: int) -> Dict[int, Any]:
            return ip.update_body(sid, self._index_id(sid, index), key, self._ops(sid, op_list))

        return self._space_request(ip.UPDATE, space_name, build, _names_in(index, op_list))

    def upsert(
        self,
        space_name: Union[str, int],
        tuple_value: Sequence[Any],
        op_list: Sequence[Any],
        *,
        index: Union[str, int] = 0,
    ) -> Response:
        """UPSERT: insert ``tuple_value``, or apply ``op_list`` to the existing tuple. Returns an empty ``Response``."""
        ip.check_space(space_name)
        ip.check_index(index)
        ip.check_values("tuple_value", tuple_value)
        ip.check_ops(op_list)

        def build(sid: int) -> Dict[int, Any]:
            return ip.upsert_body(sid, self._index_id(sid, index), tuple_value, self._ops(sid, op_list))

        return self._space_request(ip.UPSERT, space_name, build, _names_in(index, op_list))

    def call(self, func_name: str, *args: Any) -> Response:
        """CALL a stored Lua function with ``args`` (one list or tuple argument is taken as the argument list).
        Returns a ``Response`` whose data are the function's return values."""
        if not isinstance(func_name, str):
            raise TypeError(f"func_name must be a str, got {func_name!r} ({type(func_name).__name__})")
        return self._request(ip.CALL, self._pack(ip.call_body(func_name, ip.arguments(args))), None, MuxResponse)

    def eval(self, expr: str, *args: Any) -> Response:
        """EVAL a Lua expression with ``args`` (available as ``...``). Returns a ``Response`` of its results."""
        if not isinstance(expr, str):
            raise TypeError(f"expr must be a str, got {expr!r} ({type(expr).__name__})")
        return self._request(ip.EVAL, self._pack(ip.eval_body(expr, ip.arguments(args))), None, MuxResponse)

    def execute(self, query: str, params: Union[Sequence[Any], Mapping[str, Any], None] = None) -> ResponseExecute:
        """EXECUTE an SQL statement with positional (``?``) or named (``:name``) ``params``. Returns a
        ``ResponseExecute`` (``data``, ``affected_row_count``, ``autoincrement_ids``)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {query!r} ({type(query).__name__})")
        if not params:
            bind: Any = []
        elif isinstance(params, Mapping):
            bind = [{f":{name}": value} for name, value in params.items()]
        elif isinstance(params, (list, tuple)):
            bind = params
        else:
            raise TypeError(f"params must be a list, tuple or mapping, got {params!r} ({type(params).__name__})")
        return self._request(ip.EXECUTE, self._pack(ip.execute_body(query, bind)), None, MuxResponseExecute)


def _names_in(index: Any, op_list: Any) -> bool:
    """Whether an index or a field is given by name (resolved through the cached schema)."""
    return isinstance(index, str) or any(isinstance(op[1], str) for op in op_list)
