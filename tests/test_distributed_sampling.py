"""Samples depend only on (seed, sample index): not on --batch_size, not on the number of processes.

``scripts/sample_diffusion.py`` once in-process with batches of 4, once under
``torchrun --nproc_per_node 2`` (gloo, CPU) with batches of 3: the same 10 images, and one .npz of
exactly 10 samples written by rank 0. DDIM with eta = 1 draws fresh noise at every step, so the
per-step noise is covered as well as the initial noise. ``scripts/evaluate.py``'s sampling mode
likewise: shards split between two torchrun processes hold the samples one process draws.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_inference import write_run

REPO = Path(__file__).resolve().parents[1]
N = 10


def sample_diffusion():
    spec = importlib.util.spec_from_file_location("script_sample_diffusion", REPO / "scripts" / "sample_diffusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def images(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "img").glob("*.png"))}


@pytest.mark.slow
def test_samples_are_invariant_to_batch_size_and_process_count(tmp_path):
    run, _ = write_run(tmp_path / "logs", "uncond")
    common = ["-r", str(run), "-n", str(N), "--seed", "7", "-c", "3", "-e", "1.0", "--device", "cpu",
              "--no-progress"]
    sample_diffusion().main(common + ["--batch_size", "4", "-l", str(tmp_path / "one")])

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "scripts" / "sample_diffusion.py"),
           *common, "--batch_size", "3", "-l", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    one, two = images(tmp_path / "one"), images(tmp_path / "two")
    assert list(one) == list(two) == [f"{i:05d}.png" for i in range(N)]
    for name in one:
        assert np.array_equal(one[name], two[name]), name
    assert len({a.tobytes() for a in one.values()}) == N  # ten different samples
    # One .npz, written by rank 0: exactly the N samples, in index order.
    (npz,) = (tmp_path / "two").glob("*.npz")
    assert npz.name == f"samples_{N}x16x16x3.npz"
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (N, 16, 16, 3)
    assert np.array_equal(arr, np.load(tmp_path / "one" / npz.name)["arr_0"])
    assert all(np.array_equal(arr[i], two[f"{i:05d}.png"]) for i in range(N))
    assert len(list((tmp_path / "two").glob("grid-*.png"))) == 1


def test_shares_cover_the_samples_once():
    from ldm.inference.distributed import Share

    for world in (1, 2, 3, 4, 7):
        blocks = [Share(r, world, r).indices(N) for r in range(world)]
        assert np.array_equal(np.concatenate(blocks), np.arange(N))


class TinyFeatures(torch.nn.Module):
    """Stands in for Inception: 4x4 pooled pixels as features, a fixed linear map as 5-class logits."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(48, 5)

    def forward(self, x):
        f = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return f, self.head(f)


def shard_arrays(outdir: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for f in sorted((outdir / "shards").glob("shard-*.npz")):
        with np.load(f) as z:
            out.append({k: z[k] for k in z.files})
    return out


@pytest.mark.slow
def test_evaluation_shards_split_between_processes_give_the_same_samples(tmp_path):
    run, _ = write_run(tmp_path / "logs", "uncond")
    torch.manual_seed(0)
    torch.save({"state_dict": TinyFeatures().state_dict()}, tmp_path / "tiny.ckpt")
    features = tmp_path / "features.yaml"
    features.write_text(f"target: tests.test_distributed_sampling.TinyFeatures\nname: tiny\n"
                        f"ckpt: {tmp_path / 'tiny.ckpt'}\n")
    common = ["-r", str(run), "-n", "10", "--shard-size", "4", "--seed", "3", "--steps", "2", "--eta", "1.0",
              "--device", "cpu", "--no-progress", "--no-stats-cache", "--metrics", "isc",
              "--feature-extractor", str(features), "--trust-config-targets"]
    spec = importlib.util.spec_from_file_location("script_evaluate", REPO / "scripts" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    one = evaluate.main(common + ["--batch_size", "2", "--outdir", str(tmp_path / "one"),
                                  "--json", str(tmp_path / "one.json")])

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "scripts" / "evaluate.py"), *common, "--batch_size", "3",
           "--outdir", str(tmp_path / "two"), "--json", str(tmp_path / "two.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    a, b = shard_arrays(tmp_path / "one"), shard_arrays(tmp_path / "two")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert np.array_equal(x["indices"], y["indices"]) and np.array_equal(x["images"], y["images"])
    # Rank 0 scored all ten samples: the same figures as the single process.
    assert json.loads((tmp_path / "two.json").read_text()) == pytest.approx(one)
    assert proc.stdout.count("10 samples (10 drawn now") == 1
