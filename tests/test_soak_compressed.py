"""The long-run properties under time compression, at every landing (issue 17): tools/soak/
compressed.py feeds the real aggregator, store, detectors and report builder a scaled run on a
virtual clock (half a virtual day here; 6.5 days is the tool's default) with a leak, a drift, a
worker restart and a stub restart planted in it. The verdicts must match the planted truth, the
watch side's memory must stay flat, and the report must build from the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "soak" / "compressed.py"


@pytest.mark.timeout(600)
def test_a_compressed_half_day_finds_the_planted_faults_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "outcome.json"
    done = subprocess.run([sys.executable, str(TOOL), "--days", "0.5", "--json", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=550)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    outcome = orjson.loads(out.read_bytes())
    checks = {what: (held, measured) for what, held, measured in outcome["checks"]}
    failed = {what: measured for what, (held, measured) in checks.items() if not held}
    assert not failed, done.stdout[-3000:]
    assert done.returncode == 0
    kinds = sorted((v["detector"], v["kind"]) for v in outcome["verdicts"] if v["state"] != "withdrawn")
    assert ("leak", "LEAK") in kinds or ("leak", "GROWTH") in kinds
    assert ("drift", "DRIFT") in kinds
    # Every window of every series was fed: 4 models (one has two scenarios... one each) x 720 windows.
    assert outcome["records"] > 500_000
    assert 0 < outcome["html_bytes"] < 5_000_000
