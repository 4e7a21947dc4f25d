"""Inference requests as HTTP/1.1 bytes, and answers read back as tritonclient's InferResult reads them.

A request is built with tritonclient's own body encoder (the JSON header plus binary tensors: the
binary-data extension), so it says exactly what tritonclient.http would send; the head around it is
the few lines Triton needs (keep-alive is HTTP/1.1's default; no Accept-Encoding, so Triton never
spends CPU compressing an answer that the client would then inflate). Built bytes are sent as they are by
http_client.HttpConnection: a perf lane builds its request once, a worker once per request.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import orjson
import tritonclient.http as httpclient
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    triton_to_np_dtype,
)

from .grpc_message import TensorRef, raw_bytes


def _input(ref: TensorRef) -> httpclient.InferInput:
    if ref.slot is not None:
        tensor = httpclient.InferInput(ref.name, list(ref.slot.shape), ref.slot.datatype)
        tensor.set_shared_memory(ref.slot.region, ref.slot.byte_size, offset=ref.slot.offset)
        return tensor
    array = ref.array
    assert array is not None, f"input {ref.name} has neither data nor a slot"
    datatype = "BYTES" if array.dtype.kind in "OSU" else np_to_triton_dtype(array.dtype)
    tensor = httpclient.InferInput(ref.name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def _output(ref: TensorRef) -> httpclient.InferRequestedOutput:
    output = httpclient.InferRequestedOutput(ref.name, binary_data=True)  # inline answers as raw bytes
    if ref.slot is not None:
        output.set_shared_memory(ref.slot.region, ref.slot.byte_size, offset=ref.slot.offset)
    return output


HEADER_CACHE_SIZE = 4096  # JSON headers kept (identity: 64 shapes per model)
_json_headers: dict[tuple, bytes] = {}


def http_request(host: str, model: str, inputs: list[TensorRef], outputs: list[TensorRef], *,
                 sequence_id: int | str = 0, sequence_start: bool = False, sequence_end: bool = False) -> bytes:
    """A complete HTTP/1.1 keep-alive inference request for `model`: head and body.

    A stateless request whose inputs are all inline numbers is described, in its JSON header, by
    its model, names, types and shapes alone: that header is made once and kept, and each request
    only appends its tensors' bytes (tritonclient's encoder and json.dumps saved per request)."""
    if not sequence_id and all(ref.slot is None and ref.array is not None and ref.array.dtype.kind in "biuf"
                               for ref in inputs) and all(ref.slot is None for ref in outputs):
        key = (model, *[(ref.name, ref.array.dtype, ref.array.shape) for ref in inputs],  # type: ignore[union-attr]
               *[ref.name for ref in outputs])
        header = _json_headers.get(key)
        if header is None:
            body, json_size = _body(inputs, outputs, 0, False, False)
            header = body[:json_size]
            if len(_json_headers) >= HEADER_CACHE_SIZE:
                _json_headers.clear()  # a workload of ever new shapes: start over rather than grow
            _json_headers[key] = header
        raws = [raw_bytes(ref.array) for ref in inputs]  # type: ignore[arg-type]
        return _framed(host, model, b"".join([header, *raws]), len(header))
    body, json_size = _body(inputs, outputs, sequence_id, sequence_start, sequence_end)
    return _framed(host, model, body, json_size)


def _body(inputs: list[TensorRef], outputs: list[TensorRef], sequence_id: int | str, sequence_start: bool,
          sequence_end: bool) -> tuple[bytes, int | None]:
    return httpclient.InferenceServerClient.generate_request_body(
        [_input(ref) for ref in inputs], outputs=[_output(ref) for ref in outputs],
        sequence_id=sequence_id, sequence_start=sequence_start, sequence_end=sequence_end)


def _framed(host: str, model: str, body: bytes, json_size: int | None) -> bytes:
    head = [f"POST /v2/models/{model}/infer HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    if json_size is None:  # every tensor in shared memory: the body is JSON alone
        head.append("Content-Type: application/json")
    else:
        head += ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {json_size}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def http_get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


class HttpResult:
    """An answer read as tritonclient.http's InferResult reads it (as_numpy, get_output,
    get_response: the same arrays, the same dicts) at a fraction of its cost: orjson for the JSON
    header, each binary output found by adding up the sizes before it."""

    __slots__ = ("_response", "_body", "_start")

    def __init__(self, body: bytes, json_size: int | None) -> None:
        self._body = body
        self._start = len(body) if json_size is None else json_size  # where the binary outputs begin
        self._response: dict[str, Any] = orjson.loads(body[:self._start])

    def get_response(self) -> dict[str, Any]:
        return self._response

    def get_output(self, name: str) -> dict[str, Any] | None:
        for output in self._response.get("outputs") or ():
            if output["name"] == name:
                return output
        return None

    def as_numpy(self, name: str) -> np.ndarray | None:
        offset = self._start
        for output in self._response.get("outputs") or ():
            size = (output.get("parameters") or {}).get("binary_data_size")
            if output["name"] != name:
                offset += size or 0
                continue
            datatype, shape = output["datatype"], output["shape"]
            if size is not None:
                if datatype == "BYTES":
                    raw = self._body[offset:offset + size]
                    array = deserialize_bytes_tensor(raw) if size else np.empty(0, np.object_)
                else:  # a view of the body: a large answer is not copied again
                    view = memoryview(self._body)[offset:offset + size]
                    array = np.frombuffer(view, dtype=triton_to_np_dtype(datatype))
            elif "data" in output:
                array = np.array(output["data"], dtype=triton_to_np_dtype(datatype))
            else:
                return None  # in a shared-memory region: read it there (ShmPool.read_output)
            return array.reshape(shape)
        return None


def http_result(status: int, body: bytes, json_size: int | None) -> HttpResult:
    """The answer (HttpResult); an error status raises the InferenceServerException
    tritonclient.http would raise (the server's "error" text, the status)."""
    if status != 200:
        raise InferenceServerException(msg=error_text(body, limit=None), status=str(status))
    return HttpResult(body, json_size)


def error_text(body: bytes | memoryview, limit: int | None = 400) -> str:
    """The "error" field of Triton's JSON error body (its first `limit` characters); the raw text
    when it is not Triton's JSON."""
    if not len(body):
        return "client received an empty response from the server."
    text = bytes(body if limit is None else body[:5 * limit]).decode(errors="replace")
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):  # not Triton's JSON: the raw text says it
        text = str(orjson.loads(text).get("error", text))
    return text if limit is None else text[:limit]
