"""PLATEAU only with evidence of an asymptote (issue 19): a GROWTH is withdrawn when the floors of
the latest data stop rising, not when a partial free makes the median look calm for a moment; and
once withdrawn, only growth in what follows raises it again. Synthetic series, fixed seeds, the
smoke profile's parameters (10 s bins, 64 MiB/h gate), a sample every 2 s."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detectors.leak import SMOKE, LeakDetector

MIB = float(1 << 20)
HOUR = 3600.0
RUN_S = HOUR
SAMPLE_S = 2.0


def _judge(rss: np.ndarray) -> list[str]:
    """The kinds raised, in order, over the run (evaluated every 10 s as the smoke profile does)."""
    detector = LeakDetector("stub/m_0_0 (pid 7)", SMOKE, RUN_S)
    t = np.arange(len(rss)) * SAMPLE_S
    for i in range(len(t)):
        detector.add(float(t[i]), float(rss[i]), float(t[i] * 200.0))
        if i % 5 == 0:
            detector.evaluate(float(t[i]))
    return [v.kind for v in detector.raised]


def _noise(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.3 * MIB, n)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("up_mib_h, kept, period_s", [(600.0, 0.3, 300.0), (800.0, 0.2, 240.0)])
def test_a_ratchet_that_frees_part_of_what_it_took_stays_a_growth(seed: int, up_mib_h: float, kept: float,
                                                                   period_s: float) -> None:
    """Grows fast for a few minutes, frees most of it, again and again: about 170 MiB/h net. The
    median dips after each free and the fit's interval widens, but the floor of the latest data
    keeps rising: one GROWTH, never withdrawn (it used to flip-flop with PLATEAU). Frees further
    apart than a third of the data can still read as a plateau for a while: the floor cannot tell
    them from one until it has seen several."""
    t = np.arange(0.0, RUN_S, SAMPLE_S)
    cycles, within = np.floor(t / period_s), t % period_s
    grown = up_mib_h * MIB / HOUR * period_s
    rss = 200 * MIB + cycles * kept * grown + up_mib_h * MIB / HOUR * within + _noise(seed, len(t))
    assert _judge(rss) == ["GROWTH"]


def test_a_cache_that_fills_and_stays_is_a_plateau_said_once() -> None:
    """A cache filling fast (ten minutes, 120 MiB) then flat: its GROWTH, if raised, is withdrawn
    as PLATEAU once, and nothing follows in the flat hour."""
    t = np.arange(0.0, RUN_S, SAMPLE_S)
    rss = 200 * MIB + 120 * MIB * np.clip((t - 60.0) / 600.0, 0.0, 1.0) + _noise(3, len(t))
    kinds = _judge(rss)
    assert kinds in (["GROWTH", "PLATEAU"], []), kinds


def test_a_step_is_not_raised_again_after_its_plateau() -> None:
    """Three steps of 40 MiB over four minutes, then flat: at most one GROWTH, withdrawn once; the
    flat data that follows raises nothing new."""
    t = np.arange(0.0, RUN_S, SAMPLE_S)
    rss = 200 * MIB + 40 * MIB * np.clip(np.floor((t - 180.0) / 80.0), 0, 3) + _noise(4, len(t))
    kinds = _judge(rss)
    assert kinds in (["GROWTH", "PLATEAU"], []), kinds
