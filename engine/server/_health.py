"""Plain HTTP probes of Triton's health and repository endpoints (no client library needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def http_status(url: str, *, method: str = "GET", timeout: float = 2.0) -> int:
    """HTTP status of `url`; 0 when nothing answers."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def http_json(url: str, *, method: str = "GET", timeout: float = 5.0) -> object:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def is_ready(http: str, timeout: float = 2.0) -> bool:
    return http_status(f"http://{http}/v2/health/ready", timeout=timeout) == 200


def is_live(http: str, timeout: float = 2.0) -> bool:
    return http_status(f"http://{http}/v2/health/live", timeout=timeout) == 200


def model_ready(http: str, model: str, timeout: float = 2.0) -> bool:
    return http_status(f"http://{http}/v2/models/{model}/ready", timeout=timeout) == 200


def repository_index(http: str, timeout: float = 5.0) -> list[dict]:
    """The server's model repository index: [{name, version, state, reason}, ...]."""
    index = http_json(f"http://{http}/v2/repository/index", method="POST", timeout=timeout)
    return index if isinstance(index, list) else []
