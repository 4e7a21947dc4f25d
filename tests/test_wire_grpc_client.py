"""The lean gRPC client against the real server: answers byte for byte, calls multiplexed on one
connection, tensors larger than every flow-control window, the server's errors in tritonclient's
words, deadlines, cancellation, and a server that goes away and comes back."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

from model_repo_gen import RepoOptions, generate_repository
from tests.server_helpers import serve_repository, successes
from workers.wire.grpc_client import GrpcError, GrpcWireClient
from workers.wire.grpc_message import MODEL_INFER, TensorRef, infer_request, infer_result

pytestmark = pytest.mark.timeout(180)

OPTIONS = RepoOptions(models=("identity_fp32", "identity_bytes", "zero_fp32", "sequence_int32"), instance_count=2,
                      zero_delay_ms=500)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("wire")
    generate_repository(root / "repo", OPTIONS)
    with serve_repository(root / "repo", root / "work") as running:
        yield running


def _identity(array: np.ndarray, model: str = "identity_fp32") -> bytes:
    return infer_request(model, [TensorRef("INPUT0", array=array)], [TensorRef("OUTPUT0")])


async def _echo(client: GrpcWireClient, array: np.ndarray, model: str = "identity_fp32") -> np.ndarray:
    return infer_result(await client.unary(MODEL_INFER, _identity(array, model))).as_numpy("OUTPUT0")


def test_many_calls_share_one_connection_and_every_answer_is_its_own(server) -> None:
    async def main() -> tuple[list[bool], int]:
        client = GrpcWireClient(server.grpc_url)
        arrays = [np.random.default_rng(i).standard_normal((1, 1 + i % 64)).astype(np.float32) for i in range(400)]
        try:
            answers = await asyncio.gather(*(_echo(client, a) for a in arrays))
            connections = 1 if client._connection is not None else 0
        finally:
            await client.close()
        return [np.array_equal(a, b) for a, b in zip(arrays, answers)], connections

    before = successes(server.metrics_url)
    same, connections = asyncio.run(main())
    assert all(same) and len(same) == 400
    assert connections == 1
    assert successes(server.metrics_url) - before == 400


def test_bytes_tensors_round_trip(server) -> None:
    values = np.array([b"", b"a", "long élément".encode(), bytes(range(256))], dtype=np.object_).reshape(1, 4)

    async def main() -> np.ndarray:
        client = GrpcWireClient(server.grpc_url)
        try:
            return await _echo(client, values, "identity_bytes")
        finally:
            await client.close()

    answer = asyncio.run(main())
    assert [bytes(v) for v in answer.reshape(-1)] == [bytes(v) for v in values.reshape(-1)]


def test_tensors_larger_than_the_windows_go_both_ways_while_small_calls_go_on(server) -> None:
    # 24 MiB each way: far past the default 64 KiB stream window and 16 KiB frames.
    big = np.random.default_rng(5).standard_normal((1, 6 << 20)).astype(np.float32)

    async def main() -> tuple[bool, list[bool]]:
        client = GrpcWireClient(server.grpc_url)
        small = [np.full((1, 8), i, np.float32) for i in range(50)]
        try:
            large, *rest = await asyncio.gather(_echo(client, big), *(_echo(client, s) for s in small))
        finally:
            await client.close()
        return np.array_equal(large, big), [np.array_equal(a, b) for a, b in zip(rest, small)]

    large_ok, small_ok = asyncio.run(main())
    assert large_ok
    assert all(small_ok)


def test_server_errors_read_as_tritonclient_says_them(server) -> None:
    async def main() -> list[str]:
        client = GrpcWireClient(server.grpc_url)
        texts = []
        try:
            for message in (_identity(np.ones((1, 4), np.float32), "no_such_model"),
                            infer_request("sequence_int32", [TensorRef("INPUT", array=np.ones((1, 1), np.int32))],
                                          [TensorRef("OUTPUT")], sequence_id=987_654, sequence_start=False)):
                with pytest.raises(GrpcError) as caught:
                    await client.unary(MODEL_INFER, message)
                texts.append(str(caught.value))
            # the connection is still good after errors
            assert np.array_equal(await _echo(client, np.ones((1, 3), np.float32)), np.ones((1, 3), np.float32))
        finally:
            await client.close()
        return texts

    missing, no_start = asyncio.run(main())
    assert missing.startswith("[StatusCode.") and "no_such_model" in missing
    assert "must specify the START flag" in no_start


def test_a_deadline_fails_the_call_and_the_connection_goes_on(server) -> None:
    async def main() -> tuple[str, float, bool]:
        client = GrpcWireClient(server.grpc_url)
        message = infer_request("zero_fp32", [TensorRef("INPUT0", array=np.ones(16, np.float32))],
                                [TensorRef("OUTPUT0")])
        loop = asyncio.get_running_loop()
        try:
            began = loop.time()
            with pytest.raises(GrpcError) as caught:
                await client.unary(MODEL_INFER, message, timeout=0.1)
            took = loop.time() - began
            ok = np.array_equal(await _echo(client, np.ones((1, 2), np.float32)), np.ones((1, 2), np.float32))
        finally:
            await client.close()
        return str(caught.value), took, ok

    text, took, ok = asyncio.run(main())
    assert "Deadline Exceeded" in text and "DEADLINE_EXCEEDED" in text
    assert took < 0.45  # the model takes 500 ms: the client gave up on its own deadline
    assert ok


def test_a_cancelled_call_resets_its_stream_only(server) -> None:
    async def main() -> tuple[bool, int]:
        client = GrpcWireClient(server.grpc_url)
        message = infer_request("zero_fp32", [TensorRef("INPUT0", array=np.ones(16, np.float32))],
                                [TensorRef("OUTPUT0")])
        try:
            slow = asyncio.create_task(client.unary(MODEL_INFER, message))
            await asyncio.sleep(0.1)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            ok = np.array_equal(await _echo(client, np.ones((1, 5), np.float32)), np.ones((1, 5), np.float32))
            open_calls = len(client._connection.calls)
        finally:
            await client.close()
        return ok, open_calls

    ok, open_calls = asyncio.run(main())
    assert ok and open_calls == 0


def test_nothing_listening_is_unavailable_in_grpc_words() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and closed again before the call

    async def main() -> str:
        client = GrpcWireClient(f"127.0.0.1:{port}", connect_timeout=2.0)
        with pytest.raises(GrpcError) as caught:
            await client.unary(MODEL_INFER, _identity(np.ones((1, 1), np.float32)))
        await client.close()
        return str(caught.value)

    assert asyncio.run(main()).startswith("[StatusCode.UNAVAILABLE]")


def test_a_server_that_goes_away_and_comes_back_is_reached_again(tmp_path: Path) -> None:
    generate_repository(tmp_path / "repo", RepoOptions(models=("identity_fp32",)))
    ones = np.ones((1, 4), np.float32)

    async def call(client: GrpcWireClient) -> bool:
        return np.array_equal(await _echo(client, ones), ones)

    async def main() -> tuple[bool, str, bool]:
        client = GrpcWireClient("127.0.0.1:1")
        with serve_repository(tmp_path / "repo", tmp_path / "work") as running:
            client = GrpcWireClient(running.grpc_url)
            first = await call(client)
            running.server.restart()
            try:
                await call(client)  # the old connection: lost or refused, said as UNAVAILABLE
                lost = "answered"
            except GrpcError as exc:
                lost = exc.code
            again = await call(client)  # a new connection to the restarted server
        await client.close()
        return first, lost, again

    first, lost, again = asyncio.run(main())
    assert first and again
    assert lost in ("UNAVAILABLE", "answered")
