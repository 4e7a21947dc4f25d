"""Stateless generated model: identity or zero, and the deliberately faulty identity variants.

Config parameters (strings): execute_delay_ms, mode ("identity" | "zero"), fault ("" | "leak" |
"hang" | "drift" | "wrong" | "crash" | "plateau" | "ratchet" | "deadlock" | "compute_drift" |
"queue_drift" | "fd_leak") and the fault's own knobs. The delay is slept once per execute() call, which gets
a list of requests (a dynamic batch).

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
- ratchet: takes ratchet_bytes_per_request per request and, every ratchet_period_s, frees
  ratchet_free_fraction of what it took since its last free: memory goes up, down part of the way,
  up again, and what it keeps (its floor) rises by the rest. It holds the memory in anonymous
  mappings of 1 MiB of its own, outside the allocator, so a free really gives the pages back.
- deadlock: every instance, in the execute() call that receives its (deadlock_after_requests +
  1)-th request, deadlocks (two threads take the same two locks in opposite order) and answers
  none of that call's requests. Nothing more is answered: under open-loop load requests pile up
  in the server's queue, holding the server's memory.
- compute_drift: as drift, on top of its execute_delay_ms (its compute before the onset).
- fd_leak: opens /dev/null once every fd_leak_every requests and never closes it (a countable
  resource that leaks: the stub's open fds rise with its requests).
- queue_drift: no fault in the code; its configuration is the fault (one instance, no batching,
  an execute_delay_ms per request): a load above 1000 / execute_delay_ms requests/s queues up.
"""

import math
import mmap
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from tee_model_common import Gauge, instance_index, model_parameters

INPUT, OUTPUT = "INPUT0", "OUTPUT0"
DRIFTS = ("drift", "compute_drift")  # faults that add a growing sleep to each execution


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
            "ratchet": ("engine_model_retained_bytes", "bytes the model holds on purpose"),
            "hang": ("engine_model_hung_requests", "requests blocked forever"),
            "deadlock": ("engine_model_hung_requests", "requests blocked forever"),
            "drift": ("engine_model_added_delay_ms", "delay added to the last execution"),
            "compute_drift": ("engine_model_added_delay_ms", "delay added to the last execution"),
            "wrong": ("engine_model_wrong_answers", "answers falsified so far"),
            "fd_leak": ("engine_model_leaked_fds", "file descriptors opened and never closed"),
        }.get(self.fault)
        if metric:
            self.gauge = Gauge(pb_utils, metric[0], metric[1], args)
            self.gauge.set(0)
        self.ratchet = None
        self.leaked_fds = []  # fd_leak: descriptors it keeps open
        if self.fault == "ratchet":
            self.ratchet = Ratchet(int(self._param("ratchet_bytes_per_request")), self._param("ratchet_period_s"),
                                   self._param("ratchet_free_fraction"))

    def _param(self, key):
        return float(self.params[key])

    def execute(self, requests):
        delay = self.delay_s
        if self.fault in DRIFTS:
            minutes = max(0.0, time.monotonic() - self.loaded_at - self._param("drift_onset_s")) / 60.0
            added_ms = self._param("drift_ms_per_minute") * minutes
            self.gauge.set(added_ms)
            delay += added_ms / 1000.0
        if self.fault == "hang" and self.instance == int(self._param("hang_instance")) \
                and self.served + len(requests) > int(self._param("hang_after_requests")):
            self.gauge.set(len(requests))
            threading.Event().wait()  # blocks this instance forever, as a deadlocked model would
        if self.fault == "deadlock" and self.served + len(requests) > int(self._param("deadlock_after_requests")):
            self.gauge.set(len(requests))
            _deadlock()
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
        elif self.ratchet is not None:
            self.ratchet.take(len(requests))
            self.gauge.set(self.ratchet.held)
        elif self.fault == "fd_leak":
            every = int(self._param("fd_leak_every"))
            due = self.served // every - len(self.leaked_fds)  # served counts this call's requests already
            self.leaked_fds += [os.open(os.devnull, os.O_RDONLY) for _ in range(due)]
            self.gauge.set(len(self.leaked_fds))
        return responses

    def _hold(self, nbytes):
        if nbytes <= 0:
            return
        block = np.ones(nbytes, dtype=np.uint8)  # written, so the pages are really resident
        self.retained.append(block)
        self.retained_bytes += nbytes
        self.gauge.set(self.retained_bytes)


def _deadlock():
    """Two threads take the same two locks in opposite order, each holding its first when it asks
    for its second: neither ever gets it. The calling thread blocks forever, using no CPU."""
    first, second = threading.Lock(), threading.Lock()
    both_held = threading.Barrier(2)

    def other():
        with second:
            both_held.wait()
            with first:
                pass

    threading.Thread(target=other, daemon=True).start()
    with first:
        both_held.wait()
        with second:
            pass


class Ratchet:
    """Memory taken per request and freed in part every period (the ratchet fault)."""

    CHUNK = 1 << 20

    def __init__(self, per_request, period_s, free_fraction):
        self.ones = memoryview(b"\x01" * self.CHUNK)  # what is written: the pages must be resident, not just mapped
        self.per_request, self.period_s, self.fraction = per_request, period_s, free_fraction
        self.kept = []  # full chunks it keeps for good
        self.fresh = []  # full chunks taken since the last free: part of them goes at the next
        self.current, self.used = None, 0  # the chunk being filled
        self.held = 0  # bytes written and still mapped
        self.last_free = time.monotonic()

    def take(self, requests):
        need = self.per_request * requests
        while need:
            if self.current is None or self.used == self.CHUNK:
                if self.current is not None:
                    self.fresh.append(self.current)
                # Private and anonymous: RssAnon, as a heap is (a shared mapping would be RssShmem).
                self.current, self.used = mmap.mmap(-1, self.CHUNK, flags=mmap.MAP_PRIVATE), 0
            n = min(need, self.CHUNK - self.used)
            self.current[self.used:self.used + n] = self.ones[:n]
            self.used += n
            self.held += n
            need -= n
        if time.monotonic() - self.last_free >= self.period_s:
            self._free_part()

    def _free_part(self):
        self.last_free = time.monotonic()
        count = int(len(self.fresh) * self.fraction)
        for chunk in self.fresh[:count]:
            chunk.close()  # munmap: the pages go back to the system at once
            self.held -= self.CHUNK
        self.kept += self.fresh[count:]
        self.fresh = []
