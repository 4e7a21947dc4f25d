"""HTTP/2 frames and gRPC constants for the lean gRPC client (workers/wire/grpc_client.py): frame heads,
the request header block (HPACK literals our encoder writes without state), the grpc-timeout
header, and how HTTP/2 error codes and HTTP statuses map onto gRPC status codes (the gRPC spec,
doc/PROTOCOL-HTTP2.md and doc/http-grpc-status-mapping.md)."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20
SETTING_ENABLE_PUSH = 2
SETTING_MAX_CONCURRENT_STREAMS = 3
SETTING_INITIAL_WINDOW_SIZE = 4
SETTING_MAX_FRAME_SIZE = 5
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
OUR_MAX_FRAME = (1 << 24) - 1  # answers may come in frames as large as the server likes
LARGEST_STREAM_ID = (1 << 31) - 1

# HTTP/2 error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x6, 0x7, 0x8, 0x9, 0xB
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
               "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")

# gRPC status codes (grpc/status.h) and how HTTP/2 error codes map onto them (the gRPC spec).
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
RESET_STATUS = {0x0: "INTERNAL", 0x1: "INTERNAL", 0x2: "INTERNAL", 0x3: "INTERNAL", 0x4: "INTERNAL",
                0x5: "INTERNAL", 0x6: "INTERNAL", 0x7: "UNAVAILABLE", 0x8: "CANCELLED", 0x9: "INTERNAL",
                0xA: "INTERNAL", 0xB: "RESOURCE_EXHAUSTED", 0xC: "PERMISSION_DENIED"}
# An answer without grpc-status: its HTTP status says what happened (http-grpc-status-mapping.md).
HTTP_STATUS = {b"400": "INTERNAL", b"401": "UNAUTHENTICATED", b"403": "PERMISSION_DENIED", b"404": "UNIMPLEMENTED",
               b"429": "UNAVAILABLE", b"502": "UNAVAILABLE", b"503": "UNAVAILABLE", b"504": "UNAVAILABLE"}


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else f"error 0x{code:x}"


# -- frames -------------------------------------------------------------------------------------
HEAD = struct.Struct(">BHBBI")  # a frame's 9 bytes: length (high byte, low 16 bits), type, flags, stream


# A DATA frame's head and, right after it, the gRPC prefix of the one message it carries whole
# (uncompressed, its length): a unary request's are packed in one call, per request.
DATA_MESSAGE_HEAD = struct.Struct(">BHBBIBI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return head(len(payload), kind, flags, stream_id) + payload


def head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def goaway(code: int, debug: bytes = b"") -> bytes:
    """Our GOAWAY: the server opens no streams to us, so the last stream id is always 0."""
    return frame(GOAWAY, 0, 0, bytes(4) + code.to_bytes(4, "big") + debug)


def reset(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


# -- HPACK, encoding side: literal fields without indexing, so our encoder keeps no state ----------
def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: bytes) -> bytes:
    return _integer(len(text), 7, 0) + text


def _literal(name_index: int, value: bytes) -> bytes:
    return _integer(name_index, 4, 0x00) + _string(value)


def _literal_new(name: bytes, value: bytes) -> bytes:
    return b"\x00" + _string(name) + _string(value)


def request_headers(path: str, authority: str) -> bytes:
    """The header block of a gRPC call: :method POST (static 3), :scheme http (static 6), :path
    (name 4), :authority (name 1), content-type (name 31), te: trailers."""
    return (b"\x83\x86" + _literal(4, path.encode()) + _literal(1, authority.encode())
            + _literal(31, b"application/grpc") + _literal_new(b"te", b"trailers"))


def timeout_header(seconds: float) -> bytes:
    """grpc-timeout: at most 8 digits, in the finest unit that fits."""
    for unit, scale in (("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = max(1, int(seconds * scale + 0.999))
        if value < 100_000_000:
            return _literal_new(b"grpc-timeout", f"{value}{unit}".encode())
    return _literal_new(b"grpc-timeout", b"99999999H")
