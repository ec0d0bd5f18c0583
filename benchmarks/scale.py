"""Training images/s of ``mnist_1500`` with 1 vs 2 devices and 1 vs 2 processes.

Every configuration runs in its own subprocess (the device count is fixed when a backend
starts): TensorFlow on one device and under ``MirroredStrategy`` over 2 logical CPU devices,
JAX on one device, with ``DataParallel`` over 2 logical CPU devices, and as 2 JAX processes
(one device each, Gloo over 127.0.0.1). Each trains on random MNIST-shaped batches of the
global batch size: one warm-up epoch (compilation), then one timed epoch.

On a CPU-only host the "devices" are slices of the same cores, so this measures the cost
of the data-parallel machinery, not a speed-up.

    nice python benchmarks/scale.py --out benchmarks/results/scale
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [  # (name, backend, devices per process, processes)
    ("tensorflow, 1 device", "tensorflow", None, 1),
    ("tensorflow MirroredStrategy, 2 logical devices", "tensorflow", 2, 1),
    ("jax, 1 device", "jax", None, 1),
    ("jax DataParallel, 2 logical devices", "jax", 2, 1),
    ("jax DataParallel, 2 processes x 1 device", "jax", None, 2),
]


def worker(devices: int | None, coordinator: str | None, processes: int, process_id: int, batch: int,
           steps: int) -> None:
    from keras_effcnn import distribute

    engine = None
    if devices or coordinator:
        engine = distribute.data_parallel(devices, coordinator=coordinator,
                                          num_processes=processes if coordinator else None,
                                          process_id=process_id if coordinator else None)
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_effcnn import recipes

    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 28, 28, 1), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch * steps)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    with distribute.scope_of(engine):
        model = recipes.build("mnist_1500")
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True),
                      jit_compile=keras.backend.backend() == "jax")
        model.fit(ds, epochs=2, verbose=0, shuffle=False, callbacks=[Clock()])
    print(json.dumps({"process_id": process_id, "epoch_s": times, "images_per_s": batch * steps / times[-1]}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(backend: str, devices: int | None, processes: int, batch: int, steps: int) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    if backend == "jax" and devices and devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    coordinator = f"127.0.0.1:{_free_port()}" if processes > 1 else "-"
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(devices or 0), coordinator, str(processes),
                               str(i), str(batch), str(steps)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(processes)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scale", help="writes OUT.json and OUT.md")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--steps", type=int, default=20, help="batches per epoch")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        devices, coordinator, processes, pid, batch, steps = args.worker
        worker(int(devices) or None, None if coordinator == "-" else coordinator, int(processes), int(pid),
               int(batch), int(steps))
        return
    rows = []
    for name, backend, devices, processes in CONFIGS:
        r = measure(backend, devices, processes, args.batch_size, args.steps)
        rows.append({"config": name, "backend": backend, "devices_per_process": devices or 1,
                     "processes": processes, "images_per_s": round(r["images_per_s"], 1),
                     "timed_epoch_s": round(r["epoch_s"][-1], 3)})
        print(rows[-1], flush=True)
    from keras_effcnn import provenance

    commit = provenance.git_commit(ROOT)
    command = "nice python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"command": command.strip(), "commit": commit, "model": "mnist_1500", "global_batch": args.batch_size,
              "steps": args.steps, "cpu_count": os.cpu_count(),
              "note": "shared 2-core CPU machine (other jobs running); logical devices share the cores",
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Data-parallel scale: `{record['model']}` training images/s", "",
             f"Command: `{record['command']}` at commit `{commit}`; global batch {args.batch_size}, "
             f"{args.steps} timed batches after a warm-up epoch; {record['note']}.", "",
             "| configuration | images/s | timed epoch (s) |", "|---|---|---|"]
    lines += [f"| {r['config']} | {r['images_per_s']:.0f} | {r['timed_epoch_s']:.2f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
