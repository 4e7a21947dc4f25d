"""Sequence accumulator: OUTPUT = running sum of INPUT since the sequence's START.

State is kept per correlation id (request.correlation_id(), an int or a str), in the input's
dtype, added step by step. The server never tells a model that a sequence idled out, so state
untouched for longer than `state_ttl_s` is dropped: at the start of an execution (at most every
`state_ttl_s / 4`, so the hot path does not scan the table each time) and by a sweeper thread
(an instance that gets no more traffic must still let go). With expire_state = "0" it never is
(the deliberately leaking variant). The gauge engine_model_sequence_states says how many are held.

With fault = "hang" (sequence_hang_int32): on the instance whose index is hang_instance, the
first execute() call after its hang_after_requests-th request that carries no START (a step of a
sequence that holds the slot) never returns, and none of its requests is answered: a holder that
hangs mid-sequence. The others serve on. The gauge engine_model_hung_requests says how many
requests it blocks.
"""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from tee_model_common import Gauge, instance_index, model_parameters

INPUT, OUTPUT = "INPUT", "OUTPUT"
START_FLAG, END_FLAG = 1, 2  # request.flags() bits


def _flag(request, name, bit):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is not None:
        return bool(tensor.as_numpy().reshape(-1)[0])
    return bool(request.flags() & bit) if bit else True


class TritonPythonModel:
    def initialize(self, args):
        params, _ = model_parameters(args)
        self.delay_s = float(params.get("execute_delay_ms", "0") or 0) / 1000.0
        self.expire = params.get("expire_state", "1") == "1"
        self.ttl_s = float(params.get("state_ttl_s", "15"))
        self.state = {}  # correlation id -> [running sum (numpy scalar), last touched monotonic]
        self.lock = threading.Lock()  # execute() and the sweeper share the state
        self.gauge = Gauge(pb_utils, "engine_model_sequence_states", "per-sequence states held now", args)
        self.gauge.set(0)
        self.sweep_every_s = min(1.0, self.ttl_s / 4)
        self.last_sweep = time.monotonic()
        self.stopping = threading.Event()
        self.hang_after = int(params.get("hang_after_requests", "0")) if params.get("fault") == "hang" else 0
        self.served = 0  # requests this instance received (the hang counts per instance)
        self.hang_gauge = None
        if self.hang_after and instance_index(args) == int(params.get("hang_instance", "0")):
            self.hang_gauge = Gauge(pb_utils, "engine_model_hung_requests", "requests blocked forever", args)
            self.hang_gauge.set(0)
        if self.expire:
            threading.Thread(target=self._sweep, name="state-sweeper", daemon=True).start()

    def _sweep(self):
        while not self.stopping.wait(self.sweep_every_s):
            with self.lock:
                self._expire(time.monotonic())
                self.gauge.set(len(self.state))

    def _expire(self, now):
        self.last_sweep = now
        for key in [k for k, (_, touched) in self.state.items() if now - touched > self.ttl_s]:
            del self.state[key]

    def finalize(self):
        self.stopping.set()

    def execute(self, requests):
        self.served += len(requests)
        if self.hang_gauge is not None and self.served > self.hang_after \
                and not any(_flag(r, "START", START_FLAG) for r in requests):
            self.hang_gauge.set(len(requests))
            threading.Event().wait()  # blocks this instance forever, as a deadlocked model would
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            return self._answer(requests)

    def _answer(self, requests):
        now = time.monotonic()
        if self.expire and now - self.last_sweep >= self.sweep_every_s:
            self._expire(now)
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
            if not _flag(request, "READY", 0):
                # The Direct batcher's filler for an empty slot: answered, discarded, no state change.
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, np.zeros_like(data))]))
                continue
            key = request.correlation_id()
            corrid = pb_utils.get_input_tensor_by_name(request, "CORRID")
            if corrid is not None and isinstance(key, int) and int(corrid.as_numpy().reshape(-1)[0]) != key:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"CORRID control {int(corrid.as_numpy().reshape(-1)[0])} != correlation id {key}")))
                continue
            if _flag(request, "START", START_FLAG) or key not in self.state:
                entry = self.state[key] = [data.dtype.type(0), now]
            else:
                entry = self.state[key]
            entry[0] = data.dtype.type(entry[0] + data.reshape(-1)[0])
            entry[1] = now
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, np.full_like(data, entry[0]))]))
            if _flag(request, "END", END_FLAG):
                del self.state[key]
        self.gauge.set(len(self.state))
        return responses
