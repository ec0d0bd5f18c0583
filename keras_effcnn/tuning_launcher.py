"""Run a distributed KerasTuner search on this machine: one chief oracle and N workers.

KerasTuner distributes a search through three environment variables: every
process runs the same search script with ``KERASTUNER_ORACLE_IP`` and
``KERASTUNER_ORACLE_PORT`` pointing at the chief, and ``KERASTUNER_TUNER_ID``
naming the process (``chief`` serves the oracle over gRPC; ``tuner0``,
``tuner1``, ... train trials). :func:`run_distributed` starts the chief and the
workers as subprocesses on ``127.0.0.1``, waits for the workers, then stops the
chief if it has not exited by itself (its oracle has saved every result to the
project folder by then).

Example:

```python
import sys
from keras_effcnn.tuning_launcher import run_distributed

run = run_distributed([sys.executable, "-m", "keras_effcnn.cli", "tune", "mnist_1500",
                       "--max-trials", "8", "--epochs", "2"], workers=2, timeout=3600)
assert run.ok, run.log_tail("chief")
```
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

CHIEF = "chief"


@dataclasses.dataclass
class DistributedRun:
    """How the processes of a distributed search ended.

    Attributes:
        port: the chief's gRPC port.
        returncodes: exit code per tuner id (``chief``, ``tuner0``, ...); a chief
            stopped by the launcher after the workers finished counts as success.
        logs: the combined stdout/stderr file of each process.
        timed_out: the search ran past ``timeout`` and was stopped.
        chief_stopped: the launcher stopped the chief (normal once workers are done).
    """

    port: int
    returncodes: dict[str, int | None]
    logs: dict[str, Path]
    timed_out: bool = False
    chief_stopped: bool = False

    @property
    def ok(self) -> bool:
        workers_ok = all(code == 0 for tid, code in self.returncodes.items() if tid != CHIEF)
        chief_ok = self.chief_stopped or self.returncodes.get(CHIEF) == 0
        return not self.timed_out and workers_ok and chief_ok

    def log_tail(self, tuner_id: str, chars: int = 3000) -> str:
        """The end of one process's log."""
        path = self.logs[tuner_id]
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tuner_env(tuner_id: str, host: str, port: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one process of a distributed search."""
    env = dict(os.environ if base is None else base)
    env.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=str(port))
    return env


def run_distributed(command: Sequence[str], workers: int, *, host: str = "127.0.0.1", port: int | None = None,
                    timeout: float | None = None, log_dir: str | os.PathLike | None = None,
                    env: Mapping[str, str] | None = None, threads_per_process: int | None = None,
                    chief_grace_s: float = 5.0, poll_s: float = 0.5) -> DistributedRun:
    """Runs ``command`` as a chief and ``workers`` workers of one search, and waits.

    The same command runs in every process; KerasTuner reads its role from the
    environment. Once every worker has exited the chief gets ``chief_grace_s``
    to exit by itself and is then stopped. If the chief fails (exits non-zero),
    or ``timeout`` passes, every process still running is stopped.

    Args:
        command: the search program and its arguments (e.g. ``keras-effcnn tune ...``
            without ``--workers``).
        workers: number of worker processes, >= 1.
        host: the chief's address; keep the loopback ``127.0.0.1`` on one machine.
        port: the chief's port (default: a free one).
        timeout: seconds before everything is stopped (None: no limit).
        log_dir: folder for ``chief.log``, ``tuner0.log``, ... (default: a temporary folder).
        env: base environment (default: this process's).
        threads_per_process: TensorFlow intra- and inter-op threads of each
            process, so N processes share the cores instead of oversubscribing them.
        chief_grace_s: seconds the chief may take to exit after the last worker.
        poll_s: seconds between checks.

    Returns:
        A :class:`DistributedRun`.
    """
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ValueError(f"workers={workers!r} is not allowed: workers must be an integer >= 1")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout={timeout!r} is not allowed: timeout must be > 0 seconds, or None")
    port = free_port(host) if port is None else int(port)
    logs_root = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="keras-effcnn-tune-"))
    logs_root.mkdir(parents=True, exist_ok=True)
    base_env = dict(os.environ if env is None else env)
    if threads_per_process:
        base_env.update(TF_NUM_INTRAOP_THREADS=str(threads_per_process),
                        TF_NUM_INTEROP_THREADS=str(threads_per_process))

    ids = [CHIEF] + [f"tuner{i}" for i in range(workers)]
    logs = {tid: logs_root / f"{tid}.log" for tid in ids}
    procs: dict[str, subprocess.Popen] = {}
    files = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    run = DistributedRun(port=port, returncodes={}, logs=logs)
    try:
        for tid in ids:  # the chief first: workers wait for it to be ready
            files[tid] = open(logs[tid], "wb")
            procs[tid] = subprocess.Popen(list(command), env=tuner_env(tid, host, port, base_env),
                                          stdout=files[tid], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        worker_ids = ids[1:]
        while any(procs[t].poll() is None for t in worker_ids):
            if deadline is not None and time.monotonic() > deadline:
                run.timed_out = True
                break
            if procs[CHIEF].poll() not in (None, 0):
                break  # the oracle crashed: the workers can only hang
            # A chief that exited normally has told every worker to stop; they are finishing.
            time.sleep(poll_s)
        if not run.timed_out and all(procs[t].poll() is not None for t in worker_ids):
            try:
                procs[CHIEF].wait(timeout=chief_grace_s)
            except subprocess.TimeoutExpired:
                run.chief_stopped = True
    finally:
        for tid, proc in procs.items():
            if proc.poll() is None:
                _stop(proc)
        for handle in files.values():
            handle.close()
    run.returncodes = {tid: proc.returncode for tid, proc in procs.items()}
    return run


def _stop(proc: subprocess.Popen, wait_s: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
