"""Training throughput with 2 gloo processes against 1 process on this machine.

Each variant is a fresh ``torchrun`` launch of :func:`worker`, which trains the same MLP
student with CE + KD from an EMA teacher on a synthetic Gaussian mixture for a fixed number of
optimizer steps with the same global batch, times the training loop after one warm-up epoch
(rank 0, after a barrier), and reports samples per second. The ratio is 2-process throughput
over 1-process throughput; on a 2-core CPU the processes compete for the same cores, so no
goal is set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def worker(out: str, epochs: int) -> None:
    import torch

    from distillery import Distiller, EMATeacher, Term, Trainer
    from distillery.engine import distributed as D
    from distillery.data import gaussian_mixture
    from distillery.models import build_model
    from distillery.objectives import CrossEntropy, SoftTargetKD

    D.init_from_env("cpu")
    data = gaussian_mixture(num_classes=10, dim=64, n_train=8192, n_test=16, seed=0)
    torch.manual_seed(0)
    student = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(512, 512))
    d = Distiller(student, EMATeacher(student, momentum=0.99), [Term("ce", CrossEntropy()), Term("kd", SoftTargetKD(2.0))])

    def fit(distiller: Distiller, n_epochs: int) -> float:
        trainer = Trainer(distiller, data.train, epochs=n_epochs, batch_size=256, optimizer={"name": "sgd", "lr": 0.05},
                          progress=False, tensorboard=False, device="cpu", log_every=1000)
        D.barrier()
        start = time.perf_counter()
        trainer.fit()
        D.barrier()
        return time.perf_counter() - start

    fit(d, 1)  # warm-up
    seconds = fit(d, epochs)
    if D.is_main():
        Path(out).write_text(json.dumps({"samples_per_s": epochs * 8192 / seconds, "seconds": seconds,
                                         "world_size": D.world_size(), "threads": torch.get_num_threads()}))
    del d, student  # the distiller holds the DDP wrapper, which holds the process group
    D.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, epochs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT), OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}",
               "--master_addr=127.0.0.1", str(Path(__file__).resolve()), "--worker", str(out), str(epochs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {nproc} process(es) failed:\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def benchmark(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    epochs, repeats = (1, 1) if quick else (3, 3)
    one, two = [], []
    for _ in range(repeats):
        one.append(_launch(1, epochs))
        two.append(_launch(2, epochs))
    import statistics

    s1 = statistics.median(r["samples_per_s"] for r in one)
    s2 = statistics.median(r["samples_per_s"] for r in two)
    return {"name": "ddp2_vs_1_throughput", "ratio": s2 / s1, "goal": None,
            "unit": "samples/s with 2 gloo processes / samples/s with 1 process",
            "detail": {"device": "cpu", "one_process": one, "two_processes": two, "global_batch": 256,
                       "cpu_cores": os.cpu_count(), "note": "processes share the machine's cores; OMP threads split between them"}}


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        print(json.dumps(benchmark(quick="--quick" in sys.argv), indent=1))
