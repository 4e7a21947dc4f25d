"""The HTTP/1.1 half of the client layer (workers/wire/http_client.py, http_message.py), against a fake
peer on a real loopback socket: every answer the parser must read, every way it must refuse one, and
the pool's rules (one request per connection at a time; a request given up on closes its connection,
so a late answer is never read as the next request's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, serialize_byte_tensor

from shm import Slot
from workers.wire.grpc_message import TensorRef
from workers.wire.http_client import HttpClient, HttpConnection
from workers.wire.http_message import error_text, http_request, http_result
from workers.worker import server_unreachable

pytestmark = pytest.mark.timeout(30)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HANG = b""  # a script's answer: say nothing (the client must give up on its own)
CLOSE = None  # a script's answer: close the connection without answering


def answer(status: int, body: bytes, json_size: int | None = None, extra: str = "") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}.get(status, "X")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
    if json_size is not None:
        head += f"Inference-Header-Content-Length: {json_size}\r\n"
    return (head + extra + "\r\n").encode() + body


class FakePeer:
    """A loopback HTTP/1.1 server whose answers come from `script(n, request)` (n counts requests
    over all connections): bytes to send (in pieces, as TCP may deliver them), HANG or CLOSE."""

    def __init__(self, script: Callable[[int, bytes], bytes | None]) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> FakePeer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.script(len(self.requests) - 1, request)
                if reply is CLOSE:
                    break
                for cut in (5, 40):
                    writer.write(reply[:cut])
                    await writer.drain()
                    reply = reply[cut:]
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(main: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(main(), 20))  # type: ignore[arg-type]


# -- one connection: the parser ------------------------------------------------------------------
def test_connection_reads_content_length_answers_in_pieces() -> None:
    body = b'{"a":1}' + bytes(range(256)) * 40
    answers = [answer(200, body, json_size=7), answer(400, b'{"error":1}')]

    async def main() -> None:
        async with FakePeer(lambda n, _: answers[n]) as peer:
            connection = await HttpConnection.open("127.0.0.1", peer.port, capacity=16)  # grows as needed
            assert await connection.request(REQUEST) == 200
            assert bytes(connection.body()) == body and connection.json_size == 7
            assert await connection.request(REQUEST) == 400
            assert bytes(connection.body()) == b'{"error":1}' and connection.json_size is None
            connection.close()

    run(main)


@pytest.mark.parametrize(("reply", "problem"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "chunked"),
    (b"SPDY/3 200 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "bad content-length header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n", "out of range"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc", "more bytes than its Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20_000, "no end of the response head"),
])
def test_connection_refuses_what_is_not_triton_http(reply: bytes, problem: str) -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: reply) as peer:
            connection = await HttpConnection.open("127.0.0.1", peer.port)
            with pytest.raises(ConnectionError, match=problem):
                await connection.request(REQUEST)
            assert connection.closed

    run(main)


def test_connection_close_header_ends_the_connection_after_the_answer() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: answer(200, b"{}", extra="Connection: close\r\n")) as peer:
            connection = await HttpConnection.open("127.0.0.1", peer.port)
            assert await connection.request(REQUEST) == 200
            await asyncio.sleep(0.05)
            assert connection.closed
            with pytest.raises(ConnectionError, match="closed"):
                connection.request(REQUEST)

    run(main)


def test_connection_lost_mid_answer_fails_the_request() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: CLOSE) as peer:
            connection = await HttpConnection.open("127.0.0.1", peer.port)
            with pytest.raises(ConnectionError, match="connection lost"):
                await connection.request(REQUEST)

    run(main)


# -- the pool ------------------------------------------------------------------------------------
def test_client_reuses_one_connection_for_requests_in_turn() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: answer(200, b'{"n":%d}' % n)) as peer:
            client = HttpClient(peer.url)
            for n in range(5):
                status, body, json_size = await client.send(REQUEST, timeout=5)
                assert (status, body, json_size) == (200, b'{"n":%d}' % n, None)
            assert peer.connections == 1
            client.close()

    run(main)


def test_client_opens_a_connection_per_request_in_flight_and_keeps_them() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, request: answer(200, request[-3:])) as peer:
            client = HttpClient(peer.url)
            requests = [REQUEST[:-4] + b"\r\nX: %d\r\n\r\n" % n for n in range(3)]
            bodies = await asyncio.gather(*(client.send(request, timeout=5) for request in requests))
            assert [body for _, body, _ in bodies] == [request[-3:] for request in requests]  # each its own answer
            assert peer.connections == 3
            await asyncio.gather(*(client.send(REQUEST, timeout=5) for _ in range(3)))
            assert peer.connections == 3  # the idle ones were taken again
            client.close()

    run(main)


def test_a_timed_out_request_closes_its_connection_so_its_late_answer_is_never_read() -> None:
    def script(n: int, _: bytes) -> bytes:
        return HANG if n == 0 else answer(200, b'{"n":%d}' % n)

    async def main() -> None:
        async with FakePeer(script) as peer:
            client = HttpClient(peer.url)
            with pytest.raises(TimeoutError):
                await client.send(REQUEST, timeout=0.2)
            status, body, _ = await client.send(REQUEST, timeout=5)
            assert (status, body) == (200, b'{"n":1}')
            assert peer.connections == 2  # a new connection: the first one still owes an answer
            client.close()

    run(main)


def test_a_cancelled_request_closes_its_connection() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: HANG if n == 0 else answer(200, b"{}")) as peer:
            client = HttpClient(peer.url)
            task = asyncio.ensure_future(client.send(REQUEST))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await client.send(REQUEST, timeout=5))[0] == 200
            assert peer.connections == 2
            client.close()

    run(main)


def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: answer(200, b"{}", extra="Connection: close\r\n")) as peer:
            client = HttpClient(peer.url)
            for _ in range(3):
                assert (await client.send(REQUEST, timeout=5))[0] == 200
                await asyncio.sleep(0.05)  # the server's close arrives
            assert peer.connections == 3
            client.close()

    run(main)


def test_the_server_dropping_a_request_fails_it_as_a_connection_error() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: CLOSE if n == 0 else answer(200, b"{}")) as peer:
            client = HttpClient(peer.url)
            with pytest.raises(ConnectionError):
                await client.send(REQUEST, timeout=5)
            assert (await client.send(REQUEST, timeout=5))[0] == 200
            client.close()

    run(main)


def test_an_unreachable_server_is_a_connection_error_the_worker_recognises() -> None:
    async def main() -> None:
        async with FakePeer(lambda n, _: HANG) as peer:
            port = peer.port
        with pytest.raises(ConnectionError) as raised:
            await HttpClient(f"http://127.0.0.1:{port}/").send(REQUEST, timeout=5)
        assert server_unreachable(str(raised.value)), raised.value

    run(main)


# -- the messages --------------------------------------------------------------------------------
def _parse(request: bytes) -> tuple[dict[str, str], dict, bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    json_size = int(headers.get("Inference-Header-Content-Length", len(body)))
    return {"start": lines[0], **headers}, orjson.loads(body[:json_size]), body[json_size:]


def test_request_carries_inline_tensors_shm_slots_and_sequence_flags() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    slot_in = Slot("in_region", 128, 24, datatype="FP32", shape=(2, 3))
    slot_out = Slot("out_region", 256, 24)
    request = http_request("h:1", "m", [TensorRef("A", array=values), TensorRef("B", slot=slot_in)],
                           [TensorRef("OUT", slot=slot_out), TensorRef("OUT2")],
                           sequence_id=7, sequence_start=True)
    head, header, binary = _parse(request)
    assert head["start"] == "POST /v2/models/m/infer HTTP/1.1" and head["Host"] == "h:1"
    assert "Accept-Encoding" not in head  # Triton must not spend CPU compressing the answer
    a, b = header["inputs"]
    assert (a["name"], a["datatype"], a["shape"], a["parameters"]["binary_data_size"]) == ("A", "FP32", [2, 3], 24)
    assert binary == values.tobytes()
    assert (b["name"], b["datatype"], b["shape"]) == ("B", "FP32", [2, 3])
    assert b["parameters"] == {"shared_memory_region": "in_region", "shared_memory_byte_size": 24,
                               "shared_memory_offset": 128}
    out, out2 = header["outputs"]
    assert out["parameters"] == {"shared_memory_region": "out_region", "shared_memory_byte_size": 24,
                                 "shared_memory_offset": 256, "binary_data": False}  # as tritonclient says it
    assert out2 == {"name": "OUT2", "parameters": {"binary_data": True}}
    assert header["parameters"] == {"sequence_id": 7, "sequence_start": True, "sequence_end": False}


def test_request_equals_what_tritonclient_http_would_send() -> None:
    words = np.array([b"ab", b"cde"], dtype=np.object_)
    request = http_request("h:1", "m", [TensorRef("W", array=words)], [TensorRef("OUT")])
    _, header, binary = _parse(request)
    tensor = httpclient.InferInput("W", [2], "BYTES")
    tensor.set_data_from_numpy(words, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=[httpclient.InferRequestedOutput("OUT", binary_data=True)])
    assert header == orjson.loads(body[:json_size]) and binary == body[json_size:]


@pytest.mark.parametrize("arrays", [
    [np.arange(16, dtype=np.float32).reshape(1, 16)],
    [np.random.default_rng(1).random((1, 300_000), dtype=np.float32)],  # sent as a view, no copy
    [np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)), np.ones((2,), np.uint8)],
    [np.array([b"ab", b"c"], dtype=np.object_)],  # BYTES: its header changes with its contents
], ids=["fp32", "large", "fortran order, two inputs", "bytes"])
def test_a_kept_json_header_gives_the_bytes_tritonclient_would_send(arrays: list[np.ndarray]) -> None:
    """Stateless inline requests keep their JSON header per model, names, types and shapes; each
    request still carries its own tensors, byte for byte what tritonclient's encoder makes."""
    for round_ in range(3):
        inputs = [TensorRef(f"IN{i}", array=array + round_ if array.dtype != np.object_ else array)
                  for i, array in enumerate(arrays)]
        outputs = [TensorRef("OUT")]
        tensors = []
        for ref in inputs:
            datatype = "BYTES" if ref.array.dtype == np.object_ else np_to_triton_dtype(ref.array.dtype)
            tensor = httpclient.InferInput(ref.name, list(ref.array.shape), datatype)
            tensor.set_data_from_numpy(ref.array, binary_data=True)
            tensors.append(tensor)
        body, json_size = httpclient.InferenceServerClient.generate_request_body(
            tensors, outputs=[httpclient.InferRequestedOutput("OUT", binary_data=True)])
        _, header, binary = _parse(http_request("h:1", "m", inputs, outputs))
        assert header == orjson.loads(body[:json_size]) and binary == body[json_size:]


def test_answers_read_as_tritonclient_reads_them() -> None:
    fp32 = np.random.default_rng(2).random((2, 3), dtype=np.float32)
    words = np.array([[b"xy", b""]], dtype=np.object_)
    raw_words = serialize_byte_tensor(words).item()
    outputs = [
        {"name": "A", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": fp32.nbytes}},
        {"name": "B", "datatype": "BYTES", "shape": [1, 2], "parameters": {"binary_data_size": len(raw_words)}},
        {"name": "EMPTY", "datatype": "INT32", "shape": [0], "parameters": {"binary_data_size": 0}},
        {"name": "JSON", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]},
        {"name": "SHM", "datatype": "FP32", "shape": [4], "parameters": {"shared_memory_region": "r",
                                                                         "shared_memory_byte_size": 16}},
    ]
    header = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": outputs})
    body = header + fp32.tobytes() + raw_words
    ours = http_result(200, body, len(header))
    theirs = httpclient.InferResult.from_response_body(body, header_length=len(header))
    for name in ("A", "B", "EMPTY", "JSON", "missing"):
        mine, reference = ours.as_numpy(name), theirs.as_numpy(name)
        if reference is None:
            assert mine is None
        else:
            assert mine.dtype == reference.dtype and mine.shape == reference.shape
            assert mine.tolist() == reference.tolist()
    for name in ("A", "SHM", "missing"):  # what ShmPool.read_output reads a shared-memory answer by
        assert ours.get_output(name) == theirs.get_output(name)
    assert ours.get_response() == theirs.get_response()
    assert ours.as_numpy("SHM") is None  # its bytes are in the region
    json_only = orjson.dumps({"outputs": [outputs[3]]})
    assert http_result(200, json_only, None).as_numpy("JSON").tolist() == [[1, 2], [3, 4]]

    with pytest.raises(InferenceServerException) as raised:
        http_result(400, b'{"error":"inference request for sequence 1 to model m must specify the START flag"}', None)
    assert str(raised.value) == "[400] inference request for sequence 1 to model m must specify the START flag"
    with pytest.raises(InferenceServerException, match=r"\[500\] <html>oops"):
        http_result(500, b"<html>oops</html>", None)
    with pytest.raises(InferenceServerException, match="empty response"):
        http_result(502, b"", None)
    assert error_text(b'{"error":"' + b"x" * 900 + b'"}') == "x" * 400  # kept short for an event
