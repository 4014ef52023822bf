"""Starting the DSI worker processes and joining them in one mx.distributed group.

On one machine (`--workers N`): pick N + 1 free local ports, write a ring hostfile, start N worker
processes with MLX_RANK 1..N, and make this process rank 0. Across machines the user starts every
rank with mlx.launch and a hostfile (see `python -m mlx_spec.dsi`); then MLX_RANK is already set
and nothing is spawned.

The ring backend connects each rank only to its two ring neighbours; workers farther round the
ring are reached through the workers in between (ring.py relays packets), so any number works.

mx.distributed has one global group per process, so the pool is created once and reused by every
DSI decoder in this process. Workers are stopped at exit (shutdown message, then kill).
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import mlx.core as mx

from ..errors import MlxSpecError
from .transport import RingPool

_POOL: Optional["LocalPool"] = None


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _init_group(timeout: float, backend: str = "ring"):
    """mx.distributed.init blocks until every rank connects: run it with a deadline."""
    box = {}

    def target():
        try:
            box["group"] = mx.distributed.init(backend=backend, strict=True)
        except Exception as exc:  # noqa: BLE001  (reported below)
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if "group" in box:
        return box["group"]
    raise MlxSpecError(f"the DSI workers did not connect within {timeout:g} s"
                       + (f": {box['error']}" if "error" in box else ""))


def _wait_ready(processes: list, timeout: float) -> None:
    """Each worker prints one line when its imports are done and it is about to connect."""
    from .worker import READY

    def read(process, lines):
        lines.append(process.stdout.readline().strip())
        for line in process.stdout:  # keep the pipe drained: a full pipe would block the worker
            sys.stderr.write(line)

    lines: list[str] = []
    readers = [threading.Thread(target=read, args=(p, lines), daemon=True) for p in processes]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    while len(lines) < len(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    if len(lines) < len(processes) or any(line != READY for line in lines):
        raise MlxSpecError(f"the DSI workers did not start within {timeout:g} s "
                           "(see their messages above)")


class LocalPool:
    """The ring pool plus the worker processes this process started (if any)."""

    def __init__(self, pool: RingPool, processes: list, model_path: str, hostfile: Optional[str]):
        self.pool, self.processes, self.model_path = pool, processes, model_path
        self.hostfile = hostfile
        self.orchestrator = None  # the one scheduler of this pool (see dsi.decoder)
        if processes:
            pool.on_abandon = self._kill
        atexit.register(self.close)

    def _kill(self, worker: int) -> None:
        """A worker declared hung is stopped: its socket closes, so nothing stays blocked on it."""
        process = self.processes[worker - 1]
        if process.poll() is None:
            process.kill()

    @property
    def workers(self) -> int:
        return len(self.pool.worker_ids)

    def close(self) -> None:
        self.pool.close()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []
        if self.hostfile and os.path.exists(self.hostfile):
            os.unlink(self.hostfile)


def _spawn(workers: int, model_path: str, kv_bits: Optional[int], connect_timeout: float) -> LocalPool:
    if workers < 1:
        raise MlxSpecError(f"--workers must be at least 1, got {workers}")
    ports = free_ports(workers + 1)
    fd, hostfile = tempfile.mkstemp(prefix="mlxspec-dsi-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump([[f"127.0.0.1:{port}"] for port in ports], f)
    command = [sys.executable, "-m", "mlx_spec.dsi.worker", "--model", model_path]
    if kv_bits:
        command += ["--kv-bits", str(kv_bits)]
    processes = []
    # the workers share this machine's cores: one BLAS pool each of the whole machine oversubscribes
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // workers))
    for rank in range(1, workers + 1):
        env = dict(os.environ, MLX_HOSTFILE=hostfile, MLX_RANK=str(rank), OPENBLAS_NUM_THREADS=threads)
        processes.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, text=True))
    os.environ["MLX_HOSTFILE"], os.environ["MLX_RANK"] = hostfile, "0"
    try:
        _wait_ready(processes, connect_timeout)
        group = _init_group(connect_timeout)
    except BaseException:
        for process in processes:
            process.kill()
        raise
    return LocalPool(RingPool(group), processes, model_path, hostfile)


def get_pool(workers: int, model_path: str, kv_bits: Optional[int] = None,
             connect_timeout: float = 120.0) -> LocalPool:
    """The process-wide worker pool: spawned on first use, or the group mlx.launch set up."""
    global _POOL
    if _POOL is not None:
        if _POOL.model_path != model_path or (workers and _POOL.workers != workers):
            raise MlxSpecError("this process already runs DSI workers for "
                               f"{_POOL.model_path} ({_POOL.workers} workers); one pool per process")
        return _POOL
    if os.environ.get("MLX_RANK") is not None and os.environ.get("MLX_HOSTFILE"):
        # started by mlx.launch: the workers exist already, and so may the group (any backend)
        group = _init_group(connect_timeout, backend="any")
        if group.rank() != 0:
            raise MlxSpecError("the DSI orchestrator must be rank 0")
        _POOL = LocalPool(RingPool(group), [], model_path, None)
    else:
        _POOL = _spawn(workers, model_path, kv_bits, connect_timeout)
    return _POOL


def close_pool() -> None:
    """Stop this process's workers now (also done at exit)."""
    if _POOL is not None:
        _POOL.close()
