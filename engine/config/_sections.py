"""The config's sections as frozen dataclasses. Defaults reproduce Triton's own long-running
stress suite (qa/L0_long_running_stress); every field says what it is in `metadata["help"]`.
`[models]` is model_repo_gen.RepoOptions itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model_repo_gen.options import ALL_MODELS, RepoOptions
from workers.answer_check import DEFAULT_FRACTION, DEFAULT_PAGES, VALIDATE_MODES
from workers.event_loop import EVENT_LOOPS

REFERENCE_DURATION_S = 25_000.0  # the suite's nightly run, about 7 h
LONG_DURATION_S = 480_000.0  # TRITON_PERF_LONG=1: the suite says "~6.5 days"; it is 5.6 days

PROTOCOLS = ("grpc", "grpc_stream", "http")
SHM_MODES = ("none", "system", "cuda", "auto")
LOAD_SHAPES = ("closed", "constant", "poisson")
DETECTORS = ("leak", "stall", "drift", "errors", "wrong_answers")
REPORT_FORMATS = ("terminal", "json", "html", "text")
# Scenario -> weight, as the reference suite draws them (identity takes the ResNet scenario's place).
DEFAULT_WEIGHTS: dict[str, int] = {
    "timeout": 60,
    "crashing_client": 60,
    "sequence_no_end": 62,
    "sequence_valid_no_end": 68,
    "sequence_valid_valid": 68,
    "sequence_no_start": 7,
    "sequence_valid": 295,
    "steady_load": 300,
    "identity": 80,
    "large_tensor": 20,
    "streaming": 20,
}
SCENARIOS = tuple(DEFAULT_WEIGHTS)


def _port(help_text: str) -> int:
    return field(default=0, metadata={"min": 0, "max": 65535, "help": help_text})


@dataclass(frozen=True)
class RunSection:
    duration: float = field(default=REFERENCE_DURATION_S, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "how long the run lasts"})
    seed: int = field(default=-1, metadata={"min": 0, "help": "run seed; absent: drawn at load time and recorded"})
    results_dir: str = field(default="results", metadata={"help": "directory that holds one directory per run"})
    memory_budget: float = field(default=0.8, metadata={
        "min_exclusive": 0, "max": 1, "help": "share of the host's available memory (MemAvailable at start) the run "
        "may plan to hold at once: it sets the host-wide limit on large requests in flight (README: Memory budget)"})
    memory_budget_bytes: int = field(default=0, metadata={
        "min": 0, "help": "the same budget in bytes, for a host shared with other work; 0 = the share above"})


@dataclass(frozen=True)
class ServerSection:
    binary: str = field(default="", metadata={"help": 'tritonserver binary to launch; "" = the one in nvidia-pytriton'})
    url: str = field(default="", metadata={"help": 'HTTP address of a running server to attach to; "" = launch one'})
    grpc_url: str = field(default="", metadata={"help": 'gRPC address when attaching; "" = HTTP port + 1'})
    metrics_url: str = field(default="", metadata={"help": 'metrics URL when attaching; "" = HTTP port + 2'})
    host: str = field(default="127.0.0.1", metadata={"help": "address a launched server binds"})
    http_port: int = _port("HTTP port of a launched server; 0 = a free one")
    grpc_port: int = _port("gRPC port of a launched server; 0 = a free one")
    metrics_port: int = _port("metrics port of a launched server; 0 = a free one")
    startup_timeout: float = field(default=120.0, metadata={
        "unit": "duration", "min_exclusive": 0,
        "help": "how long to wait for the server (and every model) to be ready"})
    stop_timeout: float = field(default=30.0, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "how long a launched server gets to exit before SIGKILL"})
    extra_args: tuple[str, ...] = field(default=(), metadata={"help": "more tritonserver arguments"})
    restarts: int = field(default=3, metadata={
        "min": 0, "help": "times a launched server that dies mid-run is started again (0: the run stops)"})
    reconnect_timeout: float = field(default=300.0, metadata={
        "unit": "duration", "min": 0, "help": "how long to wait for an attached server that stops answering"})
    model_repository: str = field(default="", metadata={
        "help": "a model repository of your own, served beside the generated one (drive it with [[load]])"})


@dataclass(frozen=True)
class InputSection:
    name: str = field(metadata={"help": "input name, as the model's config has it"})
    datatype: str = field(default="", metadata={
        "help": 'Triton datatype ("FP32", "INT64", "BYTES", ...); "" = from metadata'})
    shape: tuple[int, ...] = field(default=(), metadata={
        "min": 1, "help": "shape without the batch dimension; () = from metadata (needs no -1 there)"})


@dataclass(frozen=True)
class LoadSection:
    """One `[[load]]` entry: drive a model of the user's own by name."""

    model: str = field(metadata={"help": "model name on the server"})
    inputs: tuple[InputSection, ...] = field(default=(), metadata={"help": "inputs; () = all, from metadata"})
    data: str = field(default="random", metadata={
        "help": 'random, zero, or a JSON file in perf_analyzer\'s --input-data format (validation_data is checked)'})
    batch_size: int = field(default=1, metadata={"min": 1, "help": "batch size (models that batch)"})
    weight: int = field(default=100, metadata={"min": 0, "help": "weight of this entry in the scenario draw"})
    sequence: bool = field(default=False, metadata={"help": "send as sequences (START ... END) of stateful steps"})
    protocol: str = field(default="", metadata={
        "choices": ("",) + PROTOCOLS, "help": 'grpc, grpc_stream or http; "" = [workers] protocol'})
    shm: str = field(default="", metadata={
        "choices": ("",) + SHM_MODES, "help": 'none, system, cuda or auto; "" = [workers] shm'})
    load: str = field(default="", metadata={
        "choices": ("",) + LOAD_SHAPES, "help": 'closed, constant or poisson; "" = [workers] load'})
    rate: float = field(default=0.0, metadata={"min": 0, "help": "open loop: plans/s per worker; 0 = [workers] rate"})
    output_bytes: int = field(default=0, metadata={
        "min": 0, "help": "shared memory for each output of a request, in bytes (perf_analyzer's "
                          "--output-shared-memory-size); 0 = from the model's metadata where every output's shape "
                          "is fixed, else answers come back inline"})


@dataclass(frozen=True)
class WorkersSection:
    count: int = field(default=8, metadata={"min": 1, "max": 1024, "help": "worker processes (the suite: 8 threads)"})
    protocol: str = field(default="grpc", metadata={"choices": PROTOCOLS, "help": "how workers talk to the server"})
    shm: str = field(default="auto", metadata={
        "choices": SHM_MODES, "help": "shared memory for tensors; auto = CUDA with a GPU, else system"})
    cuda_device: int = field(default=0, metadata={
        "min": 0, "help": "the GPU the workers' CUDA shared-memory regions live on (a CUDA ordinal: the server "
                          "must number the GPUs the same way, i.e. see the same CUDA_VISIBLE_DEVICES)"})
    concurrency: int = field(default=1, metadata={"min": 1, "max": 1024, "help": "plans in flight per worker"})
    correlation_id_block: int = field(default=1_048_576, metadata={
        "min": 1, "help": "correlation ids each worker owns (the suite: 1,048,576 per thread)"})
    load: str = field(default="closed", metadata={
        "choices": LOAD_SHAPES, "help": "closed: `concurrency` plans in flight; constant or poisson: open loop"})
    rate: float = field(default=10.0, metadata={
        "min_exclusive": 0, "help": "open loop: plans started per second per worker"})
    max_outstanding: int = field(default=256, metadata={
        "min": 1, "help": "open loop: plans in flight before the schedule skips (skips are counted)"})
    silent_timeout: float = field(default=30.0, metadata={
        "unit": "duration", "min_exclusive": 0,
        "help": "a worker without a heartbeat this long is killed and replaced"})
    event_loop: str = field(default="uvloop", metadata={
        "choices": EVENT_LOOPS, "help": "the workers' event loop: uvloop (less CPU per request) or asyncio's own"})
    validate: str = field(default="all", metadata={
        "choices": VALIDATE_MODES,
        "help": "how answers are checked: all = every answer compared in full; pages = every answer checked, "
                "those over 256 KiB on their first and last 4 KiB page and validate_pages random pages; "
                "fraction = validate_fraction of the answers compared in full, the rest not compared "
                "(README: Answer validation)"})
    validate_pages: int = field(default=DEFAULT_PAGES, metadata={
        "min": 1, "max": 4096, "help": "validate = pages: random 4 KiB pages compared per large answer, "
                                       "besides its first and last"})
    validate_fraction: float = field(default=DEFAULT_FRACTION, metadata={
        "min_exclusive": 0, "max": 1, "help": "validate = fraction: share of the answers compared (in full)"})


@dataclass(frozen=True)
class ScenariosSection:
    weights: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS), metadata={
        "choices": SCENARIOS, "min": 0, "help": "scenario -> weight of the draw"})
    sequence_length_mean: float = field(default=16.0, metadata={"min_exclusive": 0, "help": "mean sequence length"})
    sequence_length_stddev: float = field(default=8.0, metadata={"min": 0, "help": "its standard deviation"})
    sequence_deadline: float = field(default=25.0, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "a sequence that takes longer fails (the suite: 25 s)"})
    timeout_client_deadline: float = field(default=0.1, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "client deadline of the timeout scenario"})
    timeout_input_bytes: int = field(default=1 << 30, metadata={
        "min": 4, "help": "input size of the timeout scenario (the suite: 1 GiB)"})
    large_tensor_bytes: int = field(default=4 << 20, metadata={"min": 4, "help": "input size of large_tensor"})
    crashing_client_lifetime: float = field(default=3.0, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "how long the crashing client sends before it is killed"})
    steady_load_queue_low: float = field(default=0.010, metadata={
        "unit": "duration", "min": 0, "help": "steady_load raises concurrency below this server queue time"})
    steady_load_queue_high: float = field(default=0.100, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "steady_load lowers concurrency above this server queue time"})
    steady_load_max_concurrency: int = field(default=4, metadata={"min": 1, "max": 1024, "help": "its upper bound"})
    streaming_responses: int = field(default=8, metadata={"min": 0, "help": "responses per streaming request"})
    input_pool: int = field(default=8, metadata={
        "min": 1, "max": 1024,
        "help": "distinct random inputs per pool, made once per worker: one pool per [[load]] entry, one per "
                "datatype and shape of the identity and large_tensor scenarios (each request sends one; in "
                "shared memory each is written once); fewer when they would pass input_pool_bytes"})
    input_pool_bytes: int = field(default=64 << 20, metadata={
        "min": 1, "help": "bytes of one [[load]] entry's input pool (of all large_tensor's pools together; of "
                          "each identity pool) per worker, at most (one input per pool at least)"})


@dataclass(frozen=True)
class DetectorsSection:
    profile: str = field(default="long", metadata={
        "choices": ("long", "smoke"), "help": "detector defaults for multi-hour runs or for short CI runs"})
    enabled: tuple[str, ...] = field(default=DETECTORS, metadata={"choices": DETECTORS, "help": "detectors that run"})
    fatal: tuple[str, ...] = field(default=(), metadata={
        "choices": DETECTORS, "help": "detectors whose verdict ends the run at once"})
    # Overrides of the profile's values; absent = the profile's (long / smoke). Every value that
    # applied is echoed in each verdict's evidence and in the run's config.json.
    window: float | None = field(default=None, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "aggregation window (long: 60 s, smoke: 10 s)"})
    sample_interval: float | None = field(default=None, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "resource sampling period (long: 5 s, smoke: 1 s)"})
    warmup: float | None = field(default=None, metadata={
        "unit": "duration", "min": 0, "help": "no verdict on data from before this (long: 10 min, smoke: 60 s)"})
    leak_gate: float | None = field(default=None, metadata={
        "min_exclusive": 0, "help": "memory growth alarm, MiB/h (long: 256, smoke: 64)"})
    leak_min_data: float | None = field(default=None, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "data needed after warm-up for a growth alarm "
                                                        "(long: 15 min, smoke: 2 min)"})
    stall_floor: float | None = field(default=None, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "shortest stall threshold (long: 10 s, smoke: 5 s)"})
    drift_min_requests: int | None = field(default=None, metadata={
        "min": 1, "help": "answered requests a window needs to count for drift (long: 100, smoke: 20)"})


@dataclass(frozen=True)
class EmailSection:
    smtp_host: str = field(default="", metadata={"help": 'SMTP server; "" = no e-mail'})
    smtp_port: int = field(default=587, metadata={"min": 1, "max": 65535, "help": "SMTP port"})
    starttls: bool = field(default=True, metadata={"help": "upgrade the connection with STARTTLS"})
    sender: str = field(default="", metadata={"help": "From address"})
    recipients: tuple[str, ...] = field(default=(), metadata={"help": "To addresses"})
    username: str = field(default="", metadata={"help": "SMTP login; \"\" = no login"})
    password_env: str = field(default="", metadata={"help": "NAME of the environment variable holding the password"})
    subject_prefix: str = field(default="", metadata={"help": 'e.g. "Long" (the suite prefixes long runs)'})


@dataclass(frozen=True)
class ReportSection:
    formats: tuple[str, ...] = field(default=REPORT_FORMATS, metadata={"choices": REPORT_FORMATS, "help": "outputs"})
    live: str = field(default="auto", metadata={
        "choices": ("auto", "line", "plain", "off"),
        "help": "progress while running: one updating line (a terminal), a line every 10 s (logs), or none; "
                "auto = line on a terminal, else plain"})
    prometheus_port: int = field(default=0, metadata={
        "min": 0, "max": 65535, "help": "serve the live figures for Prometheus on 127.0.0.1:PORT; 0 = off"})
    email: EmailSection = field(default_factory=EmailSection)


@dataclass(frozen=True)
class PerfSection:
    models: tuple[str, ...] = field(default=("identity_fp32",), metadata={
        "choices": ALL_MODELS, "help": "models swept"})
    protocols: tuple[str, ...] = field(default=("grpc", "http"), metadata={"choices": PROTOCOLS, "help": "protocols"})
    shm_modes: tuple[str, ...] = field(default=("none",), metadata={
        "choices": ("none", "system", "cuda"), "help": "tensor transports"})
    batch_sizes: tuple[int, ...] = field(default=(1,), metadata={"min": 1, "help": "batch sizes"})
    concurrency: tuple[int, ...] = field(default=(1, 16), metadata={"min": 1, "help": "closed-loop levels"})
    request_rates: tuple[float, ...] = field(default=(), metadata={
        "min_exclusive": 0, "help": "open-loop rates (requests/s); empty = closed loop only"})
    input_elements: int = field(default=16, metadata={"min": 1, "help": "elements of the input tensor"})
    window: float = field(default=5.0, metadata={"unit": "duration", "min_exclusive": 0, "help": "measurement window"})
    warmup: float = field(default=2.0, metadata={"unit": "duration", "min": 0, "help": "not counted, per point"})
    stability_windows: int = field(default=3, metadata={"min": 1, "help": "windows that must agree"})
    stability_tolerance: float = field(default=0.10, metadata={"min_exclusive": 0, "help": "how closely they agree"})
    max_windows: int = field(default=10, metadata={"min": 1, "help": "after this many, the point is unstable"})
    baseline_throughput_tolerance: float = field(default=0.05, metadata={
        "min": 0, "help": "allowed throughput loss against the baseline"})
    baseline_p99_tolerance: float = field(default=0.10, metadata={"min": 0, "help": "allowed p99 growth"})
    request_distribution: str = field(default="constant", metadata={
        "choices": ("constant", "poisson"),
        "help": "open loop: arrival times (perf_analyzer's --request-distribution)"})
    max_outstanding: int = field(default=64, metadata={
        "min": 1, "max": 1024, "help": "open loop: requests in flight (a connection each) before the schedule skips"})
    request_timeout: float = field(default=30.0, metadata={
        "unit": "duration", "min_exclusive": 0, "help": "a request unanswered this long is an error; it also bounds "
                                                        "the wait for requests in flight when a point ends"})


CLUSTER_BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class ClusterSection:
    """Where the workers run: processes on this host (local), or Ray actors over a cluster."""

    backend: str = field(default="local", metadata={
        "choices": CLUSTER_BACKENDS, "help": "local: worker processes on this host; ray: Ray actors on a cluster"})
    address: str = field(default="", metadata={
        "help": 'Ray cluster address ("auto", "host:6379", "ray://host:10001"); "" = start a Ray instance here'})
    node_ip_address: str = field(default="", metadata={
        "help": 'this host\'s address in the Ray cluster (Ray\'s --node-ip-address); "" = Ray\'s own guess'})
    telemetry_host: str = field(default="", metadata={
        "help": 'address the aggregator listens on for remote senders; "" = this node\'s address as Ray sees it'})
    telemetry_port: int = field(default=0, metadata={
        "min": 0, "max": 65535, "help": "port of that listener; 0 = a free one"})
    worker_cpus: float = field(default=1.0, metadata={
        "min": 0, "help": "CPUs Ray reserves for each worker actor (fractions allowed)"})
    node_resource_prefix: str = field(default="triton-host:", metadata={
        "help": "custom Ray resource that marks the node of a server host: <prefix><host>"})


@dataclass(frozen=True)
class TargetSection:
    """One `[[targets]]` entry: a running server of a fleet the load is spread over."""

    url: str = field(metadata={"help": "HTTP address of the server (host:port)"})
    name: str = field(default="", metadata={"help": 'name in the report; "" = the URL'})
    grpc_url: str = field(default="", metadata={"help": '"" = HTTP port + 1'})
    metrics_url: str = field(default="", metadata={"help": '"" = HTTP port + 2'})
    host: str = field(default="", metadata={
        "help": 'the node the server runs on (placement of shm workers and of its monitor); "" = the URL\'s host'})
    weight: float = field(default=1.0, metadata={"min_exclusive": 0, "help": "share of the workers"})


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    server: ServerSection = field(default_factory=ServerSection)
    models: RepoOptions = field(default_factory=RepoOptions)
    workers: WorkersSection = field(default_factory=WorkersSection)
    scenarios: ScenariosSection = field(default_factory=ScenariosSection)
    detectors: DetectorsSection = field(default_factory=DetectorsSection)
    report: ReportSection = field(default_factory=ReportSection)
    perf: PerfSection = field(default_factory=PerfSection)
    load: tuple[LoadSection, ...] = field(default=(), metadata={"help": "models of your own to drive"})
    cluster: ClusterSection = field(default_factory=ClusterSection)
    targets: tuple[TargetSection, ...] = field(default=(), metadata={
        "help": "a fleet of running servers to spread the load over; () = the [server] one"})
    source: Path | None = field(default=None, metadata={"help": "the file this config came from"})
