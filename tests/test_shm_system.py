"""System shared memory against the real bundled server: answers through shm equal the inline
ones (FP32 and BYTES, gRPC and HTTP), server errors come back typed with the server's text, and
nothing is left registered, mapped by the server, or in /dev/shm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from model_repo_gen import RepoOptions, generate_repository
from shm import (
    KeyAlreadyRegistered,
    RegionAlreadyRegistered,
    RegionBoundsError,
    RegionKeyError,
    RegionNotRegistered,
    RegistrationRefused,
    ShmError,
    ShmPool,
    Slot,
    SystemRegion,
    classify_server_error,
    cleanup,
    region_name,
    register_system,
    registered_regions,
    unregister,
)
from tests.server_helpers import serve_repository

pytestmark = pytest.mark.timeout(180)

RUN = f"t{os.getpid()}-sys"  # unique to this test process: concurrent test runs do not collide
# The reference suite churns 100,000 times. A cycle takes ~0.8 ms here (2 cores), so that would
# be ~90 s, more than all the other shm tests together. 2,000 cycles take ~2 s and still catch a
# leak of 1 KiB a cycle (2 % of the ~88 MiB client; tried: 2.4 % growth with such a leak put in,
# 0.03 % without). Longer churns belong to the soak runs, whose leak detector watches the trend.
CHURN_CYCLES = 2_000
PROTOCOLS = ("grpc", "http")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("shm_system")
    generate_repository(root / "repo", RepoOptions(models=("identity_fp32", "identity_bytes"), instance_count=1))
    with serve_repository(root / "repo", root / "work") as running:
        try:
            yield running
        finally:
            with grpcclient.InferenceServerClient(running.grpc_url) as client:
                cleanup(RUN, client)


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, server: Any) -> Iterator[Any]:
    if request.param == "grpc":
        c: Any = grpcclient.InferenceServerClient(server.grpc_url)
    else:
        c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def leaves_nothing() -> Iterator[None]:
    """Every test leaves /dev/shm as it found it; a failing one is cleaned up anyway."""
    yield
    leftovers = ours()
    cleanup(RUN)
    assert leftovers == [], f"left in /dev/shm: {leftovers}"


def ours() -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"tee_{RUN}_"))


def mapped_by(pid: int, name: str) -> bool:
    return f"/dev/shm/{name}" in Path(f"/proc/{pid}/maps").read_text()


def registered_names(client: Any) -> set[str]:
    return {r.name for r in registered_regions(client)}


def module_of(client: Any) -> Any:
    return grpcclient if type(client).__module__.startswith("tritonclient.grpc") else httpclient


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# -- a region on its own ---------------------------------------------------------------------------

def test_region_is_a_named_zero_copy_mapping() -> None:
    name = region_name(RUN, 0, 0)
    with SystemRegion(name, 4096) as region:
        assert (region.name, region.key, region.size) == (name, f"/{name}", 4096)
        assert os.stat(f"/dev/shm/{name}").st_size == 4096
        data = np.arange(16, dtype=np.float32)
        assert region.write(128, data) == 64
        view = region.view(128, np.float32, (4, 4))
        assert np.array_equal(view.reshape(-1), data)
        with open(f"/dev/shm/{name}", "r+b") as other:  # another mapping of the object writes...
            other.seek(128)
            other.write(np.full(16, 7, np.float32).tobytes())
        assert (view == 7).all()  # ...and the view sees it: no copy in between
        strings = np.array([[b"\x00bin", "ünï".encode(), b""]], dtype=np.object_)
        written = region.write(1024, strings)
        assert written == sum(4 + len(s) for s in strings.reshape(-1))  # length-prefixed elements
        assert region.read_bytes(1024, (1, 3)).tolist() == strings.tolist()
        with pytest.raises(FileExistsError):
            SystemRegion(name, 4096)  # O_EXCL: never adopt someone else's object
        with pytest.raises(ValueError, match="do not fit"):
            region.write(4090, data)
        del view
    region.close()  # idempotent
    assert region.closed and not os.path.exists(f"/dev/shm/{name}")


# -- through the server ----------------------------------------------------------------------------

@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_identity_through_shm_equals_inline(client: Any, server: Any, datatype: str) -> None:
    model = "identity_fp32" if datatype == "FP32" else "identity_bytes"
    module = module_of(client)
    if datatype == "FP32":
        data: np.ndarray = np.random.default_rng(3).standard_normal((2, 1000)).astype(np.float32)
    else:
        data = np.array([[b"\x00bin", "ünï".encode(), b"", b"z" * 99], [b"a", b"b", b"c", b"d"]], dtype=np.object_)
    inline_in = module.InferInput("INPUT0", list(data.shape), datatype)
    inline_in.set_data_from_numpy(data)
    inline = client.infer(model, [inline_in]).as_numpy("OUTPUT0")

    with ShmPool(client, RUN, 1, mode="system") as pool:
        x = pool.input_slot(data)
        y = pool.output_slot(x.byte_size)
        assert (x.datatype, x.shape) == (datatype, data.shape)
        result = client.infer(model, [pool.infer_input("INPUT0", x)], outputs=[pool.requested_output("OUTPUT0", y)])
        got = pool.read_output(result, "OUTPUT0", y)
        assert got.shape == inline.shape and got.tolist() == inline.tolist() == data.tolist()
        names = pool.region_names
        assert set(names) <= registered_names(client)
        assert all(mapped_by(server.pid, n) for n in names)
        assert [r.offset for r in registered_regions(client) if r.name in names] == [0] * len(names)
    assert pool.closed
    assert not set(names) & registered_names(client)
    assert not any(mapped_by(server.pid, n) for n in names)
    assert ours() == []


def test_a_poisoned_output_slot_fails_until_the_server_writes_it(client: Any) -> None:
    """poison() marks the edges of a reused output slot: a stale answer left there no longer
    passes as this request's answer, and the server's write replaces the marks."""
    data = np.arange(1000, dtype=np.float32).reshape(1, 1000)
    with ShmPool(client, RUN, 6, mode="system") as pool:
        x = pool.input_slot(data)
        y = pool.output_slot(x.byte_size)
        outputs = [pool.requested_output("OUTPUT0", y)]
        result = client.infer("identity_fp32", [pool.infer_input("INPUT0", x)], outputs=outputs)
        assert np.array_equal(pool.read_output(result, "OUTPUT0", y), data)
        pool.poison(y)
        stale = pool.read(y, np.float32, (1, 1000))
        assert np.isnan(stale[0, :16]).all() and np.isnan(stale[0, -16:]).all()  # 64 bytes at each end
        assert np.array_equal(stale[0, 16:-16], data[0, 16:-16])  # the middle is not touched
        result = client.infer("identity_fp32", [pool.infer_input("INPUT0", x)], outputs=outputs)
        assert np.array_equal(pool.read_output(result, "OUTPUT0", y), data)
        small = pool.output_slot(40)
        pool.poison(small)  # smaller than both edges: all of it
        assert (pool.read(small, np.uint8, (40,)) == 0xFF).all()


def test_written_tells_the_servers_answer_and_discard_frees_a_large_slot_at_once(client: Any) -> None:
    """How a large request the client gave up on is known to be over: written() turns true when the
    server's answer lands in the poisoned slot; discard() then unregisters and unlinks the slot's
    own region instead of keeping its memory for reuse."""
    data = np.ones((1, 600_000), dtype=np.float32)  # 2.4 MB: bigger than a pool region, a region of its own
    with ShmPool(client, RUN, 7, mode="system") as pool:
        x = pool.input_slot(data)
        y = pool.output_slot(x.byte_size)
        pool.poison(y)
        assert not pool.written(y)
        client.infer("identity_fp32", [pool.infer_input("INPUT0", x)], outputs=[pool.requested_output("OUTPUT0", y)])
        assert pool.written(y)
        assert y.region in registered_names(client) and y.region in ours()
        assert pool.discard(y)
        assert y.region not in registered_names(client) and y.region not in ours()
        small = pool.output_slot(64)  # shares a region: released for reuse, the region stays
        assert pool.discard(small) and pool.output_slot(64).offset == small.offset


def test_several_tensors_at_offsets_in_one_region(client: Any) -> None:
    with ShmPool(client, RUN, 2, mode="system") as pool:
        pairs = []
        for i in range(6):
            data = np.full((1, 100 + 37 * i), i + 0.5, np.float32)
            x, y = pool.input_slot(data), pool.output_slot(data.nbytes)
            pairs.append((data, x, y, [pool.infer_input("INPUT0", x)], [pool.requested_output("OUTPUT0", y)]))
        for _, _, _, inputs, outputs in pairs:
            client.infer("identity_fp32", inputs, outputs=outputs)
        for data, _, y, _, _ in pairs:  # each answer is where its request asked for it
            assert np.array_equal(pool.read(y, np.float32, data.shape), data)
        slots = [s for _, x, y, _, _ in pairs for s in (x, y)]
        assert len(pool.region_names) == 1 and len({s.offset for s in slots}) == 12
        assert all(s.offset % 64 == 0 for s in slots)

        # The same slots serve request after request; views show each new answer.
        data, x, y, inputs, outputs = pairs[3]
        answer = pool.read(y, np.float32, data.shape)
        pool.write(x, data * 2)
        pool.clear(y)
        assert (answer == 0).all()
        client.infer("identity_fp32", inputs, outputs=outputs)
        assert np.array_equal(answer, data * 2)

        pool.release(y)
        assert pool.output_slot(y.byte_size) == y  # reused, not carved again
        with pytest.raises(ValueError, match="same|bytes"):
            pool.write(x, np.zeros((1, 3), np.float32))


def test_pool_grows_by_adding_regions(client: Any) -> None:
    with ShmPool(client, RUN, 3, mode="system", region_bytes=4096) as pool:
        first = [pool.output_slot(1000) for _ in range(4)]  # 4 x 1024 bytes: one region exactly
        assert {s.region for s in first} == {region_name(RUN, 3, 0)}
        spill = pool.output_slot(1000)
        big = pool.output_slot(10_000)  # larger than a region: a region of its own
        after = pool.output_slot(64)  # ...and the current region keeps filling
        assert spill.region == region_name(RUN, 3, 1) and big.region == region_name(RUN, 3, 2)
        assert after.region == spill.region and after.offset == 1024
        sizes = {r.name: r.byte_size for r in registered_regions(client) if r.name in pool.region_names}
        assert sizes == {region_name(RUN, 3, 0): 4096, region_name(RUN, 3, 1): 4096, region_name(RUN, 3, 2): 10_048}
        data = np.arange(2500, dtype=np.float32).reshape(1, 2500)
        x = pool.input_slot(data)
        y = pool.output_slot(data.nbytes)
        client.infer("identity_fp32", [pool.infer_input("INPUT0", x)], outputs=[pool.requested_output("OUTPUT0", y)])
        assert np.array_equal(pool.read(y, np.float32, data.shape), data)
        # released, a slot is handed out again as it was given back (the last first); a slot that
        # held an input comes back bare, for what is asked now
        pool.release(y)
        assert pool.output_slot(data.nbytes) is y
        pool.release(x)
        again = pool.output_slot(data.nbytes)
        assert (again.region, again.offset, again.byte_size, again.datatype, again.shape) == \
            (x.region, x.offset, data.nbytes, "", ())
        pool.release(y)
        with pytest.raises(ValueError, match="released already"):
            pool.release(y)
    assert ours() == []


def test_after_a_spike_the_pool_gives_back_the_regions_it_added(client: Any, server: Any) -> None:
    """A spike of load grows a pool by regions; once a steady load is back, it takes the slots
    released last, the spike's regions fall idle, and trim() gives them back (unregistered,
    unlinked, unmapped by the server) after the idle time: /dev/shm returns to its steady level.
    A region with a slot in use (a constant input, a slot in quarantine) stays. Time is the
    pool's injected clock."""
    now = [0.0]
    with ShmPool(client, RUN, 9, mode="system", region_bytes=4096) as pool:
        pool.clock = lambda: now[0]
        constant = pool.input_slot(np.ones((1, 16), np.float32))  # written once, never released
        spike = [pool.output_slot(1024) for _ in range(12)]  # 13 slots of 1 KiB: 4 regions
        assert len(pool.region_names) == 4
        held = spike.pop(5)  # a slot still out (a request in quarantine): its region stays
        for slot in spike:
            pool.release(slot)

        def steady_load() -> str:  # one request at a time: always the slot released last
            for _ in range(50):
                slot = pool.output_slot(1024)
                pool.release(slot)
            return slot.region

        now[0] = 10.0
        steady = steady_load()
        assert pool.trim(idle_s=60.0) == []  # nothing idle for long enough yet
        now[0] = 100.0
        assert steady_load() == steady
        gone = pool.trim(idle_s=60.0)
        kept = {constant.region, held.region, steady}
        assert sorted(gone) == sorted(set(region_name(RUN, 9, i) for i in range(4)) - kept)
        assert sorted(pool.region_names) == sorted(kept) and ours() == sorted(kept)
        assert not set(gone) & registered_names(client)
        assert not any(mapped_by(server.pid, name) for name in gone)
        again = [pool.output_slot(1024) for _ in range(4)]  # free slots of what went are not handed out
        assert all(slot.region in pool.region_names for slot in again)
        client.infer("identity_fp32", [pool.infer_input("INPUT0", constant)],  # the kept slots still serve
                     outputs=[pool.requested_output("OUTPUT0", again[0])])
        assert np.array_equal(pool.read(again[0], np.float32, (1, 16)), np.ones((1, 16), np.float32))
        now[0] = 200.0
        for slot in (held, *again):
            pool.release(slot)
        now[0] = 300.0
        before = set(pool.region_names)
        assert set(pool.trim(idle_s=60.0)) == before - {constant.region}  # all but the constant input's
        assert ours() == [constant.region]
    assert ours() == []


def test_server_errors_are_typed_with_the_servers_text(client: Any, server: Any) -> None:
    module = module_of(client)
    grpc = module is grpcclient
    data = np.ones((1, 16), np.float32)

    with pytest.raises(RegionKeyError, match="Unable to open shared memory region: '/tee_") as err:
        register_system(client, "nokey", f"/{region_name(RUN, 9, 99)}", 64)
    assert err.value.status == ("StatusCode.INTERNAL" if grpc else "500")
    assert err.value.region == f"/{region_name(RUN, 9, 99)}"

    with SystemRegion(region_name(RUN, 9, 0), 4096) as region:
        with pytest.raises(RegistrationRefused, match="failed to register shared memory region 'big': invalid args"):
            register_system(client, "big", region.key, 8192)  # larger than the object
        register_system(client, "errs", region.key, 4096)
        try:
            with pytest.raises(RegionAlreadyRegistered, match="shared memory region 'errs' already in manager") as dup:
                register_system(client, "errs", region.key, 4096)
            assert dup.value.status == ("StatusCode.ALREADY_EXISTS" if grpc else "400")
            # Triton 2.51 refuses a second name on a registered key with a misleading text.
            with pytest.raises(KeyAlreadyRegistered, match=f"Invalid shared memory region: '{region.key}'"):
                register_system(client, "errs2", region.key, 64)

            def infer_error(inputs: list[Any], outputs: list[Any] | None = None) -> ShmError:
                with pytest.raises(Exception) as raised:
                    client.infer("identity_fp32", inputs, outputs=outputs)
                typed = classify_server_error(raised.value)
                assert typed is not None, f"not classified: {raised.value}"
                assert typed.message in str(raised.value)
                return typed

            past_end = module.InferInput("INPUT0", [1, 16], "FP32")
            past_end.set_shared_memory("errs", 64, offset=4090)
            typed = infer_error([past_end])
            assert isinstance(typed, RegionBoundsError)
            assert typed.message == "Invalid offset + byte size for shared memory region: 'errs'"
            at_end = module.InferInput("INPUT0", [1, 16], "FP32")
            at_end.set_shared_memory("errs", 64, offset=4096)
            typed = infer_error([at_end])
            assert isinstance(typed, RegionBoundsError) and "Invalid offset for shared memory region" in typed.message

            inline = module.InferInput("INPUT0", [1, 16], "FP32")
            inline.set_data_from_numpy(data)
            small = module.InferRequestedOutput("OUTPUT0")
            small.set_shared_memory("errs", 32)
            typed = infer_error([inline], [small])
            assert isinstance(typed, RegionBoundsError)
            assert "(32 bytes) should be at least 64 bytes to hold the results" in typed.message

            unknown = module.InferInput("INPUT0", [1, 16], "FP32")
            unknown.set_shared_memory(region_name(RUN, 9, 7), 64)
            typed = infer_error([unknown])
            assert isinstance(typed, RegionNotRegistered)
            assert typed.status == ("StatusCode.NOT_FOUND" if grpc else "404")
            assert typed.region == region_name(RUN, 9, 7)
        finally:
            unregister(client, "errs")
    assert "errs" not in registered_names(client)


def test_errors_about_other_things_are_not_shm_errors(client: Any) -> None:
    module = module_of(client)
    tensor = module.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(Exception) as raised:
        client.infer("no_such_model", [tensor])
    assert classify_server_error(raised.value) is None
    assert classify_server_error(ValueError("plain")) is None


def test_close_is_idempotent_and_complete(client: Any, server: Any) -> None:
    pool = ShmPool(client, RUN, 4, mode="system", region_bytes=4096)
    slots = [pool.output_slot(4096) for _ in range(3)]  # one region each
    names = pool.region_names
    assert len(names) == 3 and ours() == sorted(names)
    assert set(names) <= registered_names(client)
    pool.close()
    pool.close()
    assert pool.closed and ours() == []
    assert not set(names) & registered_names(client)
    assert not any(mapped_by(server.pid, n) for n in names)
    with pytest.raises(ShmError, match="closed"):
        pool.output_slot(64)
    with pytest.raises(ShmError, match="not one of this closed pool"):
        pool.read(slots[0], np.float32, (1,))


def test_a_respawned_worker_skips_names_its_predecessor_left(client: Any) -> None:
    """A worker restarted with the same id finds index 0 still in /dev/shm and index 1 still
    registered (another key under that name) and takes the next free name."""
    leftover = SystemRegion(region_name(RUN, 5, 0), 4096)
    stale_key = SystemRegion(f"tee_{RUN}_stale", 4096)
    register_system(client, region_name(RUN, 5, 1), stale_key.key, 4096)
    try:
        with ShmPool(client, RUN, 5, mode="system") as pool:
            assert pool.output_slot(64).region == region_name(RUN, 5, 2)
            assert registered_names(client) >= {region_name(RUN, 5, 1), region_name(RUN, 5, 2)}
    finally:
        unregister(client, region_name(RUN, 5, 1))
        leftover.close()
        stale_key.close()


def test_slot_crosses_process_lines_and_names_the_region_in_either_protocol() -> None:
    import pickle

    slot = Slot("tee_r-1_w0_0", 128, 64, "system", "FP32", (1, 16))
    assert pickle.loads(pickle.dumps(slot)) == slot
    for protocol, module in (("grpc", grpcclient), ("http", httpclient)):
        tensor = slot.infer_input("INPUT0", protocol)
        assert isinstance(tensor, module.InferInput) and tensor.shape() == [1, 16]
        assert isinstance(slot.requested_output("OUTPUT0", protocol), module.InferRequestedOutput)
    grpc_params = slot.infer_input("INPUT0", "grpc")._get_tensor().parameters
    assert grpc_params["shared_memory_region"].string_param == "tee_r-1_w0_0"
    assert grpc_params["shared_memory_offset"].int64_param == 128
    http_params = slot.infer_input("INPUT0", "http")._get_tensor()["parameters"]
    assert http_params == {"shared_memory_region": "tee_r-1_w0_0", "shared_memory_byte_size": 64,
                           "shared_memory_offset": 128}


def test_region_churn_does_not_grow_the_client_or_the_server(server: Any) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    name = region_name(RUN, 6, 0)

    def cycle() -> None:
        with SystemRegion(name, 65536) as region:
            register_system(client, name, region.key, region.byte_size)
            unregister(client, name)

    try:
        for _ in range(200):  # warm-up: allocator arenas and gRPC buffers settle
            cycle()
        rss_before = vm_rss_kib()
        fds_before = len(os.listdir(f"/proc/{server.pid}/fd"))
        for _ in range(CHURN_CYCLES):
            cycle()
        growth = (vm_rss_kib() - rss_before) / rss_before
        fds_after = len(os.listdir(f"/proc/{server.pid}/fd"))
        assert growth < 0.02, f"client RSS grew {growth:.2%} over {CHURN_CYCLES} cycles"
        assert fds_after <= fds_before + 2, f"server fds {fds_before} -> {fds_after}"
        assert name not in registered_names(client) and not mapped_by(server.pid, name)
    finally:
        client.close()


def test_a_region_larger_than_dev_shm_is_a_clear_error_not_a_crash() -> None:
    from shm import ShmError

    free = os.statvfs("/dev/shm")
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    with pytest.raises(ShmError, match="cannot reserve"):
        SystemRegion("tee_testrun-toolarge_w0_0", too_big)
    assert not os.path.exists("/dev/shm/tee_testrun-toolarge_w0_0")
