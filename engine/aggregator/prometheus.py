"""The aggregator's live figures in Prometheus text format (0.0.4), off by default; it binds
127.0.0.1 unless told otherwise (DESIGN: anything listening beyond loopback is opt-in)."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# name -> (help text, {label tuple ((key, value), ...) -> value})
Gauges = Mapping[str, tuple[str, Mapping[tuple[tuple[str, str], ...], float]]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    """The spec spells the special values NaN, +Inf, -Inf (repr gives nan, inf)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(gauges: Gauges) -> str:
    lines = []
    for name, (help_text, samples) in sorted(gauges.items()):
        lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples.items():
            label_text = ",".join(f'{key}="{_escape(str(v))}"' for key, v in labels)
            lines.append(f"{name}{{{label_text}}} {_value(value)}" if label_text else f"{name} {_value(value)}")
    return "\n".join(lines) + "\n"


class PrometheusEndpoint:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._text = b""
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name is http.server's interface
                with endpoint._lock:
                    body = endpoint._text
                self.send_response(200 if self.path.startswith("/metrics") else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # the aggregator never prints
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="prometheus", daemon=True).start()

    def update(self, gauges: Gauges) -> None:
        text = render(gauges).encode()
        with self._lock:
            self._text = text

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
