"""`lazylayer snapshotter`: containerd.services.snapshots.v1.Snapshots over a unix socket.

containerd registers it as a proxy plugin (``[proxy_plugins.lazylayer] type = "snapshot"``) and
keeps its own namespaced metadata above it; we see its backend keys. The servicer only converts
messages and maps typed errors to the gRPC codes containerd's errdefs understands
(ALREADY_EXISTS is how a remote Prepare says "committed, don't unpack"). The work is in
snapshots.py. A plain thread-pool gRPC server: every call is short filesystem and LMDB work,
except a remote Prepare waiting on the front's resolve, which holds one thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lazylayer.daemon.snapshotter.metadata import Snapshot
from lazylayer.daemon.snapshotter.proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from lazylayer.daemon.snapshotter.remote import LayerStore
from lazylayer.daemon.snapshotter.snapshots import Mount, Snapshotter
from lazylayer.shared.config import Config
from lazylayer.shared.errors import (AlreadyExistsError, ConfigError, LazyLayerError, NotFoundError,
                                     PreconditionError, ProtocolError)
from lazylayer.shared.logs import setup_logging
from lazylayer.shared.perms import private_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

_CODES: tuple[tuple[type[LazyLayerError], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_code(exc: LazyLayerError) -> grpc.StatusCode:
    """containerd's errdefs reads these codes; a layer the store cannot serve now is UNAVAILABLE."""
    return next((code for kind, code in _CODES if isinstance(exc, kind)), grpc.StatusCode.UNAVAILABLE)


def _mounts(found: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in found]


def _stamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def _info(snapshot: Snapshot) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(name=snapshot.name, parent=snapshot.parent, kind=int(snapshot.kind),
                              created_at=_stamp(snapshot.created), updated_at=_stamp(snapshot.updated),
                              labels=snapshot.labels)


class SnapshotsServicer(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, snapshotter: Snapshotter) -> None:
        self.s = snapshotter

    def _call(self, context: grpc.ServicerContext, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except LazyLayerError as exc:
            code = status_code(exc)
            if code is not grpc.StatusCode.ALREADY_EXISTS:
                log.info("%s: %s", what, exc)
            context.abort(code, str(exc))
        except OSError as exc:
            log.warning("%s: %s", what, exc)
            context.abort(grpc.StatusCode.UNKNOWN, f"{what}: {exc.strerror or exc}")
        raise AssertionError("unreachable")  # abort raises

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = self._call(context, f"prepare {request.key}",
                           lambda: self.s.prepare(request.key, request.parent, dict(request.labels)))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(found))

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = self._call(context, f"view {request.key}",
                           lambda: self.s.view(request.key, request.parent, dict(request.labels)))
        return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(found))

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = self._call(context, f"mounts {request.key}", lambda: self.s.mounts(request.key))
        return snapshots_pb2.MountsResponse(mounts=_mounts(found))

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._call(context, f"commit {request.key}",
                   lambda: self.s.commit(request.name, request.key, dict(request.labels)))
        return empty_pb2.Empty()

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._call(context, f"remove {request.key}", lambda: self.s.remove(request.key))
        return empty_pb2.Empty()

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = self._call(context, f"stat {request.key}", lambda: self.s.stat(request.key))
        return snapshots_pb2.StatSnapshotResponse(info=_info(found))

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        found = self._call(context, f"update {request.info.name}",
                           lambda: self.s.update(request.info.name, dict(request.info.labels), paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(found))

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        found = self._call(context, "list", lambda: self.s.list(list(request.filters)))
        for start in range(0, len(found), 100):  # containerd streams batches too
            yield snapshots_pb2.ListSnapshotsResponse(info=[_info(s) for s in found[start:start + 100]])

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        size, inodes = self._call(context, f"usage {request.key}", lambda: self.s.usage(request.key))
        return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._call(context, "cleanup", self.s.cleanup)
        return empty_pb2.Empty()


class _Collector:
    """Scrape-time metrics: snapshots by kind and how Prepares went."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.s = snapshotter

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily("lazylayer_snapshots", "snapshots by kind (remote: served by the layer store)",
                                  labels=["kind"])
        for kind, count in self.s.summary().items():
            gauge.add_metric([kind], count)
        yield gauge
        prepares = CounterMetricFamily("lazylayer_snapshot_prepares", "Prepares by outcome (remote: committed "
                                       "from the layer store; local: unpacked; fallback: remote asked, unpacked)",
                                       labels=["outcome"])
        for outcome, count in vars(self.s.counts).items():
            prepares.add_metric([outcome], count)
        yield prepares


@dataclass
class RunningSnapshotter:
    server: grpc.Server
    snapshotter: Snapshotter
    address: str
    _stop: threading.Event

    def stop(self) -> None:
        self._stop.set()
        self.server.stop(grace=5).wait()
        self.snapshotter.close()
        try:
            os.unlink(self.address)
        except FileNotFoundError:
            pass


def start(config: Config) -> RunningSnapshotter:
    """Open the metadata, bind the socket (a stale one from a crash is replaced), serve."""
    options = config.snapshotter
    metrics_host, _, metrics_port = options.metrics_address.rpartition(":")
    if options.metrics_address and (not metrics_host or not metrics_port.isdigit()):
        raise ConfigError(f"snapshotter.metrics_address: {options.metrics_address!r} is not HOST:PORT")
    private_dir(options.root)
    snapshotter = Snapshotter(options.root, LayerStore(config.daemon.mountpoint, config.daemon.run_dir, options.resolve_timeout))
    address = options.address
    os.makedirs(os.path.dirname(address) or ".", mode=0o700, exist_ok=True)
    try:
        os.unlink(address)
    except FileNotFoundError:
        pass
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"))
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsServicer(snapshotter), server)
    if server.add_insecure_port(f"unix:{address}") == 0:
        snapshotter.close()
        raise ConfigError(f"snapshotter.address: cannot listen on {address}")
    server.start()
    os.chmod(address, 0o600)  # containerd runs as root; nobody else may create snapshots
    stop = threading.Event()
    threading.Thread(target=_watch_front, args=(snapshotter, options.check_interval, stop), daemon=True,
                     name="front-watch").start()
    if options.metrics_address:
        registry = CollectorRegistry()
        registry.register(_Collector(snapshotter))  # type: ignore[arg-type]
        try:
            start_http_server(int(metrics_port), addr=metrics_host.strip("[]"), registry=registry)
        except OSError as exc:
            server.stop(grace=0)
            snapshotter.close()
            raise ConfigError(f"snapshotter.metrics_address {options.metrics_address}: {exc.strerror or exc}") from None
    log.info("snapshotter on unix:%s (root %s, layer store %s): %s", address, options.root,
             config.daemon.mountpoint, snapshotter.summary())
    return RunningSnapshotter(server, snapshotter, address, stop)


def _watch_front(snapshotter: Snapshotter, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            snapshotter.check_front()
        except Exception:  # never let the watcher die: the next round retries
            log.exception("checking the front failed")


def serve_forever(config: Config, load: Callable[[], Config]) -> int:
    """Until SIGTERM/SIGINT. Mounts are containerd's: stopping leaves every container running.
    SIGHUP re-reads the log settings with ``load`` (as the front and the workers do)."""
    running = start(config)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: _reload(load))
    done.wait()
    log.info("snapshotter stopping")
    running.stop()
    return 0


def _reload(load: Callable[[], Config]) -> None:
    try:
        config = load()
    except LazyLayerError as exc:
        log.error("reload refused: %s", exc)
        return
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    log.info("reloaded: log level %s, format %s", config.daemon.log_level, config.daemon.log_format)
