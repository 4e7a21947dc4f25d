"""Helpers shared by the generated python-backend models (copied beside each model.py)."""

import json


def model_parameters(args):
    """The config's string parameters, as a plain dict."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}, config


def instance_index(args):
    """0-based index of this instance within its model: 'name_<group>_<index>' in args."""
    name = args.get("model_instance_name", "")
    try:
        return int(name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return 0


class Gauge:
    """One custom gauge labelled {model, instance}; silently absent where the backend lacks metrics."""

    def __init__(self, pb_utils, name, description, args):
        self._metric = None
        self._last = None
        family_type = getattr(pb_utils, "MetricFamily", None)
        if family_type is None:
            return
        try:
            family = family_type(name=name, description=description, kind=family_type.GAUGE)
            self._family = family  # kept alive: the metric dies with its family
            self._metric = family.Metric(labels={"model": args["model_name"],
                                                 "instance": args.get("model_instance_name", "")})
        except Exception:  # metrics disabled on the server: the model still serves
            self._metric = None

    def set(self, value):
        # Each set is a round trip to the server process: skip the ones that change nothing,
        # since sequence models publish after every execution.
        value = float(value)
        if self._metric is not None and value != self._last:
            self._metric.set(value)
            self._last = value
