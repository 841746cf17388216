"""Two-process data-parallel training on CPU (gloo), end to end through ``main.py``.

One run of a tiny latent diffusion model with ``--accelerator cpu --devices 2 --strategy ddp``
(Lightning starts the second process by re-running the command). A test callback
(tests/ddp_probe.py) dumps on each rank the weights it built, the final parameters and buffers,
the per-rank losses and what was logged, and the images it trained on.
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.data.synthetic import SyntheticShapesTrain

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, LENGTH, SEED = 3, 2, 16, 23
RESUMED = 5  # steps after resuming: the last batch of epoch 0, the first of epoch 1

TINY_LDM = [
    "--base", str(REPO / "configs" / "demo" / "ldm_uncond.yaml"),
    "model.params.first_stage_config.params.ddconfig.resolution=16",
    "model.params.first_stage_config.params.ddconfig.ch_mult=[1,1,2]",  # f=4: 4x4x3 latents
    "model.params.image_size=4", "model.params.unet_config.params.image_size=4",
    "model.params.unet_config.params.model_channels=32", "model.params.unet_config.params.num_head_channels=16",
    f"data.params.batch_size={BATCH}", f"data.params.train.params.length={LENGTH}",
    "data.params.train.params.size=16", "data.params.validation.params.length=4",
    "data.params.validation.params.size=16",
    "lightning.trainer.val_check_interval=2", "lightning.trainer.limit_val_batches=1",
    "lightning.trainer.log_every_n_steps=1",
    "lightning.callbacks.image_logger.params.batch_frequency=2",
    "lightning.callbacks.image_logger.params.log_images_kwargs.N=2",
    "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2",
    "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env() -> dict[str, str]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    for key in ("LDM_RUN_NOW", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):  # a fresh launch
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    probe = root / "probe"
    cmd = [sys.executable, "main.py", *TINY_LDM, "-t", "--no-test", "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp", "--logger", "csv", "--max_steps", str(STEPS), "--seed", str(SEED),
           "-l", str(root / "logs"), "-n", "ddp", "--trust-config-targets",
           "lightning.callbacks.ddp_probe.target=tests.ddp_probe.DDPProbe",
           f"lightning.callbacks.ddp_probe.params.out={probe}"]
    proc = subprocess.run(cmd, cwd=REPO, env=ddp_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return root, ranks, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def resumed(ddp_run):
    """The same run resumed from its last.ckpt (mid-epoch: 3 of 4 batches) up to RESUMED steps."""
    root = ddp_run[0]
    (rundir,) = (root / "logs").iterdir()
    saved = torch.load(rundir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    cmd = [sys.executable, "main.py", "--resume", str(rundir), "-t", "--no-test", "--accelerator", "cpu",
           "--devices", "2", "--strategy", "ddp", "--logger", "csv", "--max_steps", str(RESUMED),
           "--trust-config-targets", f"lightning.callbacks.ddp_probe.params.out={root / 'probe2'}",
           "lightning.trainer.val_check_interval=100", "lightning.callbacks.image_logger.params.batch_frequency=100"]
    proc = subprocess.run(cmd, cwd=REPO, env=ddp_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return saved, [torch.load(root / "probe2" / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
def test_ddp_ranks_end_identical_and_log_the_mean(ddp_run):
    root, (r0, r1), output = ddp_run
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["global_step"] == r1["global_step"] == STEPS

    # Identical initial weights, built independently on each rank (before DDP broadcasts anything).
    assert r0["initial"].keys() == r1["initial"].keys()
    for k in r0["initial"]:
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k
    # Every parameter and buffer identical at the end: weights, EMA, scale_by_std's scale factor.
    assert r0["final"].keys() == r1["final"].keys()
    assert any(k.startswith("model_ema.") for k in r0["final"])
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    assert float(r0["final"]["scale_factor"]) != 1.0  # estimated on rank 0's first batch, broadcast
    ema = [k for k in r0["final"] if k.startswith("model_ema.") and r0["final"][k].is_floating_point()]
    assert any(not torch.equal(r0["final"][k], r0["initial"][k]) for k in ema)  # the EMA moved, alike on both

    # Seeds: the noise differs per rank (so do the losses), the data order does not (see below).
    assert (r0["noise_seed"], r1["noise_seed"]) == (SEED, SEED + 1)
    assert all(a != b for a, b in zip(r0["losses"], r1["losses"]))
    # What each rank logs as the step loss is the mean over ranks; metrics.csv (rank 0) holds it.
    for step in range(STEPS):
        mean = (r0["losses"][step] + r1["losses"][step]) / 2
        assert r0["logged"][step] == pytest.approx(mean, rel=1e-6)
        assert r1["logged"][step] == pytest.approx(mean, rel=1e-6)
    (rundir,) = (root / "logs").iterdir()  # one run directory
    with open(rundir / "csv" / "metrics.csv") as fh:
        logged = [float(row["train/loss_step"]) for row in csv.DictReader(fh) if row.get("train/loss_step")]
    assert logged == pytest.approx([(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])], rel=1e-6)
    for name in ("train/loss", "train/loss_simple", "train/loss_vlb", "stats/epoch_time_s"):
        assert f"self.log({name!r}, ..., sync_dist=True)" not in output


@pytest.mark.slow
def test_ddp_splits_the_data_and_writes_one_run_directory(ddp_run):
    root, (r0, r1), output = ddp_run
    # The sampler is ours on both ranks (Lightning did not replace it) and knows its share.
    assert r0["sampler"] == ("EpochSampler", 2, 0) and r1["sampler"] == ("EpochSampler", 2, 1)
    # The images each rank trained on: dataset items, none seen by both ranks, none twice.
    dataset = SyntheticShapesTrain(length=LENGTH, size=16)
    index_of = {np.asarray(dataset[i]["image"]).tobytes(): i for i in range(LENGTH)}
    seen = [[index_of[img.numpy().tobytes()] for batch in r["images"] for img in batch] for r in (r0, r1)]
    assert len(seen[0]) == len(seen[1]) == STEPS * BATCH
    assert len(set(seen[0]) | set(seen[1])) == 2 * STEPS * BATCH

    runs = list((root / "logs").iterdir())
    assert len(runs) == 1, runs
    rundir = runs[0]
    assert rundir.name.endswith("_ddp")
    assert len(list((rundir / "configs").glob("*-project.yaml"))) == 1
    assert len(list((rundir / "configs").glob("*-lightning.yaml"))) == 1
    assert (rundir / "images" / "train").is_dir() and any((rundir / "images" / "train").iterdir())
    ckpt = torch.load(rundir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS
    for k, v in r0["final"].items():
        assert torch.equal(ckpt["state_dict"][k], v), k
    # The seeds and the learning-rate rule are printed, with the global batch of 2 processes.
    assert f"Seeds: weights and data order {SEED} on all 2 ranks" in output
    assert f"global batch {2 * BATCH} = 1 (accumulate_grad_batches) * 2 (devices x nodes)" in output


def dataset_indices(images: list[torch.Tensor]) -> list[int]:
    dataset = SyntheticShapesTrain(length=LENGTH, size=16)
    index_of = {np.asarray(dataset[i]["image"]).tobytes(): i for i in range(LENGTH)}
    return [index_of[img.numpy().tobytes()] for batch in images for img in batch]


@pytest.mark.slow
def test_ddp_resume_continues_each_rank_at_its_own_position_and_noise(ddp_run, resumed):
    from ldm.data.resumable import EpochSampler

    _, first, _ = ddp_run
    saved, resumed = resumed
    # The checkpoint (written by rank 0) holds both ranks' generator states; each rank took its own back.
    (rng,) = [v["rng_per_rank"] for k, v in saved["callbacks"].items() if "RNGState" in k]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    for r in range(2):
        assert torch.equal(resumed[r]["rng_at_first_batch"], rng[r]["torch"])
    for r in range(2):
        assert resumed[r]["global_step"] == RESUMED and resumed[r]["rank"] == r
        # Each rank's data: its own share of the shuffled epochs, continued where the run stopped.
        expected = []
        for epoch in (0, 1):
            sampler = EpochSampler(LENGTH, True, seed=SEED, num_replicas=2, rank=r)
            sampler.set_epoch(epoch)
            expected += [index for index, _ in sampler]
        seen = dataset_indices(first[r]["images"]) + dataset_indices(resumed[r]["images"])
        assert seen == expected[:RESUMED * BATCH]
    # Still identical weights and buffers on both ranks, still different noise (losses) per rank.
    for k in resumed[0]["final"]:
        assert torch.equal(resumed[0]["final"][k], resumed[1]["final"][k]), k
    assert all(a != b for a, b in zip(resumed[0]["losses"], resumed[1]["losses"]))


@pytest.mark.slow
def test_ddp_trains_the_gan_autoencoder_with_both_networks_identical(tmp_path):
    """Manual optimisation, two optimizers: each backward leaves the other network without gradients
    (main.py tells DDP to expect that); generator and discriminator end identical on both ranks."""
    cmd = [sys.executable, "main.py", "--base", str(REPO / "configs" / "demo" / "autoencoder_kl.yaml"), "-t",
           "--no-test", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--logger", "csv",
           "--max_steps", "4", "-l", str(tmp_path / "logs"), "--trust-config-targets",
           "model.params.ddconfig.resolution=16", "model.params.ddconfig.ch_mult=[1,2]",
           "model.params.lossconfig.params.disc_start=1", "data.params.batch_size=2",
           "data.params.train.params.size=16", "data.params.train.params.length=8",
           "data.params.validation.params.size=16", "data.params.validation.params.length=2",
           "lightning.trainer.limit_val_batches=0", "lightning.callbacks.image_logger.params.batch_frequency=100",
           "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
           "lightning.callbacks.ddp_probe.target=tests.ddp_probe.DDPProbe",
           f"lightning.callbacks.ddp_probe.params.out={tmp_path / 'probe'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=ddp_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r0, r1 = (torch.load(tmp_path / "probe" / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["global_step"] == r1["global_step"] == 4  # two optimizer steps per batch
    disc = [k for k in r0["final"] if k.startswith("loss.discriminator.")]
    assert disc and any(not torch.equal(r0["final"][k], r0["initial"][k]) for k in disc)  # the GAN term ran
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    assert len(list((tmp_path / "logs").iterdir())) == 1
