"""Lanes: one connection each, at most one request in flight, sending a request built once.

A closed-loop point runs one lane per level of concurrency, each sending its next request when
the last one is answered; an open-loop point hands scheduled requests to idle lanes. Everything runs
on one asyncio event loop: on a small machine that shares its CPU with the server, threads would
fight over the GIL (sync gRPC in threads costs more client CPU per request than grpc.aio, and both
far more than the HTTP lane below; PERF.md, "The client"), and processes would double the memory and
the set-up.

- gRPC: the stress workers' HTTP/2 client (workers/wire/grpc_client.py) with raw bytes: the request is a
  ModelInferRequest serialized once, the answer is checked once per lane (the first, validated),
  then only its status. For large inputs this is a multiple of the requests per second of
  tritonclient.grpc.aio, which rebuilds and copies the request every time.
- gRPC streaming: one ModelStreamInfer stream per lane, on the same client; an error comes in-band,
  so each answer's first byte says whether it carries an error message (only then is it parsed).
- HTTP: workers/wire/http_client.HttpConnection, prebuilt request bytes in, body into a reused buffer.

Each lane times its own work: `send` (until the request is handed to the transport) and `recv`
(from the answer's arrival, or the transport's return for gRPC, to the end of its handling: that
includes the wait for the event loop, which is client time, not network time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tritonclient.grpc import service_pb2

from workers.wire.grpc_client import GrpcError, GrpcStream, GrpcWireClient
from workers.wire.grpc_message import MODEL_INFER, MODEL_STREAM_INFER
from workers.wire.http_client import HttpConnection
from workers.wire.http_message import error_text

from .payload import mismatch
from .recorder import Recorder

_INFER_RESPONSE_TAG = 0x12  # ModelStreamInferResponse field 2 (infer_response), length-delimited
RECONNECT_PAUSE_S = 0.05  # after a failed reconnect, so a dead server does not make a lane spin
TIMED_OUT = "no answer within [perf] request_timeout"


class LaneCheckError(RuntimeError):
    """A lane's first, validated request failed: the point cannot be measured."""


class Lane:
    """Common state: what the watchdog needs to abort a request that takes too long."""

    def __init__(self, expected: bytes, read_shm_output: Callable[[], bytes] | None) -> None:
        self.expected = expected
        self.read_shm_output = read_shm_output  # the answer lives in shared memory, not in the reply
        self.since_ns = 0  # start of the request in flight; 0 when idle
        self._aborted = False

    async def open(self, timeout: float) -> None:
        raise NotImplementedError

    async def check(self, timeout: float) -> None:
        """Send one request and validate its answer; LaneCheckError says what was wrong."""
        raise NotImplementedError

    async def send(self, start_ns: int, recorder: Recorder) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Give up on the request in flight (the watchdog's call); it is recorded as an error."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _verify(self, got: bytes | memoryview | None) -> None:
        answer = self.read_shm_output() if self.read_shm_output is not None else got
        if answer is None:
            raise LaneCheckError("the answer carries no output tensor")
        problem = mismatch(answer, self.expected)
        if problem:
            raise LaneCheckError(f"wrong answer: {problem}")


class GrpcLane(Lane):
    """Unary ModelInfer over the stress workers' own HTTP/2 client (workers/wire/grpc_client.py), one
    connection per lane: the request bytes go out as they are, the answer comes back as bytes.
    grpc.aio cost about 1.4x perf_analyzer's client CPU per request here (tools/bench/
    vs_perf_analyzer.py); this client is the one the workers are measured with."""

    def __init__(self, target: str, body: bytes, expected: bytes, read_shm_output: Callable[[], bytes] | None) -> None:
        super().__init__(expected, read_shm_output)
        self._target, self._body = target, body
        self._wire: GrpcWireClient | None = None
        self._task: asyncio.Task | None = None  # the send in flight, for abort()

    async def open(self, timeout: float) -> None:
        self._wire = GrpcWireClient(self._target, connect_timeout=timeout)

    async def check(self, timeout: float) -> None:
        assert self._wire is not None
        try:
            reply = await self._wire.unary(MODEL_INFER, self._body, timeout)
        except GrpcError as exc:
            raise LaneCheckError(f"{exc.code}: {exc.message}") from None
        response = service_pb2.ModelInferResponse.FromString(reply)
        self._verify(response.raw_output_contents[0] if response.raw_output_contents else None)

    async def send(self, start_ns: int, recorder: Recorder) -> None:
        assert self._wire is not None
        self.since_ns = time.monotonic_ns()
        self._aborted = False
        self._task = asyncio.current_task()
        try:
            await self._wire.unary(MODEL_INFER, self._body)
        except GrpcError as exc:
            recorder.error(f"{exc.code}: {exc.message}")
            return
        except asyncio.CancelledError:
            if not self._aborted:
                raise
            recorder.error(TIMED_OUT)
            return
        finally:
            self.since_ns = 0
            self._task = None
        # The request is written inside the awaited call: its send is not told apart from the wait.
        recorder.ok(time.monotonic_ns() - start_ns, 0, 0)

    def abort(self) -> None:
        if self._task is not None and self.since_ns:
            self._aborted = True
            self._task.cancel()  # the wire resets the stream; the connection goes on

    async def close(self) -> None:
        if self._wire is not None:
            await self._wire.close()
            self._wire = None


class GrpcStreamLane(Lane):
    """One bidirectional ModelStreamInfer stream on the workers' HTTP/2 client; a request is
    written, its answer read. A stream that failed is dropped and the next request opens another."""

    def __init__(self, target: str, body: bytes, expected: bytes, read_shm_output: Callable[[], bytes] | None) -> None:
        super().__init__(expected, read_shm_output)
        self._target, self._body = target, body
        self._wire: GrpcWireClient | None = None
        self._stream: GrpcStream | None = None

    async def open(self, timeout: float) -> None:
        self._wire = GrpcWireClient(self._target, connect_timeout=timeout)
        try:
            self._stream = await asyncio.wait_for(self._wire.stream(MODEL_STREAM_INFER), timeout)
        except GrpcError as exc:  # no server there: the point fails with the reason, the sweep goes on
            raise LaneCheckError(f"{exc.code}: {exc.message}") from None

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    async def _exchange(self, stream: GrpcStream) -> bytes | memoryview:
        await stream.write(self._body)
        reply = await stream.read()
        if reply is None:
            raise GrpcError("UNAVAILABLE", "the server ended the stream")
        return reply

    async def check(self, timeout: float) -> None:
        assert self._stream is not None
        try:
            reply = await asyncio.wait_for(self._exchange(self._stream), timeout)
        except GrpcError as exc:
            raise LaneCheckError(f"{exc.code}: {exc.message}") from None
        except TimeoutError:
            raise LaneCheckError(TIMED_OUT) from None
        response = service_pb2.ModelStreamInferResponse.FromString(reply)
        if response.error_message:
            raise LaneCheckError(response.error_message)
        contents = response.infer_response.raw_output_contents
        self._verify(contents[0] if contents else None)

    async def send(self, start_ns: int, recorder: Recorder) -> None:
        assert self._wire is not None
        stream = self._stream
        if stream is None:
            try:
                stream = self._stream = await self._wire.stream(MODEL_STREAM_INFER)
            except GrpcError as exc:
                recorder.error(f"cannot open a stream: {exc.code}: {exc.message}")
                await asyncio.sleep(RECONNECT_PAUSE_S)
                return
        t0 = time.monotonic_ns()
        self.since_ns = t0
        self._aborted = False
        try:
            await stream.write(self._body)
            t1 = time.monotonic_ns()
            reply = await stream.read()
        except GrpcError as exc:
            recorder.error(TIMED_OUT if self._aborted else f"{exc.code}: {exc.message}")
            self._drop()
            return
        finally:
            self.since_ns = 0
        t2 = time.monotonic_ns()
        if reply is None:
            recorder.error("the server ended the stream")
            self._drop()
            return
        # An error answer carries field 1 (error_message), which Triton writes first; a good one
        # starts with field 2. Only the unusual case pays for parsing.
        if not reply or reply[0] != _INFER_RESPONSE_TAG:
            message = service_pb2.ModelStreamInferResponse.FromString(reply).error_message
            if message:
                recorder.error(message)
                return
        t3 = time.monotonic_ns()
        recorder.ok(t3 - start_ns, t1 - t0, t3 - t2)

    def abort(self) -> None:
        if self._stream is not None and self.since_ns:
            self._aborted = True
            self._stream.cancel()  # its read() fails now; send() opens a new stream next time

    async def close(self) -> None:
        self._drop()
        if self._wire is not None:
            await self._wire.close()
            self._wire = None


class HttpLane(Lane):
    def __init__(self, address: str, request: bytes, expected: bytes,
                 read_shm_output: Callable[[], bytes] | None) -> None:
        super().__init__(expected, read_shm_output)
        host, _, port = address.rpartition(":")
        self._host, self._port = host, int(port)
        self._request = request
        self._capacity = len(expected) + 4096  # the whole answer fits at once: no buffer growth
        self._connection: HttpConnection | None = None
        self._timeout = 10.0

    async def open(self, timeout: float) -> None:
        self._timeout = timeout
        self._connection = await HttpConnection.open(self._host, self._port, self._capacity, timeout)

    async def check(self, timeout: float) -> None:
        assert self._connection is not None
        try:
            status = await asyncio.wait_for(self._connection.request(self._request), timeout)
        except (TimeoutError, ConnectionError) as exc:
            raise LaneCheckError(str(exc) or TIMED_OUT) from None
        body = self._connection.body()
        if status != 200:
            raise LaneCheckError(f"HTTP {status}: {error_text(body)}")
        json_size = self._connection.json_size
        self._verify(body[json_size:] if json_size is not None else None)

    async def send(self, start_ns: int, recorder: Recorder) -> None:
        connection = self._connection
        if connection is None or connection.closed:
            try:
                connection = self._connection = await HttpConnection.open(
                    self._host, self._port, self._capacity, self._timeout)
            except (TimeoutError, OSError) as exc:
                recorder.error(f"cannot reconnect: {exc!r}")
                await asyncio.sleep(RECONNECT_PAUSE_S)
                return
        t0 = time.monotonic_ns()
        self.since_ns = t0
        try:
            answer = connection.request(self._request)  # written into the transport here
            t1 = time.monotonic_ns()
            status = await answer
        except ConnectionError as exc:
            recorder.error(str(exc))
            return
        finally:
            self.since_ns = 0
        t2 = time.monotonic_ns()
        if status != 200:
            recorder.error(f"HTTP {status}: {error_text(connection.body())}")
            return
        recorder.ok(t2 - start_ns, t1 - t0, t2 - connection.arrived_ns)

    def abort(self) -> None:
        if self._connection is not None and self.since_ns:
            self._connection.abort(TIMED_OUT)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
