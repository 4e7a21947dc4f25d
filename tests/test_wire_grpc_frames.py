"""The lean gRPC client (workers/wire/grpc_client.py) frame by frame, against a fake HTTP/2 server
(tests/h2_fake_server.py) that scripts what a real one does rarely: stream ids running out,
GOAWAY, RST_STREAM, PING, SETTINGS, window overflows, malformed frames, a peer gone silent, a
server allowing one stream at a time. Every test runs on asyncio's loop and on uvloop (the
workers' loop), and closes its client and server whatever happens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.h2_fake_server import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    NO_ERROR,
    PADDED,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    FakeConnection,
    FakeServer,
    Handler,
    frame,
    grpc_message,
    manual,
)
from workers import event_loop
from workers.wire.grpc_client import GrpcError, GrpcWireClient

pytestmark = pytest.mark.timeout(30)

METHOD = "/inference.GRPCInferenceService/ModelInfer"
BIG = bytes(range(256)) * 1024  # 256 KiB: four times the default 64 KiB window, sent as the server opens it


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    return lambda main: event_loop.run(main, request.param)


async def with_server(test: Callable[[FakeServer, GrpcWireClient], Awaitable[Any]], handler: Handler = manual,
                      setup: Callable[[GrpcWireClient], None] = lambda _: None, **settings: int) -> Any:
    """Run `test` against a fresh fake server and client; both are closed whatever happens."""
    _STARTED.clear()
    async with FakeServer(handler, **settings) as server:
        client = GrpcWireClient(server.url, connect_timeout=2.0)
        setup(client)
        try:
            return await asyncio.wait_for(test(server, client), 10)
        finally:
            await client.close()
            for call in _STARTED:  # a failed test's calls: ended, their errors retrieved
                call.cancel()
            await asyncio.gather(*_STARTED, return_exceptions=True)


_STARTED: list[asyncio.Future] = []  # the calls of the test running


def start(client: GrpcWireClient, message: bytes, timeout: float | None = None) -> asyncio.Future:
    call = asyncio.ensure_future(client.unary(METHOD, message, timeout))
    _STARTED.append(call)
    return call


async def failure(task: Awaitable[Any]) -> GrpcError:
    with pytest.raises(GrpcError) as caught:
        await asyncio.wait_for(task, 5)
    return caught.value


async def answered(conn: FakeConnection, client: GrpcWireClient, message: bytes) -> bytes:
    """One call that `conn` echoes: the connection works."""
    call = start(client, message)
    conn.echo(await conn.request())
    return bytes(await asyncio.wait_for(call, 5))


async def first_answered(server: FakeServer, client: GrpcWireClient) -> FakeConnection:
    call = start(client, b"first")
    first = await server.connection(0)
    first.echo(await first.request())
    assert bytes(await call) == b"first"
    return first


async def next_connection(server: FakeServer, client: GrpcWireClient, index: int) -> FakeConnection:
    """The connection `index`, which the client opens for its next call."""
    waiting = asyncio.ensure_future(server.connection(index))
    probe = start(client, b"probe")
    conn = await waiting
    conn.echo(await conn.request())
    assert bytes(await probe) == b"probe"
    return conn


# -- 1. stream ids run out ------------------------------------------------------------------------
@pytest.mark.parametrize("last", [b"a3", BIG], ids=["small", "large"])
def test_stream_ids_run_out_and_calls_in_flight_end_on_the_old_connection(run, last: bytes) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        old_calls = [start(client, b"a%d" % i) for i in range(3)] + [start(client, last)]
        first = await server.connection(0)
        old = await first.requests_of(4)  # a large call on the last id still goes out whole
        assert [r.stream_id for r in old] == [1, 3, 5, 7] and old[3].message == last
        new_calls = [start(client, b"b%d" % i) for i in range(2)]
        second = await server.connection(1)  # opened beside the first, which still has 4 calls
        new = await second.requests_of(2)
        assert [r.stream_id for r in new] == [1, 3]
        for request in new:
            second.echo(request)
        assert [bytes(m) for m in await asyncio.gather(*new_calls)] == [b"b0", b"b1"]
        for request in old[:3]:
            first.echo(request)
        await asyncio.sleep(0.2)
        assert not first.closed.is_set() and not first.frames_of(GOAWAY)  # one call still in flight there
        first.echo(old[3])
        assert [bytes(m) for m in await asyncio.gather(*old_calls)] == [b"a0", b"a1", b"a2", last]
        await first.wait_closed()  # drained: closed after its last stream ended
        assert first.frames_of(GOAWAY)[0].code == NO_ERROR
        assert await answered(second, client, b"c") == b"c"
        assert len(server.connections) == 2

    run(with_server(test, setup=lambda client: setattr(client, "_max_stream_id", 7)))


# -- 2. GOAWAY ------------------------------------------------------------------------------------
def test_goaway_lets_taken_streams_finish_and_sends_the_others_again_on_a_new_connection(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        calls = [start(client, b"m%d" % i) for i in range(4)]
        first = await server.connection(0)
        old = await first.requests_of(4)
        first.goaway(last_stream_id=3)  # the server took streams 1 and 3, not 5 and 7
        second = await server.connection(1)
        again = await second.requests_of(2)
        assert sorted(r.message for r in again) == [b"m2", b"m3"]
        later = start(client, b"later")  # a new call goes to the new connection
        again.append(await second.request())
        for request in again:
            second.echo(request)
        assert bytes(await later) == b"later"
        assert not any(call.done() for call in calls[:2])
        for request in old[:2]:
            first.echo(request)
        assert [bytes(m) for m in await asyncio.gather(*calls)] == [b"m0", b"m1", b"m2", b"m3"]
        await first.wait_closed()
        assert len(server.connections) == 2

    run(with_server(test))


def test_a_server_that_turns_every_call_away_ends_it_as_unavailable(run) -> None:
    async def refuse_all(conn: FakeConnection) -> None:
        while True:
            await conn.requests.get()
            conn.goaway(last_stream_id=0)

    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        error = await failure(start(client, b"m"))
        assert error.code == "UNAVAILABLE" and "GOAWAY" in error.message and "last stream 0" in error.message
        assert len(server.connections) == 3  # the first try and two more, then it gives up

    run(with_server(test, refuse_all))


def test_a_call_waiting_for_a_stream_slot_goes_to_the_new_connection_after_goaway(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        first = await first_answered(server, client)  # the server's MAX_CONCURRENT_STREAMS=1 is known now
        busy = start(client, b"busy")
        held = await first.request()
        waiting = start(client, b"waiting")  # no slot: it waits, not sent
        await asyncio.sleep(0.1)
        assert first.requests.empty()
        first.goaway(last_stream_id=held.stream_id)
        second = await server.connection(1)
        second.echo(await second.request())
        assert bytes(await waiting) == b"waiting"
        first.echo(held)
        assert bytes(await busy) == b"busy"
        await first.wait_closed()

    run(with_server(test, max_concurrent_streams=1))


def test_goaway_with_an_error_and_no_streams_closes_and_the_next_call_reconnects(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        first = await first_answered(server, client)
        first.goaway(last_stream_id=1, code=ENHANCE_YOUR_CALM, debug=b"too_many_pings")
        await first.wait_closed()
        await next_connection(server, client, 1)  # a new connection, which answers
        assert client._keepalive_s == 40.0  # gRFC A8: told of too many pings, it pings half as often

    run(with_server(test))


# -- 3. malformed frames ----------------------------------------------------------------------------
def _grpc_status_abc(conn: FakeConnection, sid: int) -> bytes:
    return conn.answer_headers(sid) + frame(DATA, 0, sid, grpc_message(b"x")) + conn.trailers(sid, "abc")


def _empty_padded_data(conn: FakeConnection, sid: int) -> bytes:
    return conn.answer_headers(sid) + frame(DATA, PADDED, sid, b"")


def _padding_past_the_frame(conn: FakeConnection, sid: int) -> bytes:
    return conn.answer_headers(sid) + frame(DATA, PADDED, sid, bytes([200]) + b"abc")


def _status_not_http(conn: FakeConnection, sid: int) -> bytes:
    return frame(HEADERS, END_HEADERS | END_STREAM, sid, conn.header_block([(":status", "2x0")]))


def _length_past_the_message(conn: FakeConnection, sid: int) -> bytes:
    return (conn.answer_headers(sid) + frame(DATA, 0, sid, b"\x00\x00\x00\x00\x09abc")
            + conn.trailers(sid))


@pytest.mark.parametrize("malformed, says", [
    (_grpc_status_abc, "grpc-status b'abc' is not a number"),
    (_empty_padded_data, "cannot hold its bytes of padding"),
    (_padding_past_the_frame, "cannot hold 200 bytes of padding"),
    (_status_not_http, ":status b'2x0' is not an HTTP status"),
    (_length_past_the_message, "says 9 bytes but 3 came"),
], ids=["grpc-status-abc", "empty-padded-data", "padding-past-the-frame", "status-not-http", "short-message"])
def test_a_malformed_answer_fails_its_call_only(run, malformed, says: str) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        bad, good = start(client, b"bad"), start(client, b"good")
        conn = await server.connection(0)
        bad_request, good_request = await conn.requests_of(2)
        conn.send(malformed(conn, bad_request.stream_id))
        error = await failure(bad)
        assert error.code == "INTERNAL" and says in error.message, error
        conn.echo(good_request)
        assert bytes(await good) == b"good"
        assert await answered(conn, client, b"after") == b"after"
        assert len(server.connections) == 1

    run(with_server(test))


def test_the_last_grpc_status_decides_and_a_known_ok_trailer_still_has_its_message_checked(run) -> None:
    """A call's status is its last grpc-status (headers may carry one, the trailers' wins); and
    trailers the client has seen before (its header cache) that say 0 still leave the message to
    be checked: a message shorter than its length fails as it would with new trailers."""
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        conn = await first_answered(server, client)
        for index in range(3):  # the same OK trailers again and again: indexed, then known to the client
            assert await answered(conn, client, b"warm %d" % index) == b"warm %d" % index

        def headers_saying(status: str) -> bytes:
            return conn.header_block([(":status", "200"), ("content-type", "application/grpc"),
                                      ("grpc-status", status)])

        late_ok, late_error, short = start(client, b"late ok"), start(client, b"late error"), start(client, b"short")
        one, two, three = await conn.requests_of(3)
        conn.send(frame(HEADERS, END_HEADERS, one.stream_id, headers_saying("13"))
                  + frame(DATA, 0, one.stream_id, grpc_message(b"late ok")) + conn.trailers(one.stream_id))
        assert bytes(await asyncio.wait_for(late_ok, 5)) == b"late ok"
        conn.send(frame(HEADERS, END_HEADERS, two.stream_id, headers_saying("0"))
                  + frame(DATA, 0, two.stream_id, grpc_message(b"late error"))
                  + conn.trailers(two.stream_id, "14", "went away"))
        error = await failure(late_error)
        assert (error.code, error.message) == ("UNAVAILABLE", "went away")
        conn.send(_length_past_the_message(conn, three.stream_id))
        error = await failure(short)
        assert error.code == "INTERNAL" and "says 9 bytes but 3 came" in error.message, error
        assert await answered(conn, client, b"after") == b"after"

    run(with_server(test))


def test_answers_cut_anywhere_across_reads_are_read_whole(run) -> None:
    """Two answers in one byte stream, cut at odd places (inside a frame's 9-byte head, inside a
    header block, inside a message) and sent piece by piece: each call gets its own answer whole."""
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        first, second = start(client, b"first"), start(client, BIG[:3000])
        conn = await server.connection(0)
        one, two = await conn.requests_of(2)
        data = b"".join(conn.answer_headers(r.stream_id) + frame(DATA, 0, r.stream_id, grpc_message(r.message))
                        + conn.trailers(r.stream_id) for r in (two, one))
        pos = 0
        for size in (1, 4, 5, 13, 2, 700, 9, 3, 1000, 1):  # the rest in one piece
            conn.send(data[pos:pos + size])
            pos += size
            await conn.writer.drain()
            await asyncio.sleep(0.01)  # a read of its own on the client's side
        conn.send(data[pos:])
        assert bytes(await asyncio.wait_for(first, 5)) == b"first"
        assert bytes(await asyncio.wait_for(second, 5)) == BIG[:3000]
        assert await answered(conn, client, b"after") == b"after"

    run(with_server(test))


@pytest.mark.parametrize("broken, code, says", [
    (frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\x7f"), COMPRESSION_ERROR, "undecodable header block"),
    (frame(PING, 0, 0, b"7 bytes"), FRAME_SIZE_ERROR, "a PING frame of 7 bytes"),
    (frame(HEADERS, END_HEADERS | PADDED, 1, b"\x09abc"), PROTOCOL_ERROR, "more padding than that"),
], ids=["bad-hpack", "ping-size", "headers-padding"])
def test_a_broken_connection_fails_every_call_with_its_reason_and_the_next_call_reconnects(
        run, broken: bytes, code: int, says: str) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        calls = [start(client, b"one"), start(client, b"two")]
        conn = await server.connection(0)
        await conn.requests_of(2)
        conn.send(broken)
        for call in calls:
            error = await failure(call)
            assert error.code == "UNAVAILABLE" and says in error.message and "connection was closed" in error.message
        assert (await conn.frame(GOAWAY)).code == code
        await conn.wait_closed()
        await next_connection(server, client, 1)  # a new connection, which answers

    run(with_server(test))


# -- 4. keepalive ----------------------------------------------------------------------------------
def _fast_keepalive(client: GrpcWireClient) -> None:
    client._keepalive_s, client._keepalive_timeout_s = 0.2, 0.3


def test_a_silent_peer_is_caught_by_keepalive_and_the_next_call_reconnects(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        loop = asyncio.get_running_loop()
        calls = [start(client, b"one"), start(client, b"two")]
        began = loop.time()
        conn = await server.connection(0)
        await conn.requests_of(2)
        conn.silent = True  # TCP stays up; nothing comes back, not even a PING ACK
        for call in calls:
            error = await failure(call)
            assert error.code == "UNAVAILABLE"
            assert "did not answer a keepalive PING within 0.3 s" in error.message
        assert loop.time() - began < 1.5
        assert conn.frames_of(PING)
        await next_connection(server, client, 1)  # a new connection, which answers

    run(with_server(test, setup=_fast_keepalive))


def test_keepalive_pings_only_while_calls_wait_and_a_slow_answer_survives(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        conn = await first_answered(server, client)
        await asyncio.sleep(0.6)  # idle: no PING
        assert not conn.frames_of(PING)
        slow = start(client, b"slow")
        request = await conn.request()
        await asyncio.sleep(1.0)  # silent but alive: the PING is answered
        conn.echo(request)
        assert bytes(await slow) == b"slow"
        # Without an answer in between, the next PING waits for the server's minimum ping interval.
        assert len(conn.frames_of(PING)) == 1

    def keepalive(client: GrpcWireClient) -> None:  # a PING soon, and a loaded host's time to answer it
        client._keepalive_s, client._keepalive_timeout_s = 0.2, 2.0

    run(with_server(test, setup=keepalive))


# -- 5. a cancelled call frees its stream slot ---------------------------------------------------------
@pytest.mark.parametrize("give_up", ["cancel", "deadline"])
def test_a_call_given_up_frees_its_stream_slot_for_a_waiting_call(run, give_up: str) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        conn = await first_answered(server, client)  # the server's MAX_CONCURRENT_STREAMS=1 is known now
        first = start(client, b"first", timeout=0.3 if give_up == "deadline" else None)
        held = await conn.request()
        second = start(client, b"second")
        await asyncio.sleep(0.1)
        assert conn.requests.empty()  # waits for the slot
        if give_up == "cancel":
            first.cancel()
        reset = await conn.frame(RST_STREAM, lambda f: f.stream_id == held.stream_id)
        assert reset.code == CANCEL
        conn.echo(await conn.request())
        assert bytes(await asyncio.wait_for(second, 5)) == b"second"
        if give_up == "cancel":
            with pytest.raises(asyncio.CancelledError):
                await first
        else:
            assert (await failure(first)).code == "DEADLINE_EXCEEDED"

    run(with_server(test, max_concurrent_streams=1))


# -- 6. RST_STREAM, PING, SETTINGS, WINDOW_UPDATE ---------------------------------------------------------
@pytest.mark.parametrize("code, status", [(CANCEL, "CANCELLED"), (PROTOCOL_ERROR, "INTERNAL"),
                                          (ENHANCE_YOUR_CALM, "RESOURCE_EXHAUSTED")])
def test_rst_stream_fails_that_call_only_with_the_specs_status(run, code: int, status: str) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        reset, kept = start(client, b"reset"), start(client, b"kept")
        conn = await server.connection(0)
        reset_request, kept_request = await conn.requests_of(2)
        conn.reset(reset_request.stream_id, code)
        error = await failure(reset)
        assert error.code == status and "stream reset by the server" in error.message
        conn.echo(kept_request)
        assert bytes(await kept) == b"kept"
        assert len(server.connections) == 1

    run(with_server(test))


def test_a_refused_stream_is_sent_again_once(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        refused, twice = start(client, b"refused"), start(client, b"twice")
        conn = await server.connection(0)
        for request in await conn.requests_of(2):
            conn.reset(request.stream_id, REFUSED_STREAM)  # never processed: safe to send again
        again = {r.message: r for r in await conn.requests_of(2)}
        conn.echo(again[b"refused"])
        assert bytes(await refused) == b"refused"
        conn.reset(again[b"twice"].stream_id, REFUSED_STREAM)
        third = await conn.request()
        conn.reset(third.stream_id, REFUSED_STREAM)
        error = await failure(twice)
        assert error.code == "UNAVAILABLE" and "REFUSED_STREAM" in error.message
        assert len(server.connections) == 1

    run(with_server(test))


def test_a_server_ping_is_acknowledged_with_its_payload(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        conn = await first_answered(server, client)
        conn.ping(b"8 bytes!")
        ack = await conn.frame(PING, lambda f: bool(f.flags & ACK))
        assert ack.payload == b"8 bytes!" and ack.stream_id == 0

    run(with_server(test))


def test_settings_are_acknowledged_and_window_changes_move_open_streams_even_below_zero(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        conn = await first_answered(server, client)
        await conn.frame(SETTINGS, lambda f: bool(f.flags & ACK))
        conn.auto_window = False
        message = bytes(range(200)) * 5  # 1000 bytes, 1005 on the wire
        call = start(client, message)
        await _data_sent(conn, 100)  # the 100-byte initial window
        conn.settings(initial_window_size=50)  # 100 - 100 + (50 - 100): -50
        await _acks(conn, 2)
        conn.window_update(3, 30)  # -20: still nothing may go
        await asyncio.sleep(0.2)
        assert _data_bytes(conn) == 100
        conn.settings(initial_window_size=2000)  # -20 + 1950: the rest goes
        request = await conn.request()
        assert request.message == message and _data_bytes(conn) == 1005
        conn.echo(request)
        assert bytes(await call) == message
        await _acks(conn, 3)

    run(with_server(test, initial_window_size=100))


def _data_bytes(conn: FakeConnection) -> int:
    return sum(len(f.payload) for f in conn.frames_of(DATA) if f.stream_id > 1)


async def _data_sent(conn: FakeConnection, size: int) -> None:
    for _ in range(100):
        if _data_bytes(conn) >= size:
            break
        await asyncio.sleep(0.01)
    assert _data_bytes(conn) == size


async def _acks(conn: FakeConnection, count: int) -> None:
    for _ in range(100):
        if len([f for f in conn.frames_of(SETTINGS) if f.flags & ACK]) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} SETTINGS ACKs")


def test_a_stream_window_pushed_past_the_limit_fails_that_stream(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        overflown, kept = start(client, b"overflown"), start(client, b"kept")
        conn = await server.connection(0)
        overflown_request, kept_request = await conn.requests_of(2)
        conn.window_update(overflown_request.stream_id, (1 << 31) - 1)
        reset = await conn.frame(RST_STREAM, lambda f: f.stream_id == overflown_request.stream_id)
        assert reset.code == FLOW_CONTROL_ERROR
        error = await failure(overflown)
        assert error.code == "INTERNAL" and "FLOW_CONTROL_ERROR" in error.message
        conn.echo(kept_request)
        assert bytes(await kept) == b"kept"
        assert len(server.connections) == 1

    run(with_server(test))


def test_a_connection_window_pushed_past_the_limit_closes_it_and_the_next_call_reconnects(run) -> None:
    async def test(server: FakeServer, client: GrpcWireClient) -> None:
        calls = [start(client, b"one"), start(client, b"two")]
        conn = await server.connection(0)
        await conn.requests_of(2)
        conn.window_update(0, (1 << 31) - 1)
        for call in calls:
            error = await failure(call)
            assert error.code == "UNAVAILABLE" and "FLOW_CONTROL_ERROR" in error.message
            assert "connection's send window" in error.message
        assert (await conn.frame(GOAWAY)).code == FLOW_CONTROL_ERROR
        await next_connection(server, client, 1)  # a new connection, which answers

    run(with_server(test))
