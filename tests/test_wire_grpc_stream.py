"""Bidirectional streams on the lean gRPC client (workers/wire/grpc_client.py), frame by frame against
the fake HTTP/2 server: messages both ways however the frames cut them, every way a stream ends (OK,
an error status, trailers only, inside a message, a compressed message, a reset, a deadline, GOAWAY, a
lost connection, the client's cancel), flow control for a large message, and a stream beside unary
calls on one connection. Each test runs on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.h2_fake_server import (
    CANCEL,
    DATA,
    END_STREAM,
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    RST_STREAM,
    FakeConnection,
    FakeServer,
    frame,
    grpc_message,
    manual,
)
from workers import event_loop
from workers.wire.grpc_client import GrpcError, GrpcStream, GrpcWireClient

pytestmark = pytest.mark.timeout(30)

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
UNARY = "/inference.GRPCInferenceService/ModelInfer"
BIG = bytes(range(256)) * 1024  # 256 KiB: four times the default 64 KiB window


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    return lambda main: event_loop.run(main, request.param)


async def with_stream(test: Callable[[FakeConnection, GrpcStream, GrpcWireClient], Awaitable[Any]],
                      timeout: float | None = None, **settings: int) -> Any:
    """A fresh server and client, one stream open on the server's first connection."""
    async with FakeServer(manual, **settings) as server:
        client = GrpcWireClient(server.url, connect_timeout=2.0)
        try:
            stream = await client.stream(STREAM, timeout)
            return await asyncio.wait_for(test(await server.connection(0), stream, client), 10)
        finally:
            await client.close()


async def read_all(stream: GrpcStream) -> list[bytes]:
    out = []
    while (message := await asyncio.wait_for(stream.read(), 5)) is not None:
        out.append(bytes(message))
    return out


async def stream_failure(stream: GrpcStream) -> GrpcError:
    with pytest.raises(GrpcError) as caught:
        await read_all(stream)
    return caught.value


def test_messages_both_ways_then_ok(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        for text in (b"one", b"two", b""):
            await stream.write(text)
        got = [await conn.message() for _ in range(3)]
        stream_id = got[0][0]
        assert [message for _, message in got] == [b"one", b"two", b""]
        assert conn.frames_of(DATA)[0].flags & END_STREAM == 0  # the stream stays open for more
        conn.send(conn.answer_headers(stream_id))
        conn.stream_message(stream_id, b"first")
        both = grpc_message(b"second") + grpc_message(b"third")  # two messages in one frame ...
        cut = grpc_message(b"fourth, cut in three frames")  # ... and one message over three frames
        conn.send(frame(DATA, 0, stream_id, both) + frame(DATA, 0, stream_id, cut[:3])
                  + frame(DATA, 0, stream_id, cut[3:9]) + frame(DATA, 0, stream_id, cut[9:]))
        assert bytes(await asyncio.wait_for(stream.read(), 5)) == b"first"
        conn.send(conn.trailers(stream_id))
        assert await read_all(stream) == [b"second", b"third", b"fourth, cut in three frames"]
        assert stream.ended
        assert await asyncio.wait_for(stream.read(), 5) is None  # and stays ended

    run(with_stream(test))


def test_done_writing_half_closes_and_the_server_ends_the_stream(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        await stream.write(b"last")
        stream.done_writing()
        request = await conn.request()  # END_STREAM seen: the request side is complete
        assert request.message == b"last" and request.headers[":path"] == STREAM
        with pytest.raises(GrpcError, match="FAILED_PRECONDITION"):
            await stream.write(b"more")
        conn.send(conn.answer_headers(request.stream_id))
        conn.stream_message(request.stream_id, b"answer")
        conn.send(conn.trailers(request.stream_id))
        assert await read_all(stream) == [b"answer"]

    run(with_stream(test))


@pytest.mark.parametrize("trailers_only", [False, True])
def test_an_error_status_ends_the_stream_with_its_code(run: Callable, trailers_only: bool) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream_id, _ = await conn.message()
        if not trailers_only:
            conn.send(conn.answer_headers(stream_id))
            conn.stream_message(stream_id, b"partial answer")
            assert bytes(await asyncio.wait_for(stream.read(), 5)) == b"partial answer"
        conn.send(conn.trailers(stream_id, "14", "server%20restarting"))
        error = await stream_failure(stream)
        assert (error.code, error.message) == ("UNAVAILABLE", "server restarting")
        with pytest.raises(GrpcError, match="UNAVAILABLE"):
            await stream.write(b"y")

    run(with_stream(test))


def test_a_stream_that_ends_inside_a_message_fails_internal(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream_id, _ = await conn.message()
        conn.send(conn.answer_headers(stream_id) + frame(DATA, 0, stream_id, grpc_message(b"truncated")[:7]))
        conn.send(conn.trailers(stream_id))
        error = await stream_failure(stream)
        assert error.code == "INTERNAL" and "inside a message" in error.message

    run(with_stream(test))


def test_a_compressed_message_fails_the_stream_and_resets_it_but_not_the_connection(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, client: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream_id, _ = await conn.message()
        conn.send(conn.answer_headers(stream_id) + frame(DATA, 0, stream_id, b"\x01" + (3).to_bytes(4, "big") + b"zip"))
        error = await stream_failure(stream)
        assert error.code == "INTERNAL" and "compressed" in error.message
        reset = await conn.frame(RST_STREAM, lambda f: f.stream_id == stream_id)
        assert reset.code == PROTOCOL_ERROR
        call = asyncio.ensure_future(client.unary(UNARY, b"still here"))
        conn.echo(await conn.request())
        assert bytes(await asyncio.wait_for(call, 5)) == b"still here"

    run(with_stream(test))


def test_a_reset_from_the_server_fails_the_stream(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream_id, _ = await conn.message()
        conn.reset(stream_id, INTERNAL_ERROR)
        error = await stream_failure(stream)
        assert error.code == "INTERNAL" and "reset by the server" in error.message

    run(with_stream(test))


def test_cancel_resets_the_stream_and_wakes_its_reader(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, client: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream_id, _ = await conn.message()
        reading = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.05)
        stream.cancel()
        with pytest.raises(GrpcError, match="CANCELLED"):
            await asyncio.wait_for(reading, 5)
        assert (await conn.frame(RST_STREAM, lambda f: f.stream_id == stream_id)).code == CANCEL
        conn.stream_message(stream_id, b"late")  # dropped: the stream is gone on our side
        call = asyncio.ensure_future(client.unary(UNARY, b"next"))
        conn.echo(await conn.request())
        assert bytes(await asyncio.wait_for(call, 5)) == b"next"

    run(with_stream(test))


def test_a_stream_deadline_fails_it_and_resets_it(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream_id, _ = await conn.message()
        assert conn.open_request(stream_id).headers["grpc-timeout"].endswith(("m", "u"))  # the server knows it too
        error = await stream_failure(stream)
        assert error.code == "DEADLINE_EXCEEDED"
        assert (await conn.frame(RST_STREAM, lambda f: f.stream_id == stream_id)).code == CANCEL

    run(with_stream(test, timeout=0.3))


def test_a_large_message_waits_for_the_windows(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        await asyncio.wait_for(stream.write(BIG), 5)  # the fake server gives every DATA byte back
        await stream.write(b"after")
        first = await conn.message()
        assert first[1] == BIG
        assert (await conn.message())[1] == b"after"
        assert max(len(f.payload) for f in conn.frames_of(DATA)) <= 16384  # the default frame size
        assert not any(f.flags & END_STREAM for f in conn.frames_of(DATA))

    run(with_stream(test))


def test_goaway_below_the_stream_fails_it_unavailable_and_new_streams_go_to_a_new_connection(run: Callable) -> None:
    async def main() -> None:
        async with FakeServer(manual) as server:
            client = GrpcWireClient(server.url, connect_timeout=2.0)
            try:
                kept = await client.stream(STREAM)
                lost = await client.stream(STREAM)
                await kept.write(b"a")
                await lost.write(b"b")
                conn = await server.connection(0)
                ids = {message: stream_id for stream_id, message in [await conn.message(), await conn.message()]}
                conn.goaway(ids[b"a"])  # the server processed stream a, never b
                error = await stream_failure(lost)
                assert error.code == "UNAVAILABLE" and "going away" in error.message
                fresh = await client.stream(STREAM)  # on a new connection
                await fresh.write(b"c")
                second = await server.connection(1)
                assert (await second.message())[1] == b"c"
                conn.send(conn.answer_headers(ids[b"a"]))  # the kept stream finishes where it was
                conn.stream_message(ids[b"a"], b"A")
                conn.send(conn.trailers(ids[b"a"]))
                assert await read_all(kept) == [b"A"]
            finally:
                await client.close()

    run(asyncio.wait_for(main(), 10))


def test_a_lost_connection_fails_the_stream_unavailable(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, _: GrpcWireClient) -> None:
        await stream.write(b"x")
        await conn.message()
        conn.close()
        error = await stream_failure(stream)
        assert error.code == "UNAVAILABLE" and "lost" in error.message

    run(with_stream(test))


def test_streams_and_unary_calls_share_a_connection(run: Callable) -> None:
    async def test(conn: FakeConnection, stream: GrpcStream, client: GrpcWireClient) -> None:
        call = asyncio.ensure_future(client.unary(UNARY, b"unary"))
        await stream.write(b"streamed")
        request = await conn.request()  # the unary one (END_STREAM); the stream's message came too
        conn.echo(request)
        assert bytes(await asyncio.wait_for(call, 5)) == b"unary"
        stream_id = next(sid for sid, message in [await conn.message(), await conn.message()]
                         if message == b"streamed")
        conn.send(conn.answer_headers(stream_id))
        conn.stream_message(stream_id, b"reply", end_stream=False)
        conn.send(conn.trailers(stream_id))
        assert await read_all(stream) == [b"reply"]

    run(with_stream(test))


def test_a_half_closed_stream_the_server_never_ends_is_reset_after_its_linger(
        run: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.wire.grpc_client as grpc_client

    monkeypatch.setattr(grpc_client, "HALF_CLOSED_LINGER_S", 0.2)

    async def test(conn: FakeConnection, stream: GrpcStream, client: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream.done_writing()
        request = await conn.request()
        reset = await conn.frame(RST_STREAM, lambda f: f.stream_id == request.stream_id)  # a hung server
        assert reset.code == CANCEL
        assert stream.ended and not client._connection.calls  # its stream slot is free again

    run(with_stream(test))


def test_a_half_closed_stream_ended_by_the_server_is_not_reset(run: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.wire.grpc_client as grpc_client

    monkeypatch.setattr(grpc_client, "HALF_CLOSED_LINGER_S", 0.2)

    async def test(conn: FakeConnection, stream: GrpcStream, client: GrpcWireClient) -> None:
        await stream.write(b"x")
        stream.done_writing()
        request = await conn.request()
        conn.send(conn.answer_headers(request.stream_id) + conn.trailers(request.stream_id))
        await asyncio.sleep(0.4)
        assert stream.ended and not conn.frames_of(RST_STREAM) and not client._connection.calls

    run(with_stream(test))
