"""The daemon's trio main: config, cache, worker pool, Resolver, the FUSE mount, control socket,
signals. `lazylayer daemon` runs `run_daemon`.

Everything lives in ONE trio loop in one thread (limits §7): pyfuse3's request tasks, the worker
pool's ZeroMQ pump, the control socket's pump, the Resolver's eviction loop and the layers' fetch
tasks. Workers are exec'd by the pool; this process never forks after opening ZeroMQ or LMDB.

Start-up refuses clearly (MountError) when /dev/fuse is missing, when another daemon holds the run
dir's lock, or when something else is mounted on the mountpoint; a stale mount of ours left by a
crashed daemon (ENOTCONN) is unmounted first, so a restart after SIGKILL just works, and the
LMDB cache it finds is as warm as it was. SIGTERM/SIGINT unmount the views `lazylayer mount`
made, then the FUSE mount, and stop the workers.

With a FUSE connection holder running (`lazylayer holder`, daemon/holder.py) a front never
unmounts: it takes the holder's connection over when there is one (after a crash, or from a front
it asks to hand over: an upgrade), or mounts and gives the holder the new one; SIGTERM/SIGINT then
finish the requests in hand and leave everything mounted for the next front.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from lazylayer.daemon import dircache, fusedispatch, mounts
from lazylayer.daemon.control import ControlServer
from lazylayer.daemon.earlyworkers import EarlyWorkers
from lazylayer.daemon.fetchstats import FetchObserver
from lazylayer.daemon.fs import FsSettings, LazyFS
from lazylayer.daemon.fuseconn import Connection, mount_fuse, resend, start_session
from lazylayer.daemon.holder import Handover, HolderLink
from lazylayer.daemon.journal import live_mounts
from lazylayer.daemon.layout import IMAGES_DIR, Kind, LayoutNode, encode_ref
from lazylayer.daemon.layer import Layer, Resolver, ResolverSettings
from lazylayer.daemon.pool import WorkerPool
from lazylayer.daemon.profiles import ProfileSettings, Profiling
from lazylayer.daemon.fetchsettings import FetchSettings
from lazylayer.daemon.remote import EXCLUSIVE_KINDS, Remote
from lazylayer.daemon.startup import DaemonOptions, clean_run_dir, worker_command
from lazylayer.daemon.viewconn import ViewsConnection
from lazylayer.shared.config import Config, config_changes, load_config
from lazylayer.shared.errors import LazyLayerError, MountError, NotFoundError
from lazylayer.shared.logs import redact, setup_logging
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import LayerRecord, Layers
from lazylayer.shared.store.merged import MergedViews

if TYPE_CHECKING:
    from lazylayer.daemon.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class UserMount:
    """A `lazylayer mount` made through this daemon: what to release and unmount."""

    target: str
    ref: str
    layers: list[Layer]
    writable: bool
    view_id: int | None = None
    state_dir: str = ""


@dataclass
class Daemon:
    options: DaemonOptions
    fs: LazyFS
    resolver: Resolver
    remote: Remote
    pool: WorkerPool
    #: the config in effect (SIGHUP compares the file against it)
    config: Config
    profiling: Profiling
    #: the merged views' read-only connection (daemon/viewconn.py)
    views: ViewsConnection
    user_mounts: dict[str, UserMount] = field(default_factory=dict)
    #: cap the next janitor job makes the shared one (the config's at start, then on SIGHUP)
    pending_budget: int | None = None
    janitor_wake: trio.Event = field(default_factory=trio.Event)
    #: the FUSE connection holder (None: none runs, a stop unmounts) and how often it was taken over
    holder: HolderLink | None = None
    takeovers: int = 0

    # -- cache upkeep --------------------------------------------------------------------------

    def set_budget(self, budget: int) -> None:
        self.pending_budget = budget
        self.janitor_wake.set()

    async def janitor_loop(self, interval: float) -> None:
        """Every ``interval`` (or at once when the cap changes) a worker applies our read
        accesses to the LRU order and trims the cache: the front never writes LMDB."""
        while True:
            with trio.move_on_after(interval):
                await self.janitor_wake.wait()
            self.janitor_wake = trio.Event()
            budget = self.pending_budget
            try:
                report = await self.remote.janitor(budget)
            except LazyLayerError as exc:
                log.warning("cache janitor: %s", exc)
                continue
            if budget is not None and self.pending_budget == budget:
                self.pending_budget = None
                log.info("cache cap is now %d bytes", report["budget"])
            log.debug("cache janitor: %d accesses applied", report["accesses_applied"])
            if report["bytes_evicted"] or report["stale_readers"]:
                log.info("cache janitor: evicted %d bytes, freed %d stale reader slots, %d bytes cached",
                         report["bytes_evicted"], report["stale_readers"], report["accounted_bytes"])

    # -- control ops -------------------------------------------------------------------------

    def handlers(self) -> dict[str, Any]:
        return {"status": self.status, "image": self.image, "open_view": self.open_view,
                "record_mount": self.record_mount, "umount": self.umount, "prefetch_layer": self.prefetch_layer,
                "fetch_layer": self.fetch_layer, "profile_flush": self.profile_flush}

    def images_inode(self) -> int:
        """MNT/.images's inode: the views connection's root (daemon/viewconn.py)."""
        inode = self.fs.layout.inode(LayoutNode(Kind.IMAGES))
        assert inode is not None  # the first layout nodes always have room
        return inode

    def layer_path(self, ref: str, digest: str) -> str:
        return os.path.join(self.options.mountpoint, encode_ref(ref), digest, "diff")

    async def image(self, params: dict[str, Any]) -> dict[str, Any]:
        """Resolve an image and every layer (verified, prefetch waited for); the layers are
        served under MNT/<base64(ref)>/<digest>/diff from now on."""
        ref = str(params["ref"])
        image = await self.resolver.resolve_image(ref)
        layers = await self._hold_all(ref, [desc.digest for desc in image.layers])
        return {"ref": image.ref, "manifest_digest": image.manifest_digest, "cache_dir": self.options.cache_dir,
                "mountpoint": self.options.mountpoint,
                "layers": [{"digest": l.digest, "size": l.record.blob_size, "path": self.layer_path(ref, l.digest)}
                           for l in layers]}

    async def _hold_all(self, ref: str, digests: list[str]) -> list[Layer]:
        """`fs.hold` of every layer at once: each resolve is a TOC fetch and a prefetch, and
        one image's layers have nothing to wait for each other. Raises the error of the first
        failing layer in manifest order, whichever finished first: the same image gives the same
        message every time."""
        held: dict[str, Layer] = {}
        errors: dict[str, LazyLayerError] = {}

        async def hold(digest: str) -> None:
            try:
                held[digest] = await self.fs.held.hold(ref, digest)
            except LazyLayerError as exc:
                errors[digest] = exc

        async with trio.open_nursery() as nursery:
            for digest in dict.fromkeys(digests):
                nursery.start_soon(hold, digest)
        for digest in digests:
            if digest in errors:
                raise errors[digest]
        return [held[digest] for digest in digests]

    async def _acquire_all(self, ref: str, digests: list[str]) -> list[Layer]:
        out: list[Layer] = []
        try:
            for digest in digests:
                out.append(await self.resolver.resolve(ref, await self.resolver.descriptor(ref, digest)))
        except BaseException:
            for layer in out:
                layer.done()
            raise
        return out

    async def open_view(self, params: dict[str, Any]) -> dict[str, Any]:
        """Serve the merged view of ``layers`` (created in LMDB by the CLI) at MNT/.images/<id>
        for a mount at ``target``; its layers stay referenced until `umount`."""
        ref, target, digests = str(params["ref"]), os.path.abspath(params["target"]), list(params["layers"])
        view = MergedViews(self.remote.store).get(digests)
        if view is None:
            raise NotFoundError(f"no merged view of {len(digests)} layers of {ref} in the cache")
        layers = await self._acquire_all(ref, digests)
        await self.views.ensure(self.images_inode(), self.holder)  # first: the CLI binds what the path is then
        self.fs.views[view.view_id] = layers
        self.user_mounts[target] = UserMount(target, ref, layers, False, view.view_id)
        self._journal_mount(self.user_mounts[target])
        return {"path": os.path.join(self.options.mountpoint, IMAGES_DIR.decode(), str(view.view_id)),
                "view_id": view.view_id}

    async def record_mount(self, params: dict[str, Any]) -> dict[str, Any]:
        """An overlay mount of our layer diffs at ``target`` (made by the CLI)."""
        ref, target = str(params["ref"]), os.path.abspath(params["target"])
        layers = await self._acquire_all(ref, list(params["layers"]))
        self.user_mounts[target] = UserMount(target, ref, layers, True, None, str(params.get("state_dir", "")))
        self._journal_mount(self.user_mounts[target])
        return {"target": target}

    def _journal_mount(self, mount: UserMount) -> None:
        if self.holder is not None:
            self.holder.record({"mount": {"target": mount.target, "ref": mount.ref,
                                          "layers": [layer.digest for layer in mount.layers],
                                          "writable": mount.writable, "view_id": mount.view_id,
                                          "state_dir": mount.state_dir}})

    async def watch_holder(self, conn: Connection, interval: float = 1.0) -> None:
        """A front without a holder (none ran yet at its start, or it restarted) keeps looking for
        one and hands it the connection and the whole journal: supervisord starts the holder and
        the front at the same moment, and a restarted holder must not leave the mounts unprotected."""
        while True:
            if self.holder is None or not self.holder.alive():
                link = HolderLink.connect(self.options.run_dir)
                if link is not None:
                    try:
                        await self._attach_holder(link, conn)
                    except (OSError, LazyLayerError) as exc:
                        log.warning("cannot hand the connection to the holder: %s", exc)
                        link.close()
            await trio.sleep(interval)

    async def _attach_holder(self, link: HolderLink, conn: Connection) -> None:
        handover = await trio.to_thread.run_sync(link.hello, 10.0)
        if handover.conn is not None:  # it holds another connection: not ours to replace
            os.close(handover.conn.fd)
            if handover.views is not None:
                os.close(handover.views.fd)
            raise MountError(f"the holder already holds a connection of {handover.conn.mountpoint}")
        link.adopt(conn)
        self.views.adopt(link)
        for record in self.fs.journal.records():
            link.record(record)
        old, self.holder = self.holder, link
        for mount in self.user_mounts.values():
            self._journal_mount(mount)
        self.fs.journal.attach(link.record)
        if old is not None:
            old.close()
        log.info("the FUSE connection holder has the connection of %s now", conn.mountpoint)

    def restore_mounts(self, journal: list[dict[str, Any]]) -> list[UserMount]:
        """After a takeover: the user mounts the previous front recorded (still mounted: the
        connection never went away) are ours again at once; `acquire_restored` takes their
        layers (a resolve each) in the background."""
        restored = []
        for m in live_mounts(journal).values():
            mount = UserMount(m["target"], m["ref"], [], m["writable"], m["view_id"], m["state_dir"])
            if mount.view_id is not None:
                self.fs.views[mount.view_id] = []
            self.user_mounts[mount.target] = mount
            restored.append(mount)
        return restored

    async def acquire_restored(self, restored: list[UserMount], journal: list[dict[str, Any]]) -> None:
        digests = {m["mount"]["target"]: m["mount"]["layers"] for m in journal if "mount" in m}
        for mount in restored:
            try:
                layers = await self._acquire_all(mount.ref, digests[mount.target])
            except LazyLayerError as exc:
                log.warning("layers of mount %s (%s) not held again after the takeover: %s", mount.target,
                            mount.ref, exc)
                continue
            if self.user_mounts.get(mount.target) is not mount:  # unmounted meanwhile
                for layer in layers:
                    layer.done()
                continue
            mount.layers = layers
            if mount.view_id is not None:
                self.fs.views[mount.view_id] = layers

    async def umount(self, params: dict[str, Any]) -> dict[str, Any]:
        """Forget a user mount (the CLI unmounted it): release its layers and its view."""
        target = os.path.abspath(params["target"])
        mount = self.user_mounts.pop(target, None)
        if mount is None:
            raise NotFoundError(f"{target} is not a lazylayer mount of this daemon")
        if self.holder is not None:
            self.holder.record({"umount": target})
        self._release(mount)
        return {"writable": mount.writable, "state_dir": mount.state_dir}

    def _release(self, mount: UserMount) -> None:
        for layer in mount.layers:
            layer.done()
        if mount.view_id is not None and not any(m.view_id == mount.view_id for m in self.user_mounts.values()):
            self.fs.views.pop(mount.view_id, None)

    async def prefetch_layer(self, params: dict[str, Any]) -> dict[str, Any]:
        layer = await self.fs.held.hold(str(params["ref"]), str(params["digest"]))
        fetched = await layer.prefetch()
        return {"bytes": fetched, "info": layer.info().to_dict(), "error": layer.error()}

    async def fetch_layer(self, params: dict[str, Any]) -> dict[str, Any]:
        """The whole blob now (the same pieces the background walk fetches: jobs are shared)."""
        layer = await self.fs.held.hold(str(params["ref"]), str(params["digest"]))
        await self.remote.background_fetch(layer.ref, layer.current_record())
        return {"info": layer.info().to_dict(), "error": layer.error()}

    async def profile_flush(self, params: dict[str, Any]) -> dict[str, Any]:
        """End the recording of an image now and have it stored (`lazylayer profile push`); an
        image this daemon never resolved has none (and is not resolved for the asking)."""
        image = self.resolver.cached_image(str(params["ref"]))
        if image is None:
            return {"manifest": None, "recorded": False}
        return await self.profiling.flush(image.manifest_digest)

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        layers = []
        seen = set()
        for layer in self.fs.held.layers() + self.resolver.layers():
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            layers.append({"ref": layer.ref, "digest": layer.digest, "layer_id": layer.layer_id,
                           "verified": layer.verified, "references": layer.refs, "info": layer.info().to_dict(),
                           "error": layer.error(), **_origin(layer.record)})
        cached = [{"digest": r.digest, "state": r.state.value, "size": r.blob_size, "fetched": r.fetched_bytes,
                   "error": r.last_error, **_origin(r)} for r in Layers(self.remote.store).all()]
        return redact({  # errors may quote a mirror URL: no credentials in status
            "pid": os.getpid(),
            "mountpoint": self.options.mountpoint,
            "takeovers": self.takeovers,
            "cache_dir": self.options.cache_dir,
            "dircache": dircache.status(),
            "views": self.views.status(),
            "layers": layers,
            "cached_layers": cached,
            # trio's clock is monotonic: `when` is shown on the wall clock, as every other time
            "failures": [dataclasses.asdict(f) | {"when": wall_clock(f.when)} for f in self.resolver.failures.values()],
            "mounts": [{"target": m.target, "ref": m.ref, "writable": m.writable, "view_id": m.view_id}
                       for m in self.user_mounts.values()],
            "workers": self.pool.status().to_dict(),
            "cache": dataclasses.asdict(ChunkStore(self.remote.store).stats()),
            "fetch": {k: v for k, v in dataclasses.asdict(self.remote.stats).items() if k != "by_worker"},
            "profiles": self.profiling.status(),
            "mirrors": self.remote.mirrors.status(),
        })

    def unmount_user_mounts(self) -> None:
        """At stop: unmount every `lazylayer mount` and drop the upper/work dirs of writable ones
        (they are throw-away by design, and run_dir is usually RAM)."""
        for mount in list(self.user_mounts.values()):
            try:
                mounts.unmount(mount.target, lazy=True)
            except MountError as exc:
                log.warning("%s; leaving its state in %s", exc, mount.state_dir or "place")
            else:
                if mount.state_dir:  # detached: nothing can reach its upper/work dirs any more
                    shutil.rmtree(mount.state_dir, ignore_errors=True)
            self._release(mount)
        self.user_mounts.clear()


def _origin(record: LayerRecord) -> dict[str, str]:
    """Where a layer's bytes come from and what decodes them (recorded by the registering worker)."""
    return {"source": record.source, "source_location": record.source_location,
            "decompressor": record.decompressor}


def wall_clock(trio_time: float) -> float:
    """A ``trio.current_time()`` instant as seconds since the epoch."""
    return time.time() - (trio.current_time() - trio_time)


def fuse_options(config: Config) -> set[str]:
    """nosuid,nodev: a stranger's image must not give a local user a setuid-root binary or a
    device node through the store (containers get their own overlay mounts, which decide for
    themselves); default_permissions: the kernel enforces modes, so the store's root-only
    directories keep everyone else from making us fetch."""
    options = {"fsname=lazylayer", "subtype=lazylayer", "default_permissions", "nosuid", "nodev"}
    if config.fuse.allow_other:
        options.add("allow_other")
    return options


async def run_daemon(options: DaemonOptions, lock: int, early_workers: EarlyWorkers | None = None,
                     holder: HolderLink | None = None, handover: Handover | None = None) -> int:
    """Serve until SIGTERM/SIGINT. The caller (daemon/startup.py's steps, in the CLI) has set
    the private umask, holds the run dir's ``lock`` (released here) and may have started
    ``early_workers``, which the pool adopts. ``holder``/``handover``: the FUSE connection
    holder and what it gave (daemon/holder.py `take_connection`, before the lock)."""
    config = options.config
    try:
        mounts.require_fuse()
        if handover is None or handover.conn is None:
            mounts.prepare_mountpoint(options.mountpoint)
        store = open_store(StoreOptions.from_config(config.cache, options.cache_dir), readonly=True)
        try:
            return await _serve(options, store, early_workers, holder, handover)
        finally:
            store.close()
    finally:
        clean_run_dir(options.run_dir)
        os.close(lock)


async def _serve(options: DaemonOptions, store: Any, early_workers: EarlyWorkers | None,
                 holder: HolderLink | None, handover: Handover | None) -> int:
    config = options.config
    w = config.workers
    pool = WorkerPool(f"ipc://{options.run_dir}/workers.sock", spawn=w.count, worker_command=worker_command(options),
                      heartbeat_interval=w.heartbeat_interval, heartbeat_liveness=w.heartbeat_liveness,
                      max_attempts=w.max_attempts, max_groups=w.max_registries,
                      quiet_period=config.background.quiet_period,
                      restart_backoff_max=w.restart_backoff_max, restart_stable_after=w.restart_stable_after,
                      exclusive_kinds=EXCLUSIVE_KINDS, adopt=early_workers)
    metrics = _metrics(config)
    async with pool:
        remote = Remote(pool, store, FetchSettings.from_config(config), metrics or FetchObserver())
        profiling = Profiling(remote, ProfileSettings.from_config(config))
        resolver = Resolver(remote, ResolverSettings.from_config(config),
                            allow_unverified=config.verification.allow_unverified, profiling=profiling)

        fs = LazyFS(store, resolver, FsSettings.from_config(config), metrics.read_done if metrics else None)
        views = ViewsConnection(options.mountpoint, fuse_options(config), config.fuse.read_ahead_kb)
        daemon = Daemon(options, fs, resolver, remote, pool, config, profiling, views, holder=holder,
                        takeovers=handover.takeovers if handover else 0)
        daemon.set_budget(config.cache.max_size)  # the config's cap wins over one a past reload left in LMDB
        if metrics is not None:
            from lazylayer.daemon.metrics import StateSources
            metrics.attach(StateSources.in_trio(lambda: Layers(store).all(), ChunkStore(store).stats, pool.status))
            metrics.serve(config.metrics.address)
        taken = handover.conn if handover is not None else None
        conn = taken or _mount(options, holder)
        try:
            if taken is not None:
                fs.layout.restore(handover.journal)  # type: ignore[union-attr]
                fs.journal.restore(handover.journal)  # type: ignore[union-attr]
                fs.restoring = trio.Event()
            if holder is not None:
                fs.journal.attach(holder.record)
            fs.journal.publish(options.run_dir)
            start_session(fs, conn)
        except BaseException:
            _drop(conn, unmount=taken is None)
            raise
        try:
            log.info("serving %s (cache %s, %d workers%s)", options.mountpoint, options.cache_dir, w.count,
                     f", takeover {daemon.takeovers}" if taken else "")
            async with trio.open_nursery() as nursery:
                fs.attach(nursery)
                remote.attach(nursery)
                await nursery.start(resolver.run)
                await nursery.start(ControlServer(options.run_dir, daemon.handlers()).serve)
                nursery.start_soon(_signals, daemon, options)
                nursery.start_soon(daemon.janitor_loop, config.cache.janitor_interval)
                nursery.start_soon(profiling.run)
                nursery.start_soon(daemon.watch_holder, conn)
                if taken is not None and handover.views is not None:  # type: ignore[union-attr]
                    nursery.start_soon(views.take_over, handover.views, daemon.images_inode())  # type: ignore[union-attr]
                if taken is not None:
                    nursery.start_soon(_restore, daemon, handover.journal)  # type: ignore[union-attr]
                    resend(conn)
                else:
                    nursery.start_soon(_after_init, options.mountpoint, config.fuse.read_ahead_kb)
                fusedispatch.install()
                await pyfuse3.main(max_tasks=config.fuse.max_tasks)
                nursery.cancel_scope.cancel()
        finally:
            handing_over = daemon.holder is not None and not daemon.holder.broken
            if not handing_over:
                daemon.unmount_user_mounts()
            fs.held.clear()
            pyfuse3.close(unmount=False)
            views.close()
            _drop(conn, unmount=not handing_over)
            if not handing_over:
                fs.journal.withdraw(options.run_dir)
            if metrics is not None:
                metrics.close()
    log.info("left %s mounted for the next front" if handing_over else "unmounted %s", options.mountpoint)
    return 0


def _metrics(config: Config) -> Metrics | None:
    """The Prometheus metrics when ``metrics.address`` is set. Otherwise None, and
    prometheus_client is never imported: ~30 ms of every daemon start before the mount, and a
    counter bump per read, for numbers nobody scrapes."""
    if not config.metrics.address:
        return None
    from lazylayer.daemon.metrics import Metrics
    return Metrics()


async def _restore(daemon: Daemon, journal: list[dict[str, Any]]) -> None:
    """After a takeover: the user mounts and layout layers of the journal, resolved again."""
    restored = daemon.restore_mounts(journal)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.acquire_restored, restored, journal)
        nursery.start_soon(daemon.fs.held.hold_again, journal)
    assert daemon.fs.restoring is not None
    daemon.fs.restoring.set()
    log.info("takeover: %d mounts and %d layers served again", len(restored), len(daemon.fs.held.layers()))


def _mount(options: DaemonOptions, holder: HolderLink | None) -> Connection:
    conn = mount_fuse(options.mountpoint, fuse_options(options.config))
    if holder is not None:
        try:
            holder.adopt(conn)
        except OSError as exc:
            holder.broken = True
            log.error("the FUSE connection holder refused the connection (%s): a stop will unmount", exc)
    return conn


def _drop(conn: Connection, *, unmount: bool) -> None:
    """Close our fd of ``conn`` (the holder keeps its own) and, on a real stop, unmount."""
    if unmount:
        try:
            mounts.unmount(conn.mountpoint, lazy=True)
        except MountError as exc:
            log.warning("%s", exc)
    os.close(conn.fd)


async def _after_init(mountpoint: str, read_ahead_kb: int) -> None:
    """Raise the bdi read-ahead once FUSE INIT is done: the kernel clamps it to libfuse's
    max_readahead (128 KiB) when it processes the INIT reply. A stat of the mountpoint from a
    thread returns only after INIT, since the loop must answer it."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    mounts.set_read_ahead(mountpoint, read_ahead_kb)


#: how long a stopping daemon tries to store the recordings under way [s]
PROFILE_STOP_FLUSH = 2.0


async def _signals(daemon: Daemon, options: DaemonOptions) -> None:
    """SIGTERM/SIGINT: leave pyfuse3's loop (the caller unmounts). SIGHUP: apply live knobs."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload(daemon, options)
                continue
            log.info("%s: %s", signal.Signals(signum).name,
                     "handing the mounts over to the next front" if daemon.holder else "unmounting")
            with trio.move_on_after(PROFILE_STOP_FLUSH):  # recordings under way are kept, if quickly
                await daemon.profiling.flush_all()
            pyfuse3.terminate()
            return


def _reload(daemon: Daemon, options: DaemonOptions) -> None:
    """Re-read the config file; apply the live knobs (log level, worker count, cache cap,
    which a worker's janitor job makes every process's); restart-only knobs are logged."""
    try:
        new = load_config(options.config_path, overrides=options.overrides).config
    except LazyLayerError as exc:
        log.error("reload refused: %s", exc)
        return
    changes = config_changes(daemon.config, new)
    daemon.config = new
    if "daemon.log_level" in changes.live or "daemon.log_format" in changes.live:
        setup_logging(new.daemon.log_level, new.daemon.log_format)
    if "workers.count" in changes.live:
        daemon.pool.resize(new.workers.count)
    if "cache.max_size" in changes.live:
        daemon.set_budget(new.cache.max_size)
    log.info("reloaded %s: applied %s", options.config_path or "the environment",
             ", ".join(changes.live) or "nothing new")
    for key in changes.restart:
        log.warning("reload: %s changed; it takes effect after a restart", key)
