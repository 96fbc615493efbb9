"""Profiling on a fleet of devices with Ray: one worker per device, jobs retried elsewhere when one is lost.

Every Ray node offers one unit of a custom resource named after the device kind for each device it
drives: a Jetson joins with ``ray start --address=HEAD:6379 --resources='{"orin": 1}'``. For
``trtprune profile --device orin --ray auto`` the driver starts one worker (a Ray actor needing
``{"orin": 1}``) per unit in the cluster; each worker opens the device's backend where it runs and
keeps it open. Ray places workers only on nodes offering the resource, and each worker reports the
backend key of the hardware it found (engine and version, GPU or ISA, threads, batch, precision):
workers whose key differs from the others' (a Xavier that joined as ``orin``, another TensorRT
version) are left out before any job, and every batch carries its key so a row is never stored
under another device's key.

The driver searches several groups' stairs at once (threads, see ``profile.profile_groups``); each
measurement batch goes to a free worker. A batch lost with its worker (process or node died) is sent
to another worker; the LUT is written only by the driver, so rows land exactly as in a serial run.

``--ray local`` starts a one-machine cluster with ``--ray-workers N`` workers (for a CPU device, each
with its own cores); ``auto`` joins the cluster this machine belongs to (``ray start``, or
``RAY_ADDRESS``); anything else is a Ray address (``HOST:6379`` or ``ray://HOST:10001``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.latency.devices import JETSONS, host_from_env
from trtprune.profiling.profile import time_points

log = logging.getLogger(__name__)

WAIT_S = 0.5  # how often a thread waiting on a worker checks for Ctrl-C / stop()
CHUNK = 48  # points: a larger batch is shared among free workers
CLOSE_S = 30  # how long workers may take to close their backends at the end


class DeviceWorker:
    """A Ray actor owning one device: its backend stays open between batches."""

    def __init__(self, device):

        # the device is the driver's definition, except that a built-in Jetson's host comes from this
        # worker's environment (ORIN_HOST where the worker runs), never from the driver's
        if device.name in JETSONS and device.backend == "ssh":
            device = dataclasses.replace(device, backend="trt", host=None)
        self.device = host_from_env(device).check()
        self.backend = get_backend(self.device).__enter__()  # an unusable engine fails here, named

    def whoami(self) -> dict:
        backend, target = self.backend, self.device.host or ""  # target: the device's ssh host, if remote
        return {
            "key": backend.key(),
            "info": backend.info(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "target": target,
        }

    def time_points(self, points, micro, usual_ref_ms=None, witnesses=()):

        return time_points(self.backend, points, micro, usual_ref_ms, witnesses)

    def close(self) -> None:
        self.backend.__exit__(None, None, None)


@dataclass
class Worker:
    handle: object  # ray.actor.ActorHandle
    key: str = ""
    host: str = ""
    pid: int = 0
    info: dict | None = None
    target: str = ""  # the ssh host of the device it drives ("" if attached)
    jobs: int = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


def choose(found: list[Worker]) -> tuple[str, list[Worker], list[tuple[Worker, str]]]:
    """The fleet's key (the one most workers report), the workers to use, and the others with why.

    A worker on another key is another device (or engine version); of several workers driving one
    device over ssh, only the first is used (two timing one device at once would disturb each other).
    """
    key = Counter(w.key for w in found).most_common(1)[0][0]
    kept, refused, driving = [], [], {}
    for w in found:
        if w.key != key:
            refused.append((w, f"another device: {w.key} (fleet: {key})"))
        elif w.target and w.target in driving:
            refused.append((w, f"drives the same device ({w.target}) as worker {driving[w.target].name}"))
        else:
            if w.target:
                driving[w.target] = w
            kept.append(w)
    return key, kept, refused


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise TrtpruneError(
            "--ray needs Ray, which is not installed", fix="pip install 'trtprune[fleet]' (or pip install ray)"
        ) from e
    return ray


def _cause(e: BaseException) -> str:
    """The first line of a Ray error that names what went wrong in the worker."""
    text = str(e)
    for line in text.splitlines():
        if "TrtpruneError" in line or "Error:" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(e).__name__


class Fleet:
    """``with Fleet(device, "local", workers=2) as fleet: Profiler(None, lut, fleet=fleet)``.

    ``handles`` (tests, advanced use) gives the workers instead of starting one per resource unit.
    """

    def __init__(
        self,
        device,
        address: str = "local",
        workers: int | None = None,
        start_timeout_s: float = 120.0,
        handles: list | None = None,
    ):
        self.device = device
        self.address = address
        self.local_workers = workers
        self.start_timeout_s = start_timeout_s
        self._given = handles
        self.workers: list[Worker] = []
        self.left_out: list[dict] = []  # workers not used, with why
        self.lost: list[str] = []  # workers that died during the run (each one's batch was sent again)
        self._key = ""
        self._idle: queue.Queue[Worker] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started_ray = False

    # -- set-up -----------------------------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        ray = _import_ray()
        try:
            self._connect(ray)
            handles = self._given if self._given is not None else self._start(ray)
            self._admit(ray, handles)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _connect(self, ray) -> None:
        if ray.is_initialized():
            return
        name = self.device.name
        if self.address == "local":
            n = self.local_workers or max(1, (os.cpu_count() or 1) // max(1, self.device.threads))
            kwargs = {"num_cpus": n, "resources": {name: n}, "object_store_memory": 100 * 2**20}
        else:
            _reachable(self.address)
            kwargs = {"address": self.address}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise TrtpruneError(
                f"cannot join the Ray cluster at '{self.address}': {_cause(e)}",
                fix="start one with `ray start --head` (or pass --ray local for this machine alone), "
                "or give the head's address: --ray HOST:6379",
            ) from e
        self._started_ray = True

    def _start(self, ray) -> list:
        name = self.device.name
        units = int(ray.cluster_resources().get(name, 0))
        if units < 1:
            raise TrtpruneError(
                f"no node of the Ray cluster offers the resource '{name}'",
                why="workers run only where a device of this kind is attached",
                fix=f"on each machine driving a {name}: "
                f"""ray start --address=HEAD:6379 --resources='{{"{name}": 1}}'""",
            )
        actor = ray.remote(DeviceWorker)
        options = {"resources": {name: 1}, "num_cpus": 0, "max_restarts": 0, "max_concurrency": 1}
        return [actor.options(**options).remote(self.device) for _ in range(units)]

    def _admit(self, ray, handles: list) -> None:
        """Ask every worker who it is; keep those on the majority key, leave the others out."""
        refs = {h.whoami.remote(): h for h in handles}
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=self.start_timeout_s)
        found = []
        for ref in ready:
            try:
                me = ray.get(ref)
            except ray.exceptions.RayError as e:
                self.left_out.append({"worker": "?", "why": f"did not start: {_cause(e)}"})
                continue
            found.append(Worker(refs[ref], me["key"], me["host"], me["pid"], me["info"], me["target"]))
        for ref in waiting:
            ray.kill(refs[ref])
            self.left_out.append({"worker": "?", "why": f"not ready after {self.start_timeout_s:.0f} s"})
        if not found:
            why = "; ".join(w["why"] for w in self.left_out) or "none started"
            raise TrtpruneError(
                f"no Ray worker could open device '{self.device.name}' ({why})",
                fix=f"run `trtprune profile --device {self.device.name}` on a worker machine to see why; Ray's logs "
                "are in /tmp/ray/session_latest/logs there",
            )
        self._key, self.workers, refused = choose(found)
        for w, why in refused:
            ray.kill(w.handle)
            self.left_out.append({"worker": w.name, "why": why})
        for w in self.workers:
            self._idle.put(w)
        for w in self.left_out:
            log.warning("Ray worker %s left out: %s", w["worker"], w["why"])
        log.info(
            "Ray fleet for %s: %d worker(s) on %s (%s)",
            self.device.name,
            len(self.workers),
            ", ".join(sorted({w.host for w in self.workers})),
            self._key,
        )

    def __exit__(self, *exc) -> None:
        import ray  # imported by __enter__, the only way here

        self._stop.set()
        if ray.is_initialized():
            # let each live worker close its backend (an ssh backend removes its folder on the device), then stop it
            closing = [w.handle.close.remote() for w in self.workers if w.name not in self.lost]
            if closing:
                with contextlib.suppress(Exception):
                    ray.wait(closing, num_returns=len(closing), timeout=CLOSE_S)
            for w in self.workers:
                with contextlib.suppress(Exception):  # already gone
                    ray.kill(w.handle)
            if self._started_ray:
                ray.shutdown()

    # -- the Profiler's interface ---------------------------------------------------------------------------

    def key(self) -> str:
        return self._key

    def info(self) -> dict:
        info = dict(self.workers[0].info) if self.workers else {"key": self._key}
        info["workers"] = [w.name for w in self.workers]
        return info

    @property
    def retried(self) -> int:
        """Batches sent again after their worker was lost: one per lost worker (a worker runs one at a time)."""
        return len(self.lost)

    @property
    def parallel(self) -> int:
        """Group searches to run at once: two per worker, so a batch is always waiting for each worker."""
        return 2 * len(self.workers)

    def stop(self) -> None:
        """Threads waiting for a worker or a result give up (Ctrl-C in the driver)."""
        self._stop.set()

    def summary(self) -> dict:
        return {
            "workers": len(self.workers),
            "jobs_per_worker": {w.name: w.jobs for w in self.workers},
            "lost": list(self.lost),
            "retried": self.retried,
            "left_out": list(self.left_out),
        }

    def time_points(self, points, micro, usual_ref_ms=None, witnesses=()):
        """Time a batch; a large one is cut into pieces timed on several workers at once (each piece with
        its own copies of the reference and the witnesses, so the ratios of all pieces share one scale)."""
        n = max(1, min(len(self.workers), -(-len(points) // CHUNK)))
        if n == 1:
            return self._time_on_one(points, micro, usual_ref_ms, witnesses)
        size = -(-len(points) // n)
        pieces = [points[i : i + size] for i in range(0, len(points), size)]
        with ThreadPoolExecutor(len(pieces), thread_name_prefix="trtprune-fleet") as pool:
            parts = list(pool.map(lambda piece: self._time_on_one(piece, micro, usual_ref_ms, witnesses), pieces))
        if len({p.key for p in parts}) > 1:
            raise TrtpruneError(f"one batch was timed on several devices: {', '.join(sorted({p.key for p in parts}))}")
        ratios = tuple(r for part in parts for r in part.ratios)
        return dataclasses.replace(
            parts[0], ratios=ratios, timed=sum(p.timed for p in parts), runs=sum(p.runs for p in parts)
        )

    def _time_on_one(self, points, micro, usual_ref_ms=None, witnesses=()):
        """Time one batch on a free worker; if the worker dies meanwhile, on another."""
        import ray

        while True:
            worker = self._take()
            ref = worker.handle.time_points.remote(points, micro, usual_ref_ms, witnesses)
            try:
                while True:
                    ready, _ = ray.wait([ref], timeout=WAIT_S)
                    if ready:
                        break
                    if self._stop.is_set():
                        raise KeyboardInterrupt
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._lose(worker, e)
                continue  # the batch goes to another worker
            except ray.exceptions.RayTaskError as e:  # the measurement itself failed: no worker would do better
                self._idle.put(worker)
                raise TrtpruneError(f"timing a batch on worker {worker.name} failed: {_cause(e)}") from e
            worker.jobs += 1
            self._idle.put(worker)
            return result

    def _take(self) -> Worker:
        while True:
            if self._stop.is_set():
                raise KeyboardInterrupt
            try:
                return self._idle.get(timeout=WAIT_S)
            except queue.Empty:
                with self._lock:
                    if len(self.lost) == len(self.workers):
                        raise TrtpruneError(
                            f"every Ray worker for '{self.device.name}' was lost ({', '.join(self.lost)})",
                            fix="restart the workers and run the same command again: what was measured is "
                            "in the LUT and is not measured again",
                        ) from None

    def _lose(self, worker: Worker, e: BaseException) -> None:
        with self._lock:
            self.lost.append(worker.name)
        log.warning("Ray worker %s was lost (%s); its batch goes to another worker", worker.name, _cause(e))


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    hostport = address.removeprefix("ray://")
    if address == "auto" or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise TrtpruneError(
            f"cannot reach the Ray cluster at '{address}': {getattr(e, 'strerror', None) or e}",
            fix="check the head's address and port (`ray status` on the head prints it), or pass --ray local "
            "for this machine alone",
        ) from e
