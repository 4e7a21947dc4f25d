"""The servers a run drives: one (the [server] section's, launched or attached) or a fleet
(`[[targets]]`), and how the workers are split over them by weight."""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.config import Config
from engine.server import ServerEndpoints, endpoints_from_urls


@dataclass(frozen=True)
class TargetInfo:
    """What every process needs to know of one server (picklable)."""

    name: str  # "" for the single server of a one-target run: its records carry no tag
    endpoints: ServerEndpoints
    host: str  # the node the server runs on: placement of shm workers and of its monitor
    weight: float = 1.0


@dataclass
class Target:
    """A server of the run and its handle (LaunchedServer or AttachedServer) in the coordinator."""

    info: TargetInfo
    server: Any

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def endpoints(self) -> ServerEndpoints:
        return self.server.endpoints


def url_host(url: str) -> str:
    return urllib.parse.urlsplit(url if "://" in url else f"http://{url}").hostname or ""


def fleet(config: Config) -> tuple[TargetInfo, ...]:
    """The `[[targets]]` of the config, resolved (names, endpoints, hosts)."""
    out = []
    for t in config.targets:
        endpoints = endpoints_from_urls(t.url, t.grpc_url, t.metrics_url)
        out.append(TargetInfo(t.name or endpoints.http, endpoints, t.host or url_host(t.url), t.weight))
    return tuple(out)


def split_workers(count: int, weights: Sequence[float]) -> list[int]:
    """Worker index -> target index: `count` workers shared by weight (largest remainder), each
    target at least one, interleaved so a short run still loads every server from the start."""
    if not weights:
        raise ValueError("no targets")
    if count < len(weights):
        raise ValueError(f"{count} workers cannot cover {len(weights)} targets")
    total = float(sum(weights))
    ideal = [count * w / total for w in weights]
    shares = [max(1, math.floor(x)) for x in ideal]
    while sum(shares) < count:  # the largest shortfall gets the next worker
        shares[max(range(len(shares)), key=lambda i: (ideal[i] - shares[i], -i))] += 1
    while sum(shares) > count:  # the minimum of one each took too many: the largest excess gives back
        shares[max((i for i in range(len(shares)) if shares[i] > 1), key=lambda i: (shares[i] - ideal[i], -i))] -= 1
    order: list[int] = []
    left = list(shares)
    while len(order) < count:
        for i in range(len(weights)):
            if left[i]:
                order.append(i)
                left[i] -= 1
    return order
