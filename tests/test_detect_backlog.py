"""A backlog is not a leak (issue 19): memory that grows with a stuck model's queue is a BACKLOG of
that model, with the bytes each queued request holds; a queue with no memory behind it raises
nothing; a leak during a backlog is still a GROWTH. Through the aggregator's ResourceWatch, on
the smoke profile, with a server sample a second as the monitor sends them."""

from __future__ import annotations

import numpy as np

from engine.aggregator.resources import ResourceWatch
from engine.detectors import discrete, drift, leak, stall
from engine.detectors.settings import DetectorSettings

MIB = float(1 << 20)
KIB = 1024.0
RUN_S = 1500.0
ONSET_S = 300.0


def _settings() -> DetectorSettings:
    return DetectorSettings(enabled=("leak",), fatal=(), window_s=10.0, sample_interval_s=1.0, leak=leak.SMOKE,
                            drift=drift.SMOKE, stall=stall.SMOKE, drift_min_requests=20,
                            discrete=discrete.DiscreteParams(bin_s=10.0, warmup_s=60.0))


def _run(per_queued_bytes: float, leak_mib_h: float, queue_per_s: float, seed: int = 1,
         queue_cap: float = np.inf) -> list:
    """The server's RssAnon over a run where, from ONSET_S, requests to `hang` queue up at
    `queue_per_s` (up to `queue_cap`: the clients' outstanding limit) and each holds
    `per_queued_bytes`; plus a leak of `leak_mib_h` from the onset."""
    watch = ResourceWatch(_settings(), RUN_S)
    rng = np.random.default_rng(seed)
    verdicts = []
    for at in np.arange(0.0, RUN_S, 1.0):
        late = max(0.0, at - ONSET_S)
        queued = min(queue_cap, np.floor(queue_per_s * late))
        rss = (150 * MIB + per_queued_bytes * queued + leak_mib_h * MIB * late / 3600
               + rng.normal(0.0, 0.2 * MIB))
        watch.add(float(at), {"proc/server/pid": 11.0, "proc/server/rss_anon": rss, "model/hang/pending": queued,
                              "model/ok/pending": float(rng.integers(0, 3))}, requests=at * 300, completed={})
        if int(at) % 10 == 0:
            verdicts += watch.evaluate(float(at))
    return verdicts


def test_growth_that_follows_a_stuck_models_queue_is_a_backlog_of_that_model() -> None:
    verdicts = _run(per_queued_bytes=28 * KIB, leak_mib_h=0.0, queue_per_s=3.0)
    assert [v.kind for v in verdicts] == ["BACKLOG"], [v.describe() for v in verdicts]
    backlog = verdicts[0]
    assert backlog.subject == "server (pid 11): queue of hang"
    assert 20 * KIB <= backlog.evidence["bytes_per_queued_request"] <= 36 * KIB
    assert "bytes per queued request" in backlog.describe()


def test_a_queue_with_no_memory_behind_it_raises_nothing() -> None:
    verdicts = _run(per_queued_bytes=0.0, leak_mib_h=0.0, queue_per_s=3.0)
    assert verdicts == [], [v.describe() for v in verdicts]


def test_a_leak_during_a_backlog_is_still_a_growth() -> None:
    """A backlog that fills up to the clients' limit (900 requests in five minutes) while the
    server also leaks 300 MiB/h: the backlog is said, and so is the leak, as a GROWTH whose
    evidence shows what is left once the queue's share is taken out. (While the queue and a leak
    grow in lockstep no fit can part them; once the queue stops, the leak stands out.)"""
    verdicts = _run(per_queued_bytes=28 * KIB, leak_mib_h=300.0, queue_per_s=3.0, queue_cap=900.0)
    kinds = [v.kind for v in verdicts]
    assert "GROWTH" in kinds and set(kinds) <= {"BACKLOG", "GROWTH"}, [v.describe() for v in verdicts]
    growth = next(v for v in verdicts if v.kind == "GROWTH")
    assert growth.evidence["growth_beyond_backlog_low_mib_h"] > growth.evidence["backlog_gate_mib_h"]


def test_without_a_queue_the_same_growth_is_a_growth() -> None:
    """The control: memory rising at the backlog's pace with no queue behind it is a GROWTH."""
    verdicts = _run(per_queued_bytes=0.0, leak_mib_h=300.0, queue_per_s=0.0)
    assert [v.kind for v in verdicts] == ["GROWTH"], [v.describe() for v in verdicts]
