"""Triton's own figures: the Prometheus metrics endpoint and the statistics extension, per model.

A metric the server does not export is absent, never 0 (DETECTION.md: a missing signal is "not
measured", not "OK"). An unreachable endpoint gives an empty result and the reason, not an
exception: the monitor goes on sampling /proc."""

from __future__ import annotations

import re
import urllib.request

import orjson

from ..series_names import PENDING, PINNED_USED_BYTES, gpu_series, model_series, truth_series

TIMEOUT_S = 2.0
# Triton metric -> the short name of its series (model/<model>/<short>).
MODEL_METRICS = {
    "nv_inference_request_success": "success",
    "nv_inference_request_failure": "failure",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_pending_request_count": PENDING,
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
TRUTH_PREFIX = "engine_model_"  # ground truth published by the generated faulty models (tests read it)
_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.read()


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, value = match["name"], float(match["value"])
        labels = dict(_LABEL.findall(match["labels"] or ""))
        short = MODEL_METRICS.get(name)
        if short and "model" in labels:
            key = model_series(labels["model"], short)
            out[key] = out.get(key, 0.0) + value  # failures: summed over reasons
        elif name.startswith(TRUTH_PREFIX) and "instance" in labels:
            out[truth_series(labels["instance"], name)] = value
        elif name == "nv_pinned_memory_pool_used_bytes":
            out[PINNED_USED_BYTES] = value
        elif name == "nv_gpu_memory_used_bytes":
            out[gpu_series(labels.get("gpu_uuid", "0"))] = value
    return out


def fetch_metrics(url: str) -> tuple[dict[str, float], str]:
    try:
        return parse_metrics(_get(url).decode(errors="replace")), ""
    except Exception as exc:  # noqa: BLE001 - any failure to read is "not measured", with its reason
        return {}, f"metrics {url}: {exc}"


def fetch_model_stats(http_url: str) -> tuple[dict[str, float], str]:
    """GET /v2/models/stats: cumulative per-model counts and nanoseconds."""
    url = f"http://{http_url}/v2/models/stats" if "://" not in http_url else f"{http_url}/v2/models/stats"
    try:
        payload = orjson.loads(_get(url))
    except Exception as exc:  # noqa: BLE001
        return {}, f"stats {url}: {exc}"
    out: dict[str, float] = {}
    for model in payload.get("model_stats", []):
        name = model.get("name", "")
        stats = model.get("inference_stats", {})
        for metric, value in (("stats_success", stats.get("success", {}).get("count", 0)),
                              ("stats_fail", stats.get("fail", {}).get("count", 0)),
                              ("stats_queue_ns", stats.get("queue", {}).get("ns", 0)),
                              ("stats_compute_infer_ns", stats.get("compute_infer", {}).get("ns", 0)),
                              ("stats_executions", model.get("execution_count", 0))):
            key = model_series(name, metric)
            out[key] = out.get(key, 0.0) + value  # every version of the model: summed
    return out, ""
