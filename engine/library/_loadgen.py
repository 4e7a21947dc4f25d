"""`generate_load`: drive a server with LoadPlans from Python through the workers' own code.

A worker (workers/worker.py: its lanes or open-loop schedule, the executor that sends, validates
and records every request, its shared-memory pools) runs in a thread of this process, and its
telemetry comes back over the same ZeroMQ wire as in a run, into a receiving thread here. Nothing
outlives the call: the pools are unregistered and unlinked, the sockets closed."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import zmq

from engine.config import SCENARIOS, ScenariosSection, parse_duration
from engine.run_setup import new_run_id
from engine.server import ServerEndpoints, endpoints_from_urls
from shm.gpu import gpu_count
from workers import event_loop
from workers.telemetry import (
    KIND_BATCH,
    KIND_EVENT,
    KIND_HEARTBEAT,
    Event,
    Heartbeat,
    RecordBatch,
    decode_batch,
    unpack,
)
from workers.worker import Worker, WorkerSpec

from ._load_plan import LoadPlan, resolve_plans
from ._load_result import LoadEvent, LoadResult, PlanTotals, concat_records

PROTOCOLS = ("grpc", "grpc_stream", "http")
SHM_MODES = ("none", "system", "cuda", "auto")
ARRIVALS = ("constant", "poisson")
ID_BLOCK = 1 << 20  # correlation ids of the sequences a load sends
QUIET_S = 0.3  # the telemetry is drained when nothing arrived for this long after the worker ended
_JOIN_POLL_S = 0.2


class HasEndpoints(Protocol):
    endpoints: ServerEndpoints


def generate_load(server: ServerEndpoints | HasEndpoints | str, plans: LoadPlan | Sequence[LoadPlan], *,
                  duration: float | str, concurrency: int = 1, rate: float | None = None,
                  arrivals: str = "constant", max_outstanding: int = 256, protocol: str = "grpc",
                  shm: str = "none", cuda_device: int = 0, seed: int = 0) -> LoadResult:
    """Send `plans` to `server` for `duration` (seconds, or "30s") and return every request.

    server: ServerEndpoints, a LaunchedServer / AttachedServer (its `.endpoints`), or the HTTP
        address "host:port" (gRPC on port + 1).
    concurrency: closed loop, that many plans in flight. rate: open loop instead, plans started per
        second whatever the server's pace ("constant" or "poisson" `arrivals`; at most
        `max_outstanding` in flight, later starts skipped); latency counts from when a plan was due.
    protocol: "grpc", "grpc_stream" (sequences on one stream each) or "http".
    shm: "none" (tensors in the messages), "system", "cuda" (CudaUnavailable without a usable GPU)
        or "auto" (CUDA with a GPU, else system): the inputs are written into regions registered with
        the server (the answers come back in the response: their size is the model's to choose).
    cuda_device: the GPU the CUDA regions live on (as CUDA_VISIBLE_DEVICES numbers them).
    seed: the rows drawn and the Poisson arrivals follow it, so a load replays.

    Raises LoadError (a plan the model cannot take), ValueError (a bad argument), and whatever the
    worker met setting up (a server that refuses shared memory). Ctrl-C stops the load gracefully
    and is raised again once everything is released."""
    plan_list = [plans] if isinstance(plans, LoadPlan) else list(plans)
    seconds = _check(plan_list, duration, concurrency, rate, arrivals, max_outstanding, protocol, shm, cuda_device)
    endpoints = _endpoints(server)
    loads = resolve_plans(plan_list, endpoints.grpc)
    with tempfile.TemporaryDirectory(prefix="tee-load-") as directory, _Telemetry(Path(directory)) as telemetry:
        spec = WorkerSpec(
            worker_id=0, run_id=new_run_id(), seed=seed, id_base=1, id_block=ID_BLOCK, grpc_url=endpoints.grpc,
            http_url=endpoints.http, protocol=protocol, concurrency=concurrency, models=(),
            scenarios=ScenariosSection(weights=dict.fromkeys(SCENARIOS, 0)), telemetry_endpoint=telemetry.endpoint,
            deadline_s=seconds, shm_mode=shm, user_loads=loads, load=arrivals if rate else "closed",
            rate=rate or 1.0, max_outstanding=max_outstanding, cuda_device=cuda_device)
        started_ns = time.monotonic_ns()
        _run_worker(spec)
        ended_ns = time.monotonic_ns()
        telemetry.drain()
    beat = telemetry.heartbeat
    counted = beat.plans if beat else {}  # the worker's last heartbeat: cumulative per scenario
    totals = tuple(PlanTotals(load.spec.name, load.scenario, *counted.get(load.scenario, (0, 0, 0))) for load in loads)
    events = tuple(LoadEvent(e.what, e.model, e.text, e.count) for e in telemetry.events)
    fell_back = any(e.what == "shm_fallback" for e in events)  # "auto" without a GPU
    return LoadResult(
        records=concat_records(telemetry.batches, {load.scenario: i for i, load in enumerate(loads)}),
        run_id=spec.run_id, totals=totals, events=events, started_ns=started_ns,
        duration_s=(ended_ns - started_ns) / 1e9, protocol=protocol, shm="system" if fell_back else _mode(shm),
        dropped=beat.records_dropped if beat else 0)


def _check(plans: list[LoadPlan], duration: float | str, concurrency: int, rate: float | None, arrivals: str,
           max_outstanding: int, protocol: str, shm: str, cuda_device: int = 0) -> float:
    if not plans:
        raise ValueError("plans: give at least one LoadPlan")
    seconds = parse_duration(duration) if isinstance(duration, str) else float(duration)
    for name, value, allowed in (("protocol", protocol, PROTOCOLS), ("shm", shm, SHM_MODES),
                                 ("arrivals", arrivals, ARRIVALS)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
    if not seconds > 0:
        raise ValueError(f"duration={duration!r}: must be longer than zero")
    if not 1 <= concurrency <= 1024:
        raise ValueError(f"concurrency={concurrency}: must be from 1 to 1024")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate={rate}: must be above zero (None: closed loop at `concurrency`)")
    if max_outstanding < 1:
        raise ValueError(f"max_outstanding={max_outstanding}: must be 1 or more")
    if isinstance(cuda_device, bool) or not isinstance(cuda_device, int) or cuda_device < 0:
        raise ValueError(f"cuda_device={cuda_device!r}: a CUDA device number, 0 or more")
    if cuda_device and shm in ("cuda", "auto") and (gpus := gpu_count()) and cuda_device >= gpus:
        raise ValueError(f"cuda_device={cuda_device}: this host has {gpus} CUDA device(s): 0 to {gpus - 1} "
                         "(as CUDA_VISIBLE_DEVICES numbers them)")
    return seconds


def _endpoints(server: ServerEndpoints | HasEndpoints | str) -> ServerEndpoints:
    if isinstance(server, ServerEndpoints):
        return server
    if isinstance(server, str):
        return endpoints_from_urls(server)
    found = getattr(server, "endpoints", None)
    if not isinstance(found, ServerEndpoints):
        raise TypeError("server: expected ServerEndpoints, a server object or 'host:port', "
                        f"got {type(server).__name__}")
    return found


def _mode(shm: str) -> str:
    if shm != "auto":
        return shm
    from shm import resolve_mode

    return resolve_mode(shm)[0]


def _run_worker(spec: WorkerSpec) -> None:
    """The worker on an event loop of its own thread (so this works under a running loop too);
    Ctrl-C here stops it gracefully, then is raised again."""
    state: dict[str, Any] = {}

    async def main() -> None:
        worker = Worker(spec)
        state["stop"] = (asyncio.get_running_loop(), worker.stop)
        await worker.run()

    def target() -> None:
        try:
            event_loop.run(main(), spec.event_loop)
        except BaseException as exc:  # handed to the caller's thread
            state["error"] = exc

    thread = threading.Thread(target=target, name="load-worker", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(_JOIN_POLL_S)
    except KeyboardInterrupt:
        while thread.is_alive():  # the worker may still be starting: stop it once it can be
            if "stop" in state:
                loop, stop = state["stop"]
                loop.call_soon_threadsafe(stop)
                break
            thread.join(0.05)
        thread.join()
        raise
    if "error" in state:
        raise state["error"]


class _Telemetry:
    """The receiving end of the worker's telemetry: a PULL socket read by a thread of its own."""

    def __init__(self, directory: Path) -> None:
        self.endpoint = f"ipc://{directory}/telemetry.sock"
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.bind(self.endpoint)
        self.batches: list[RecordBatch] = []
        self.events: list[Event] = []
        self.heartbeat: Heartbeat | None = None
        self._draining = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="load-telemetry", daemon=True)

    def __enter__(self) -> _Telemetry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drain()
        self._socket.close(0)
        self._context.term()

    def drain(self) -> None:
        """Take what is still on its way, then stop (the worker has ended and closed its sender)."""
        self._draining.set()
        self._thread.join()

    def _receive(self) -> None:
        quiet_since = None
        while True:
            if self._socket.poll(int(QUIET_S * 1000 / 3)):
                self._take(self._socket.recv())
                quiet_since = None
            elif self._draining.is_set():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= QUIET_S:
                    return

    def _take(self, data: bytes) -> None:
        message = unpack(data)
        if message.kind == KIND_BATCH:
            self.batches.append(decode_batch(message))
        elif message.kind == KIND_EVENT:
            self.events.append(Event.from_body(message.body))
        elif message.kind == KIND_HEARTBEAT:
            self.heartbeat = Heartbeat.from_body(message.body)
