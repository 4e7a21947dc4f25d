"""Stateless generated model: identity or zero, and the deliberately faulty identity variants.

Config parameters (strings): execute_delay_ms, mode ("identity" | "zero"), fault ("" | "leak" |
"hang" | "drift" | "wrong" | "crash" | "plateau") and the fault's own knobs. The delay is slept
once per execute() call, which gets a list of requests (a dynamic batch).

Faults count requests per instance (each instance is its own stub process):
- leak: keeps leak_bytes_per_request written bytes per request, forever.
- hang: on the instance whose index is hang_instance, the execute() call that receives its
  (hang_after_requests + 1)-th request never returns and none of its requests is answered; the
  server sends nothing more to a busy instance, so the other instances serve on.
- drift: sleeps drift_ms_per_minute x minutes since (load + drift_onset_s) more per execute().
- wrong: the wrong_every-th, 2 x wrong_every-th, ... request answers INPUT0 + 1.
- crash: the stub exits (os._exit(1)) in the execute() call that receives its
  (crash_after_requests + 1)-th request, before answering any of that call's requests. Without
  batching exactly crash_after_requests requests are answered; with dynamic batching, requests
  batched with the fatal one die with it. Requests after it fail too (the instance is gone).
- plateau: holds plateau_bytes x (1 - exp(-t / plateau_time_constant_s)) bytes, t = time since
  load, grown at each execute(), never more than plateau_bytes (memory that grows, then stops).
"""

import math
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from tee_model_common import Gauge, instance_index, model_parameters

INPUT, OUTPUT = "INPUT0", "OUTPUT0"


class TritonPythonModel:
    def initialize(self, args):
        params, _ = model_parameters(args)
        self.delay_s = float(params.get("execute_delay_ms", "0") or 0) / 1000.0
        self.zero = params.get("mode", "identity") == "zero"
        self.fault = params.get("fault", "")
        self.params = params
        self.served = 0  # requests this instance has answered (fault triggers count per instance)
        self.loaded_at = time.monotonic()
        self.instance = instance_index(args)
        self.retained = []  # leak and plateau: memory held on purpose
        self.retained_bytes = 0
        self.wrong_answers = 0
        self.gauge = None
        metric = {
            "leak": ("engine_model_retained_bytes", "bytes the model holds on purpose"),
            "plateau": ("engine_model_retained_bytes", "bytes the model holds on purpose"),
            "hang": ("engine_model_hung_requests", "requests blocked forever"),
            "drift": ("engine_model_added_delay_ms", "delay added to the last execution"),
            "wrong": ("engine_model_wrong_answers", "answers falsified so far"),
        }.get(self.fault)
        if metric:
            self.gauge = Gauge(pb_utils, metric[0], metric[1], args)
            self.gauge.set(0)

    def _param(self, key):
        return float(self.params[key])

    def execute(self, requests):
        delay = self.delay_s
        if self.fault == "drift":
            minutes = max(0.0, time.monotonic() - self.loaded_at - self._param("drift_onset_s")) / 60.0
            added_ms = self._param("drift_ms_per_minute") * minutes
            self.gauge.set(added_ms)
            delay += added_ms / 1000.0
        if self.fault == "hang" and self.instance == int(self._param("hang_instance")) \
                and self.served + len(requests) > int(self._param("hang_after_requests")):
            self.gauge.set(len(requests))
            threading.Event().wait()  # blocks this instance forever, as a deadlocked model would
        if self.fault == "crash" and self.served + len(requests) > int(self._param("crash_after_requests")):
            os._exit(1)  # the stub dies with the request that exceeds the limit unanswered
        if delay:
            time.sleep(delay)
        responses = []
        for request in requests:
            self.served += 1
            data = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
            out = np.zeros_like(data) if self.zero else data
            if self.fault == "wrong" and self.served % int(self._param("wrong_every")) == 0:
                out = data + np.ones_like(data)
                self.wrong_answers += 1
                self.gauge.set(self.wrong_answers)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, out)]))
        if self.fault == "leak":
            self._hold(int(self._param("leak_bytes_per_request")) * len(requests))
        elif self.fault == "plateau":
            target = self._param("plateau_bytes") * (1 - math.exp(-(time.monotonic() - self.loaded_at)
                                                            / self._param("plateau_time_constant_s")))
            self._hold(int(target) - self.retained_bytes)
        return responses

    def _hold(self, nbytes):
        if nbytes <= 0:
            return
        block = np.ones(nbytes, dtype=np.uint8)  # written, so the pages are really resident
        self.retained.append(block)
        self.retained_bytes += nbytes
        self.gauge.set(self.retained_bytes)
