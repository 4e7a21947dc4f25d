"""The monitor's series names: what the monitor builds, the aggregator and the reports take apart."""

from __future__ import annotations

from engine import series_names as sn
from engine.monitor.metrics import parse_metrics


def test_a_process_series_parses_back_into_its_process_and_field() -> None:
    stub = sn.stub_process("m_0_1")
    for target in ("", "a"):
        name = sn.process_series(stub, "rss_anon", target)
        shown = f"{stub} on {target}" if target else stub
        assert sn.process_of(name) == shown and sn.field_of(name) == "rss_anon" and sn.stub_instance(shown) == "m_0_1"
        process, on = sn.split_process(shown)
        assert (process, on) == (stub, target) and sn.process_series(process, "rss_anon", on) == name
    assert sn.process_series(sn.SERVER, "fds") == "proc/server/fds" and sn.process_of("proc/server/fds") == sn.SERVER
    assert sn.process_series(stub, "fds", "a") == "target/a/proc/stub/m_0_1/fds"
    assert sn.stub_instance(sn.SERVER) is None and sn.process_of(sn.SHM_FILES) is None


def test_a_fleet_prefix_splits_off_and_names_from_outside_stay_one_part() -> None:
    assert sn.split_target(sn.target_prefix("a") + sn.SHM_FILES) == ("a", sn.SHM_FILES)
    assert sn.split_target(sn.SHM_FILES) == ("", sn.SHM_FILES) and sn.target_prefix("") == ""
    assert sn.split_target(sn.target_prefix("a")) == ("a", "")  # the monitor's own prefix names its target
    name = sn.model_series("org/model", sn.PENDING)
    assert name == "model/org%2Fmodel/pending" and sn.model_metric(name) == ("org/model", sn.PENDING)
    assert sn.model_metric(sn.model_series("100%/x", sn.PENDING)) == ("100%/x", sn.PENDING)
    assert sn.model_metric(sn.target_prefix("a") + name) is None  # a fleet's: split the target first
    assert sn.stub_process("a/b_0_0") == "stub/a%2Fb_0_0"


def test_the_kinds_of_series_are_told_apart() -> None:
    assert sn.is_shm_series(sn.shm_series("files")) and sn.is_shm_series(sn.shm_series("bytes"))
    assert not sn.is_shm_series(sn.process_series(sn.SERVER, "files"))
    assert sn.is_process_series(sn.process_series(sn.SERVER, "fds"))
    assert not sn.is_process_series(sn.budget_series("pressure"))
    assert sn.budget_series("pressure") == "budget/pressure"


def test_the_metrics_endpoint_is_read_into_these_names() -> None:
    text = ('nv_inference_pending_request_count{model="org/m",version="1"} 3\n'
            'engine_model_hung_requests{model="m",instance="m_0_0"} 1\n'
            'nv_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 5\n')
    assert parse_metrics(text) == {sn.model_series("org/m", sn.PENDING): 3.0,
                                   "truth/m_0_0/engine_model_hung_requests": 1.0, "gpu/GPU-1/used_bytes": 5.0}
