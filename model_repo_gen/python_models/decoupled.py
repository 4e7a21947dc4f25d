"""Decoupled model: one request (IN, N) gets N responses OUT = IN + i, then the final flag."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils
from tee_model_common import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params, _ = model_parameters(args)
        self.delay_s = float(params.get("execute_delay_ms", "0") or 0) / 1000.0

    def execute(self, requests):
        for request in requests:
            base = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(-1)[0])
            count = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            sender = request.get_response_sender()
            if count < 0:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"N must be >= 0, got {count}")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            for i in range(count):
                if self.delay_s:
                    time.sleep(self.delay_s)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([base + i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        # A decoupled model answers through the senders; execute() itself returns None.
