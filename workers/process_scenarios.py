"""The two scenarios that are not request plans: a client that crashes mid-inference, and a
closed loop steered to keep the server's queue time inside a band."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcaio

from .executor import Executor, PlanOutcome
from .plans import PlanContext, plan_identity

# The crashing client: a separate Python that sends identity requests as fast as it can until
# it is killed. It imports only tritonclient, so it starts in well under a second.
_CRASHING_CLIENT = """
import sys, numpy as np, tritonclient.grpc as g
client = g.InferenceServerClient(sys.argv[1])
data = np.ones((1, 16), np.float32)
while True:
    tensor = g.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(data)
    client.async_infer(sys.argv[2], [tensor], callback=lambda *a: None)
"""


async def run_crashing_client(executor: Executor, ctx: PlanContext, lifetime_s: float, scenario_code: int,
                              grpc_url: str) -> PlanOutcome:
    """A child sends requests with many in flight and is SIGKILLed after `lifetime_s`; then the
    server must still be live and answer a validated request."""
    outcome = PlanOutcome("crashing_client")
    identity = plan_identity(ctx)
    model = identity.steps[0].model
    child = subprocess.Popen([sys.executable, "-c", _CRASHING_CLIENT, grpc_url, model],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(lifetime_s)
    finally:
        child.kill()
        child.wait()
    check = await executor.run(identity.with_scenario("crashing_client"), scenario_code)
    outcome.requests = check.requests
    outcome.failed, outcome.failure = check.failed, check.failure and f"after the crash: {check.failure}"
    return outcome


@dataclass
class SteadyLoadController:
    """The reference suite's perf_analyzer scenario, with the band actually held: concurrency goes
    up by one while the queue time is under `low`, down by one while it is over `high`."""

    low_s: float
    high_s: float
    max_concurrency: int
    concurrency: int = 1
    period_s: float = 2.0

    def adjust(self, queue_s: float) -> int:
        if queue_s < self.low_s and self.concurrency < self.max_concurrency:
            self.concurrency += 1
        elif queue_s > self.high_s and self.concurrency > 1:
            self.concurrency -= 1
        return self.concurrency


async def _queue_totals(client: grpcaio.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = await client.get_inference_statistics(model, as_json=True)
    queue = stats["model_stats"][0]["inference_stats"]["queue"]
    return int(queue.get("count", 0)), int(queue.get("ns", 0))


async def run_steady_load(executor: Executor, ctx: PlanContext, controller: SteadyLoadController,
                          scenario_code: int, grpc_url: str) -> PlanOutcome:
    """`period_s` of closed-loop identity traffic at the controller's concurrency, then one step of
    the controller from the server's own queue-time statistics."""
    outcome = PlanOutcome("steady_load")
    model = plan_identity(ctx).steps[0].model  # consumes what replay_draw() expects
    stats_client = grpcaio.InferenceServerClient(grpc_url)
    try:
        count0, ns0 = await _queue_totals(stats_client, model)
        deadline = asyncio.get_running_loop().time() + controller.period_s

        async def lane(seed: int) -> None:
            rng = np.random.default_rng(seed)
            lane_ctx = PlanContext(rng, ctx.settings, ctx.ids, [s for s in ctx.models if s.name == model])
            while asyncio.get_running_loop().time() < deadline:
                result = await executor.run(plan_identity(lane_ctx).with_scenario("steady_load"), scenario_code)
                outcome.requests += result.requests
                if result.failed and not outcome.failed:
                    outcome.failed, outcome.failure = True, result.failure

        base = int(ctx.rng.integers(0, 2**63))  # one draw whatever the concurrency: the run replays
        await asyncio.gather(*(lane(base + i) for i in range(controller.concurrency)))
        count1, ns1 = await _queue_totals(stats_client, model)
        queue_s = (ns1 - ns0) / max(1, count1 - count0) / 1e9
        controller.adjust(queue_s)
    finally:
        await stats_client.close()
    return outcome
