"""The engine's one client layer: what the stress workers and `engine perf` both send requests with.

- grpc_frames, grpc_client: a lean HTTP/2 gRPC client for unary calls and bidirectional streams
  (GrpcWireClient, GrpcStream: sequences over gRPC streaming, decoupled models, perf's stream lanes);
- grpc_message: ModelInferRequest bytes built in place (TensorRef in), answers read as WireResult;
- http_client: an HTTP/1.1 keep-alive connection that sends prebuilt bytes (HttpConnection);
- http_message: inference requests as HTTP/1.1 bytes (a stateless one's JSON header made once per
  shape), answers read as HttpResult (what tritonclient's InferResult gives, a tenth of its cost).

Why hand-written clients rather than grpc.aio, aiohttp or tritonclient's own: on a host that shares
its CPU with the server, every client microsecond per request is taken from what is measured
(BENCHMARKS.md, tools/bench/client_cost.py and vs_perf_analyzer.py have the figures).
"""

from .grpc_client import GrpcError, GrpcStream, GrpcWireClient
from .grpc_message import (
    MODEL_INFER,
    MODEL_STREAM_INFER,
    TensorRef,
    WireResult,
    infer_request,
    infer_result,
    stream_result,
)
from .http_client import HttpClient, HttpConnection, HttpProtocolError
from .http_message import HttpResult, error_text, http_get, http_request, http_result

__all__ = [
    "MODEL_INFER", "MODEL_STREAM_INFER", "GrpcError", "GrpcStream", "GrpcWireClient", "HttpClient",
    "HttpConnection", "HttpProtocolError", "HttpResult", "TensorRef", "WireResult", "error_text", "http_get",
    "http_request", "http_result", "infer_request", "infer_result", "stream_result",
]
