"""The optional Prometheus endpoint, scraped over real HTTP and read back twice: with a strict
parser of the text exposition format 0.0.4 written here from the spec (it rejects what the spec
forbids, where prometheus_client's parser is lenient), and with prometheus_client's own parsers,
as a scraper reads it."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from engine.aggregator.prometheus import PrometheusEndpoint
from engine.aggregator.service import RECENT_WINDOWS, _gauges
from engine.live_status import LiveStatus

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# Go float syntax as Prometheus writes it: the special values are spelt NaN, +Inf, -Inf.
_VALUE = re.compile(r"^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf)|NaN)$")
_LABEL_VALUE_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPES = {"\\": "\\", "n": "\n"}

SCRAPERS = 4  # concurrent scrapes: beyond the server's listen backlog (5) a connect waits out a 1 s SYN retry
Sample = tuple[str, tuple[tuple[str, str], ...]]


def _unescape(text: str, escapes: dict[str, str]) -> str:
    out, chars = [], iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            if following not in escapes:
                raise ValueError(f"invalid escape \\{following} in {text!r}")
            char = escapes[following]
        out.append(char)
    return "".join(out)


def _labels(text: str) -> Iterator[tuple[str, str]]:
    """`name="value",...` with the value escapes of the spec; raises on anything else."""
    position = 0
    while position < len(text):
        match = re.compile(rf'({_NAME})="((?:[^"\\\n]|\\.)*)"(,|$)').match(text, position)
        if not match:
            raise ValueError(f"bad label set {text!r} at {position}")
        yield match[1], _unescape(match[2], _LABEL_VALUE_ESCAPES)
        position = match.end()


def parse(text: str) -> tuple[dict[str, str], dict[str, str], dict[Sample, float]]:
    """(help by metric, type by metric, value by (metric, labels)); raises on what the spec forbids."""
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[Sample, float] = {}
    assert text.endswith("\n"), "the exposition ends with a line feed"
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in helps, f"second HELP for {name}"
            helps[name] = _unescape(help_text, _HELP_ESCAPES)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name not in types and kind in ("counter", "gauge", "histogram", "summary", "untyped")
            assert not any(key[0] == name for key in samples), f"TYPE of {name} after its samples"
            types[name] = kind
        elif line.startswith("#") or not line.strip():
            continue
        else:
            match = re.fullmatch(rf"({_NAME})(?:\{{(.*)\}})? (\S+)(?: -?\d+)?", line)
            assert match, f"bad sample line {line!r}"
            assert _VALUE.match(match[3]), f"bad value {match[3]!r} in {line!r}"
            key = (match[1], tuple(sorted(_labels(match[2] or ""))))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = float(match[3])
    return helps, types, samples


def _scrape(endpoint: PrometheusEndpoint, path: str = "/metrics", accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{endpoint.port}{path}",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.read().decode("utf-8"), answer.headers["Content-Type"]


def _families(text: str, read=text_string_to_metric_families) -> dict[str, tuple[str, str, dict[Sample, float]]]:
    """name -> (help, type, value by (sample name, sorted labels)), as prometheus_client reads the page."""
    return {family.name: (family.documentation, family.type,
                          {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples})
            for family in read(text)}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[PrometheusEndpoint]:
    """One endpoint for the tests that set their own figures first (closing one waits out the
    server's 0.5 s poll interval)."""
    served = PrometheusEndpoint(0)
    try:
        yield served
    finally:
        served.close()


def test_a_scrape_returns_the_figures_set(endpoint: PrometheusEndpoint) -> None:
    assert endpoint.port > 0  # the port the system chose for 0
    endpoint.update({
        "engine_requests_total": ("request records received", {(): 1234.0}),
        "engine_window_p99_ms": ("worst p99 of the last windows, ms", {
            (("model", "identity"), ("protocol", "grpc")): 1.5,
            (("model", "slow"), ("protocol", "http")): 250.25,
        }),
        "engine_big": ("a large figure", {(): 1e20}),
    })
    text, content_type = _scrape(endpoint)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    helps, types, samples = parse(text)
    assert samples == {
        ("engine_requests_total", ()): 1234.0,
        ("engine_window_p99_ms", (("model", "identity"), ("protocol", "grpc"))): 1.5,
        ("engine_window_p99_ms", (("model", "slow"), ("protocol", "http"))): 250.25,
        ("engine_big", ()): 1e20,
    }
    assert types == dict.fromkeys(("engine_requests_total", "engine_window_p99_ms", "engine_big"), "gauge")
    assert helps["engine_window_p99_ms"] == "worst p99 of the last windows, ms"


def test_nothing_is_served_before_the_first_update() -> None:
    fresh = PrometheusEndpoint(0)
    try:
        assert parse(_scrape(fresh)[0] or "\n")[2] == {}
    finally:
        fresh.close()


def test_an_update_replaces_the_figures(endpoint: PrometheusEndpoint) -> None:
    endpoint.update({"engine_a": ("a", {(): 1.0}), "engine_b": ("b", {(): 2.0})})
    endpoint.update({"engine_a": ("a", {(): 3.0})})
    assert parse(_scrape(endpoint)[0])[2] == {("engine_a", ()): 3.0}


def test_label_values_are_escaped(endpoint: PrometheusEndpoint) -> None:
    awkward = ['back\\slash', 'a "quoted" name', "two\nlines", "braces} and, commas=", "ünïcode ✓", ""]
    endpoint.update({"engine_x": ("x", {(("model", value),): float(i) for i, value in enumerate(awkward)})})
    text = _scrape(endpoint)[0]
    assert 'model="back\\\\slash"' in text and 'model="a \\"quoted\\" name"' in text
    assert 'model="two\\nlines"' in text  # a raw line feed would split the sample line
    samples = parse(text)[2]
    assert samples == {("engine_x", (("model", value),)): float(i) for i, value in enumerate(awkward)}


def test_special_values_and_help_escapes_follow_the_spec(endpoint: PrometheusEndpoint) -> None:
    endpoint.update({"engine_odd": ("ratio of C:\\x to y", {(("k", "nan"),): float("nan"),
                                                              (("k", "inf"),): float("inf"),
                                                              (("k", "-inf"),): float("-inf")})})
    text = _scrape(endpoint)[0]
    helps, _, samples = parse(text)
    assert helps["engine_odd"] == "ratio of C:\\x to y"
    assert samples[("engine_odd", (("k", "inf"),))] == float("inf")
    assert samples[("engine_odd", (("k", "-inf"),))] == float("-inf")


def test_scrapes_while_updates_go_on_always_parse(endpoint: PrometheusEndpoint) -> None:
    stop = threading.Event()

    def update() -> None:
        i = 0
        while not stop.is_set():
            endpoint.update({f"engine_m{k}": ("m", {(("i", str(k)),): float(i)}) for k in range(50)})
            i += 1
            time.sleep(0.0005)  # let the scrapers have the GIL between updates

    updater = threading.Thread(target=update)
    endpoint.update({"engine_m0": ("m", {(("i", "0"),): 0.0})})
    updater.start()
    try:
        results: list[object] = []
        scrapers = [threading.Thread(target=lambda: results.append(parse(_scrape(endpoint)[0])))
                    for _ in range(SCRAPERS)]
        for thread in scrapers:
            thread.start()
        for thread in scrapers:
            thread.join(10)
    finally:
        stop.set()
        updater.join(10)
    assert len(results) == SCRAPERS  # every scrape answered and parsed: one whole page each, never a torn one


def test_an_unknown_path_is_not_found(endpoint: PrometheusEndpoint) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        _scrape(endpoint, "/other")
    assert raised.value.code == 404


def _outside_address() -> str | None:
    """This host's address on its outward interface (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_it_listens_on_loopback_only(endpoint: PrometheusEndpoint) -> None:
    assert endpoint._server.server_address[0] == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5):
        pass
    outside = _outside_address()
    if outside is None:
        pytest.skip("this host has no non-loopback IPv4 address to try")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((outside, endpoint.port), timeout=5).close()


def test_close_releases_the_port() -> None:
    served = PrometheusEndpoint(0)
    port = served.port
    served.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    again = PrometheusEndpoint(port)  # the same port binds again at once
    try:
        again.update({"engine_a": ("a", {(): 1.0})})
        assert parse(_scrape(again)[0])[2] == {("engine_a", ()): 1.0}
    finally:
        again.close()


# What the aggregator exposes: every name, help text and value of its figures (service._gauges).
STATUS = LiveStatus(requests=1234, rate=56.5, p99_ms=12.25, p99_recent_ms=30.0, errors=3, wrong=1,
                    verdicts=["LEAK of server rss", "STALL of m"], lost_messages=2)
EXPOSED = {
    "engine_requests_total": ("request records received", 1234.0),
    "engine_request_rate": ("requests per second over the last 10 s", 56.5),
    "engine_window_p99_ms": ("worst p99 of the last closed windows, ms", 12.25),
    "engine_recent_p99_ms": (f"worst p99 of the last {RECENT_WINDOWS} windows, ms", 30.0),
    "engine_failed_requests_total": ("failed requests and missing expected errors", 3.0),
    "engine_wrong_answers_total": ("answers that failed validation", 1.0),
    "engine_verdicts": ("verdicts raised", 2.0),
    "engine_telemetry_lost_messages": ("telemetry messages lost", 2.0),
}


def test_the_aggregators_figures_read_back_through_prometheus_client(endpoint: PrometheusEndpoint) -> None:
    endpoint.update(_gauges(STATUS))
    text, content_type = _scrape(endpoint)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert _families(text) == {name: (help_text, "gauge", {(name, ()): value})
                               for name, (help_text, value) in EXPOSED.items()}
    assert parse(text)[2] == {(name, ()): value for name, (_, value) in EXPOSED.items()}  # and by the spec


def test_labels_and_special_values_read_back_through_prometheus_client(endpoint: PrometheusEndpoint) -> None:
    awkward = ['back\\slash', 'a "quoted" name', "two\nlines", "ünïcode ✓", ""]
    endpoint.update({"engine_x": ("x of C:\\y\nper model", {(("model", v), ("protocol", "grpc")): float(i)
                                                              for i, v in enumerate(awkward)}),
                     "engine_odd": ("odd", {(("k", "inf"),): float("inf"), (("k", "-inf"),): float("-inf")})})
    families = _families(_scrape(endpoint)[0])
    assert families["engine_x"][:2] == ("x of C:\\y\nper model", "gauge")
    assert families["engine_x"][2] == {("engine_x", (("model", v), ("protocol", "grpc"))): float(i)
                                       for i, v in enumerate(awkward)}
    assert families["engine_odd"][2] == {("engine_odd", (("k", "inf"),)): float("inf"),
                                         ("engine_odd", (("k", "-inf"),)): float("-inf")}


def test_a_scraper_that_asks_for_openmetrics_gets_it(endpoint: PrometheusEndpoint) -> None:
    endpoint.update(_gauges(STATUS))
    text, content_type = _scrape(endpoint, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    assert {name: (family[0], family[2]) for name, family in _families(text, openmetrics_families).items()} == {
        name: (help_text, {(name, ()): value}) for name, (help_text, value) in EXPOSED.items()}


def test_two_endpoints_in_one_process_serve_their_own_figures(endpoint: PrometheusEndpoint) -> None:
    endpoint.update({"engine_requests_total": ("request records received", {(): 1.0})})
    other = PrometheusEndpoint(0)  # the same names in a second registry: no clash, no sharing
    try:
        other.update({"engine_requests_total": ("request records received", {(): 2.0})})
        assert parse(_scrape(endpoint)[0])[2] == {("engine_requests_total", ()): 1.0}
        assert parse(_scrape(other)[0])[2] == {("engine_requests_total", ()): 2.0}
    finally:
        other.close()


def test_the_samples_of_one_figure_may_carry_different_labels(endpoint: PrometheusEndpoint) -> None:
    endpoint.update({"engine_b": ("b", {(): 0.5, (("model", "m"),): 1.0, (("target", "t"), ("model", "m")): 2.0})})
    assert _families(_scrape(endpoint)[0])["engine_b"][2] == {
        ("engine_b", ()): 0.5, ("engine_b", (("model", "m"),)): 1.0,
        ("engine_b", (("model", "m"), ("target", "t"))): 2.0}
