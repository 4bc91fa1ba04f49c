"""The server factory: Ray, the job store, the scheduler, the gRPC server and the metrics endpoint."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import TextIO

import grpc
import ray
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from service.admission import Admission
from service.auth import AuthInterceptor
from service.config import ServerConfig
from service.interceptors import ErrorMappingInterceptor
from service.jobs import JobStore
from service.limits import StreamLimiter, StreamLimitInterceptor
from service.metrics import Metrics
from service.ray_start import init_ray
from service.ray_watchdog import GcsProbe, RayWatchdog, embedded_processes, kill_embedded_ray
from service.scheduler import Scheduler
from service.servicer import CoordinatorServicer
from service.startup import (
    check_folders,
    check_host,
    check_ray_address,
    check_tls_files,
    grpc_port_error,
    host_port,
    load_tokens,
    lock_state_dir,
    start_metrics_http,
)

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
EXIT_RAY_LOST = 1  # `gradfleet serve`'s status when its embedded Ray's raylet or GCS died under it


@dataclass
class RunningServer:
    """A started coordinator; `port` and `metrics_port` are the bound ports (useful with port 0)."""

    config: ServerConfig
    port: int
    metrics_port: int | None
    grpc_server: grpc.Server
    store: JobStore
    scheduler: Scheduler
    servicer: CoordinatorServicer
    metrics: Metrics
    health: health.HealthServicer
    streams: StreamLimiter  # every open stream, of every kind
    _http: object = None
    _owns_ray: bool = False
    _lock: TextIO | None = None  # the state folder's lock file, held until stop
    _watchdog: RayWatchdog | GcsProbe | None = None  # on the embedded Ray, or a cluster's GCS
    ray_lost: threading.Event = field(default_factory=threading.Event)  # set when the embedded Ray died

    @property
    def address(self) -> str:
        return host_port(self.config.host, self.port)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking calls, interrupt running jobs (they re-queue on the next start), close."""
        if self._watchdog is not None:
            self._watchdog.stop()  # first: ray.shutdown below stops the raylet and the GCS
        self.servicer.stopping.set()  # first: a client that saw NOT_SERVING cannot submit any more
        self.health.enter_graceful_shutdown()
        self.store.wake_all()
        # Jobs checkpoint while gRPC still answers: a submit meanwhile gets the servicer's
        # UNAVAILABLE, where a stopped gRPC server could leave it to be CANCELLED after the grace.
        self.scheduler.stop()
        self.grpc_server.stop(grace_s).wait(grace_s)
        self.metrics.close()
        if self._http is not None:
            _close_http(self._http)
        self.store.close()
        if self._owns_ray:
            ray.shutdown()
        if self._lock is not None:
            self._lock.close()  # last: another coordinator may take the folder from here on

    def abandon(self, grace_s: float = 1.0) -> None:
        """Close down after the embedded Ray died: jobs can neither train nor checkpoint without it,
        so their records stay as a SIGKILL leaves them (the next start resumes them from their
        checkpoints); stop answering, close the store and release the state folder."""
        self.servicer.stopping.set()
        self.health.enter_graceful_shutdown()
        self.store.wake_all()
        self.grpc_server.stop(grace_s).wait(grace_s + 1)
        self.store.close()  # a runner's later write then fails instead of recording Ray's loss as its own
        self.metrics.close()
        if self._http is not None:
            _close_http(self._http)
        if self._owns_ray:
            kill_embedded_ray()
        if self._lock is not None:
            self._lock.close()


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured PEM files (None: plaintext); mTLS with a client CA."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    pair = (config.tls_key.read_bytes(), config.tls_cert.read_bytes())
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def start_server(config: ServerConfig) -> RunningServer:
    """Check the settings and folders, lock the state folder and bind both ports (all before Ray starts),
    then start."""
    check_host(config.host, config.option("host"))
    check_tls_files(config.tls_cert, config.tls_key, config.tls_client_ca)
    tokens = load_tokens(config.tokens_file, config.option("tokens_file")) if config.tokens_file else None
    if config.ray_address and not ray.is_initialized():
        check_ray_address(config.ray_address, config.option("ray_address"))
    credentials = _server_credentials(config)
    check_folders(config.state_dir, config.data_root)
    with contextlib.ExitStack() as undo:  # on a failed start, release what was taken so far
        lock = lock_state_dir(config.state_dir)
        undo.callback(lock.close)
        registry = CollectorRegistry()
        http, metrics_port = None, None
        if config.metrics_port >= 0:
            http, metrics_port = start_metrics_http(config.host, config.metrics_port, registry)
            undo.callback(_close_http, http)
        store = JobStore(config.state_dir)
        undo.callback(store.close)
        metrics = Metrics(registry, store.counts_by_state, config.metrics_retire_after_s)
        undo.callback(metrics.close)
        streams = StreamLimiter(config.max_watch_streams, config.max_watch_streams_per_client)
        server, port = _bind_grpc(config, credentials, tokens, metrics, streams)
        undo.callback(server.stop, None)
        owns_ray = init_ray(config)
        if owns_ray:
            undo.callback(ray.shutdown)
        running = _start_services(config, server, port, metrics_port, store, metrics, streams, http, owns_ray)
        running._lock = lock
        if owns_ray:
            running._watchdog = _watch_embedded_ray(running.ray_lost)
        elif config.ray_address:
            running._watchdog = _probe_gcs()
        undo.pop_all()
    log.info(
        "gradfleet coordinator on %s (%s, %s), %s",
        host_port(config.host, port),
        _transport(config),
        "tokens required" if tokens else "no authentication",
        f"metrics on port {metrics_port}" if metrics_port is not None else "metrics off",
    )
    return running


def _transport(config: ServerConfig) -> str:
    if config.tls_cert is None:
        return "plaintext"
    return "TLS, client certificates required" if config.tls_client_ca else "TLS"


def _watch_embedded_ray(ray_lost: threading.Event) -> RayWatchdog | None:
    """Watch the embedded Ray's raylet and GCS; the death of either logs the way out and sets `ray_lost`."""
    processes = embedded_processes()
    for name in ("raylet", "GCS"):
        if name not in processes:
            log.warning("cannot find the embedded Ray's %s process: its death would go unnoticed", name)
    if not processes:
        return None

    def on_death(name: str, pid: int, returncode: int) -> None:
        log.critical(
            "the embedded Ray's %s (pid %d) died (exit status %d); exiting with status %d; restart "
            "the coordinator on the same --state-dir and its jobs resume from their checkpoints",
            name,
            pid,
            returncode,
            EXIT_RAY_LOST,
        )
        ray_lost.set()

    return RayWatchdog(processes, on_death).start()


def _probe_gcs() -> GcsProbe | None:
    """Log when the cluster's GCS stops answering (Ray then ends the process unless it comes back)."""
    try:
        address = ray.get_runtime_context().gcs_address
        return GcsProbe(address).start()
    except Exception as exc:  # a Ray Client connection (ray://) has no GCS address of its own
        log.warning("cannot watch the Ray cluster's GCS (%s): its loss would go unlogged until Ray acts", exc)
        return None


def _close_http(http) -> None:
    http.shutdown()
    http.server_close()


def _bind_grpc(
    config: ServerConfig, credentials, tokens, metrics: Metrics, streams: StreamLimiter
) -> tuple[grpc.Server, int]:
    """A gRPC server bound to the configured port; another process on that port is an error, not a
    shared port (gRPC's default SO_REUSEPORT would split the calls between the two at random)."""
    # The error mapper is outermost, so refused tokens and streams are mapped and counted like any
    # error; the stream cap is innermost, so a call without a valid token never takes a place.
    interceptors = [ErrorMappingInterceptor(on_call=metrics.record_call)]
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens))
    interceptors.append(StreamLimitInterceptor(streams))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.rpc_threads, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    address = host_port(config.host, config.port)
    try:
        port = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
    except RuntimeError as exc:  # recent gRPC raises; older versions return 0
        raise grpc_port_error(address, exc) from None
    if port == 0:
        raise grpc_port_error(address, "the port is in use or the address is not local")
    return server, port


def _start_services(
    config: ServerConfig,
    server: grpc.Server,
    port: int,
    metrics_port: int | None,
    store: JobStore,
    metrics: Metrics,
    streams: StreamLimiter,
    http,
    owns_ray: bool,
) -> RunningServer:
    """Add the services to the bound server and start the scheduler and the server."""
    scheduler = Scheduler(store, metrics, config)
    metrics.read_live_values(scheduler.queued_jobs, scheduler.oldest_queued_seconds, scheduler.workers_alive)
    admission = Admission(config, scheduler.cache)
    servicer = CoordinatorServicer(store, scheduler, config, admission)
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    scheduler.start()
    try:
        server.start()
    except Exception:
        scheduler.stop(timeout_s=5)  # no job may run behind a server that never started
        raise
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        config,
        port,
        metrics_port,
        server,
        store,
        scheduler,
        servicer,
        metrics,
        health_servicer,
        streams,
        http,
        owns_ray,
    )


class StartupInterrupted(BaseException):
    """SIGTERM or SIGINT came while the coordinator was starting. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (Ray's included) swallows it."""


def serve(config: ServerConfig) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully. One during start-up stops what was
    started so far (Ray's processes included) and returns as well: the exit status is 0 either way."""
    faulthandler.enable()  # a crash of this process prints every thread's Python stack (see ray_start)
    stop = threading.Event()
    starting = True

    def on_signal(signum: int, _frame) -> None:
        if starting and not stop.is_set():  # once: a second signal must not break off the clean-up
            stop.set()
            raise StartupInterrupted(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    running: RunningServer | None = None
    try:
        running = start_server(config)  # undoes what it did on the way out
        starting = False
    except StartupInterrupted as exc:
        if running is not None:  # the signal came just after the start
            running.stop()
        log.info("%s during start-up: stopped what had started; exiting", exc)
        return
    print(
        f"gradfleet coordinator listening on {running.address}"
        + (
            f", metrics on http://{host_port(config.host, running.metrics_port)}/metrics"
            if running.metrics_port
            else ""
        ),
        flush=True,
    )
    while not stop.wait(0.5) and not running.ray_lost.is_set():  # timed: signal handlers run promptly
        pass
    if running.ray_lost.is_set():
        running.abandon()
        logging.shutdown()
        # Not sys.exit: job threads blocked on the dead Ray, and Ray's exit hook, would hold the exit.
        os._exit(EXIT_RAY_LOST)
    log.info("shutting down")
    running.stop()
