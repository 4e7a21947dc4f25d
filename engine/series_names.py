"""The names of the monitor's resource series: built and taken apart here alone.

The monitor sends one flat mapping of series per sample; the aggregator routes each series to its
detector by its name, the store keeps the names, and the reports find their plots by them.

  proc/server/<field>, proc/stub/<instance>/<field>   a process of the server (monitor.procfs fields)
  model/<model>/<metric>                              Triton's metrics and statistics per model
  truth/<instance>/<metric>                           faulty models' ground truth (tests only)
  server/pinned_used_bytes, gpu/<uuid>/used_bytes     when the server exports them
  shm/files, shm/bytes                                /dev/shm entries of the run
  host/mem_available_bytes, host/mem_total_bytes      /proc/meminfo (absent where unreadable)
  host/psi_memory_some_avg10, host/psi_memory_full_avg10
                                                      /proc/pressure/memory, percent (absent without PSI)
  budget/<field>                                      the host's large-request budget (BUDGET_FIELDS)
  monitor/sample_ms                                   what one sample cost
  target/<server>/<any of the above>                  a fleet's: each server's monitor prefixes its own

A process is named for people as well as for the routing: 'server', 'stub/<instance>', and a
fleet's 'server on <target>'; verdicts name their subject that way.
"""

from __future__ import annotations

from urllib.parse import unquote

_PROC = "proc/"
_STUB = "stub/"
_MODEL = "model/"
_TARGET = "target/"
_ON = " on "

SERVER = "server"  # the process name of tritonserver itself
PENDING = "pending"  # model/<model>/pending: the model's requests waiting in the server
SHM_FILES = "shm/files"
SHM_BYTES = "shm/bytes"
PINNED_USED_BYTES = "server/pinned_used_bytes"
MEM_AVAILABLE = "host/mem_available_bytes"
MEM_TOTAL = "host/mem_total_bytes"
PSI_SOME_AVG10 = "host/psi_memory_some_avg10"  # percent
PSI_FULL_AVG10 = "host/psi_memory_full_avg10"  # percent
BUDGET_FIELDS = ("limit_bytes", "in_flight_bytes", "peak_bytes", "granted", "waits", "wait_s", "skipped", "pressure")
SAMPLE_MS = "monitor/sample_ms"


def safe_name(label: str) -> str:
    """A name from outside (a model, an instance) as one part of a series name: '/' becomes '%2F'."""
    return label.replace("%", "%25").replace("/", "%2F")


# -- a fleet's servers ------------------------------------------------------------------------------
def target_prefix(target: str) -> str:
    """What a fleet's monitor of server `target` puts before each of its series ("" for one server)."""
    return f"{_TARGET}{target}/" if target else ""


def split_target(name: str) -> tuple[str, str]:
    """'target/a/proc/server/fds' -> ('a', 'proc/server/fds'); a one-server name -> ('', name)."""
    if name.startswith(_TARGET):
        target, _, rest = name[len(_TARGET):].partition("/")
        return target, rest
    return "", name


# -- processes --------------------------------------------------------------------------------------
def stub_process(instance: str) -> str:
    """The process name of the python backend stub that runs model instance `instance`."""
    return _STUB + safe_name(instance)


def split_process(process: str) -> tuple[str, str]:
    """'server on a' -> ('server', 'a'); 'stub/m_0_1' -> ('stub/m_0_1', ''). The inverse of the
    target in process_of."""
    name, _, target = process.partition(_ON)
    return name, target


def stub_instance(process: str) -> str | None:
    """'stub/m_0_1' (or 'stub/m_0_1 on a') -> 'm_0_1'; None for any other process."""
    name = split_process(process)[0]
    return name[len(_STUB):] if name.startswith(_STUB) else None


def process_series(process: str, field: str, target: str = "") -> str:
    """('stub/m_0_1', 'fds') -> 'proc/stub/m_0_1/fds'; with target 'a': 'target/a/proc/stub/m_0_1/fds'."""
    return f"{target_prefix(target)}{_PROC}{process}/{field}"


def process_of(name: str) -> str | None:
    """'proc/stub/m_0_1/rss_anon' -> 'stub/m_0_1'; 'proc/server/fds' -> 'server';
    'target/a/proc/server/fds' -> 'server on a'; None for a series of no process."""
    target, rest = split_target(name)
    if not rest.startswith(_PROC):
        return None
    process = rest[len(_PROC):].rsplit("/", 1)[0]
    return f"{process}{_ON}{target}" if target else process


def is_process_series(name: str) -> bool:
    """Whether `name` (a one-server name, or one without its target) is a series of a process."""
    return name.startswith(_PROC)


def field_of(name: str) -> str:
    """The last part of a series name: 'proc/server/fds' -> 'fds', 'shm/files' -> 'files'."""
    return name.rsplit("/", 1)[-1]


# -- models, instances and the host -----------------------------------------------------------------
def model_series(model: str, metric: str) -> str:
    return f"{_MODEL}{safe_name(model)}/{metric}"


def model_metric(name: str) -> tuple[str, str] | None:
    """'model/org%2Fm/pending' -> ('org/m', 'pending'): the inverse of model_series. None for any
    other series, a fleet's included (split_target first)."""
    if not name.startswith(_MODEL):
        return None
    model, _, metric = name[len(_MODEL):].rpartition("/")
    return unquote(model), metric  # safe_name writes only %25 and %2F, so this is exact


def truth_series(instance: str, metric: str) -> str:
    return f"truth/{safe_name(instance)}/{metric}"


def gpu_series(uuid: str) -> str:
    return f"gpu/{uuid}/used_bytes"


def shm_series(field: str) -> str:
    """'files' -> 'shm/files', 'bytes' -> 'shm/bytes'."""
    return f"shm/{field}"


def is_shm_series(name: str) -> bool:
    return name in (SHM_FILES, SHM_BYTES)


def budget_series(field: str) -> str:
    """One of BUDGET_FIELDS -> 'budget/<field>'."""
    return f"budget/{field}"
