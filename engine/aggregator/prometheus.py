"""The aggregator's live figures as a Prometheus endpoint, off by default.

prometheus_client writes the exposition (text format 0.0.4, or OpenMetrics to a scraper that asks
for it: escaping, special values and content negotiation are its job) and serves it; the engine
only says which figures there are. The endpoint binds 127.0.0.1 unless told otherwise: the engine
binds its sockets to loopback or IPC by default, and listening beyond the host is opt-in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

# name -> (help text, {label tuple ((key, value), ...) -> value})
Gauges = Mapping[str, tuple[str, Mapping[tuple[tuple[str, str], ...], float]]]
# The same, frozen: (name, help text, ((labels, value), ...)) by name.
_Figures = tuple[tuple[str, str, tuple[tuple[tuple[tuple[str, str], ...], float], ...]], ...]

METRICS_PATH = "/metrics"


class LiveFigures(Collector):
    """The figures of the aggregator's last status, as gauges, built on each scrape.

    The aggregator's state belongs to its own loop, so a scrape (in the server's thread) never
    reads it: `set` hands over a frozen copy after each status, and a scrape reads whichever copy
    is current, whole (one reference, swapped at once), never half of one and half of the next."""

    def __init__(self) -> None:
        self._figures: _Figures = ()

    def set(self, gauges: Gauges) -> None:
        self._figures = tuple((name, help_text, tuple(samples.items()))
                              for name, (help_text, samples) in sorted(gauges.items()))

    def collect(self) -> Iterator[Metric]:
        for name, help_text, samples in self._figures:
            family = GaugeMetricFamily(name, help_text)
            # Each sample with its own labels, as given (GaugeMetricFamily.add_metric would want one
            # set of label names for the whole family).
            family.samples.extend(Sample(name, {key: str(label) for key, label in labels}, float(value))
                                  for labels, value in samples)
            yield family


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per scrape, as prometheus_client's start_http_server serves."""

    daemon_threads = True  # a scrape under way never holds the process up at its exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:  # the name is http.server's interface
        return  # the aggregator never prints


def _metrics_only(app: WSGIApplication) -> WSGIApplication:
    """`app` at /metrics, 404 elsewhere (prometheus_client's own app answers any path)."""
    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(METRICS_PATH):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: the figures are at /metrics\n"]

    return serve


class PrometheusEndpoint:
    """An HTTP server on `host`:`port` (0: the system picks; `port` says which) that serves the
    figures last given to `update`. A registry of its own, never prometheus_client's global one,
    so that two endpoints in one process each serve their own figures."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._figures = LiveFigures()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._figures)
        self._server = make_server(host, port, _metrics_only(make_wsgi_app(self.registry)), _Server,
                                   handler_class=_Quiet)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="prometheus", daemon=True)
        self._thread.start()

    def update(self, gauges: Gauges) -> None:
        self._figures.set(gauges)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
