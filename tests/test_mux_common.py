"""What both multiplexers share: the same ``mux_*`` statistics keys, ``pop_stats()``, ``shared_connections``
(and its deprecated old name), the default names."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List

import gevent
import redis

from greenpool import RedisMuxPool, TarantoolMux, _green
from greenpool._mux import DeferredRequest, MuxIO, MuxShared
from greenpool.stats import Histogram


def test_both_multiplexers_report_the_same_mux_keys(redis_server: Any, tarantool_server: Any) -> None:
    r, t = redis_server, tarantool_server
    pool = RedisMuxPool(host=r.host, port=r.port, password=getattr(r, "password", None), shared_connections=2)
    mux = TarantoolMux(t.host, t.port, t.user, t.password, shared_connections=2)
    try:
        client = redis.Redis(connection_pool=pool)
        gevent.joinall([gevent.spawn(client.ping) for _ in range(4)], timeout=10, raise_error=True)
        gevent.joinall([gevent.spawn(mux.ping) for _ in range(4)], timeout=10, raise_error=True)
        for multiplexer in (pool, mux):  # one reply time per send, each of the replies of that send
            reply = multiplexer.get_histograms()["reply"]
            assert 1 <= reply.count <= multiplexer.get_stats()["mux_writes"] and reply.sum_ms > 0.0
        redis_stats, tarantool_stats = pool.pop_stats(), mux.pop_stats()
        redis_keys = {key for key in redis_stats if key.startswith("mux_")} - {"mux_dedicated_checkouts"}
        assert redis_keys == {key for key in tarantool_stats if key.startswith("mux_")}
        for stats in (redis_stats, tarantool_stats):
            assert stats["mux_shared_connections"] == stats["mux_connects"] == stats["mux_sockets_up"] == 2
            assert stats["mux_requests"] == stats["mux_replies"] == 4 and stats["mux_waiting"] == 0
        for stats in (pool.get_stats(), mux.get_stats()):  # the totals start again; the gauges stay
            assert stats["mux_requests"] == stats["mux_connects"] == 0 and stats["mux_sockets_up"] == 2
        for multiplexer in (pool, mux):  # the reply times started again too
            assert multiplexer.get_histograms()["reply"].count == 0
    finally:
        pool.disconnect()
        mux.close()


def test_default_names() -> None:
    assert TarantoolMux("127.0.0.1", 3302).name == "tarantool 127.0.0.1:3302"
    assert TarantoolMux(None, "/tmp/tnt.sock").name == "tarantool /tmp/tnt.sock"
    assert RedisMuxPool(host="127.0.0.1", port=6380, db=2).get_stats()["name"] == "redis 127.0.0.1:6380/2"


class _FakeSocket:
    """A shared socket that records what ``drain`` hands it; ``refuse`` holds the requests nobody waits for."""

    def __init__(self, name: str, refuse: Any = ()) -> None:
        self.name = name
        self.refuse = set(refuse)
        self.admitted: List[int] = []
        self.pushes: List[int] = []

    def admit(self, request: Any) -> bool:
        if request.seq in self.refuse:
            return False
        self.admitted.append(request.seq)
        return True

    def pushed(self, n: int = 1) -> None:
        self.pushes.append(n)


def test_drain_gives_permits_oldest_first_and_pushes_once_per_run_of_one_socket() -> None:
    a, b = _FakeSocket("a", refuse={3}), _FakeSocket("b")
    shared = MuxShared(max_in_flight=6)
    shared.in_flight = 1
    plan = [(a, 1), (a, 1), (a, 1), (b, 2), (a, 1), (b, 1), (a, 1)]  # (socket, requests) in queue order
    for seq, (sock, n) in enumerate(plan, start=1):
        shared.deferred.append(DeferredRequest(sock, n, seq))  # type: ignore[arg-type]
    shared.drain()
    # Permits for 5 more: requests 1, 2 (a), 3 refused (nobody waits: no permit), 4 (b, 2 requests), 5 (a);
    # request 6 (b) would make 7 > 6 and waits, and so does everything behind it.
    assert a.admitted == [1, 2, 5] and b.admitted == [4]
    assert a.pushes == [2, 1] and b.pushes == [2]
    assert shared.in_flight == 6 and [r.seq for r in shared.deferred] == [6, 7]
    shared.in_flight = 0  # every reply came
    shared.drain()
    assert b.admitted == [4, 6] and a.admitted == [1, 2, 5, 7] and not shared.deferred
    assert b.pushes == [2, 1] and a.pushes == [2, 1, 1] and shared.in_flight == 2


def test_reply_times_are_taken_per_send_once_its_replies_are_parsed() -> None:
    class Sink:  # a socket that takes everything
        def send(self, data: bytes) -> int:
            return len(data)

    sock, hist = MuxIO(), Histogram()
    sock.sock = Sink()
    with _patched_monotonic(iter([1.0, 1.5, 4.0, 9.0]).__next__):
        for requests in (b"12", b"345"):  # two sends: requests 1-2 at t=1.0, 3-5 at t=1.5
            sock.out.append(requests)
            sock.unsent = len(requests)
            sock.send()
        assert sock.unanswered == sock.handed == 5
        sock.unanswered -= 1  # one reply parsed: the first send is not complete
        sock.time_replies(hist)
        assert hist.snapshot().count == 0
        sock.unanswered -= 2  # three parsed, at t=4.0: the first send took 3 s
        sock.time_replies(hist)
        assert hist.snapshot().count == 1 and hist.sum_ms == 3000.0
        sock.unanswered -= 2  # all five, at t=9.0: the second took 7.5 s
        sock.time_replies(hist)
        assert hist.snapshot().count == 2 and hist.sum_ms == 10500.0 and not sock.sent_marks
    sock.stop_io(close_socket=False)  # a lost socket forgets its sends
    assert sock.handed == sock.unanswered == 0 and not sock.sent_marks


@contextlib.contextmanager
def _patched_monotonic(clock: Callable[[], float]) -> Iterator[None]:
    saved = _green.monotonic
    _green.monotonic = clock  # type: ignore[assignment]
    try:
        yield
    finally:
        _green.monotonic = saved  # type: ignore[assignment]
