"""The server monitor: what Triton says about itself and what only /proc and /dev/shm show."""

from .metrics import fetch_metrics, fetch_model_stats, parse_metrics
from .procfs import sample_process, shm_footprint
from .sampler import Monitor, MonitorSpec, monitor_main, start_monitor

__all__ = ["Monitor", "MonitorSpec", "fetch_metrics", "fetch_model_stats", "monitor_main", "parse_metrics",
           "sample_process", "shm_footprint", "start_monitor"]
