"""Exact resume: a run killed (SIGKILL) or preempted (SIGTERM, SIGUSR1) and resumed ends with the
weights, EMA and optimizer state of the uninterrupted run, bit for bit (CPU, one process, same seed).

Runs are tiny (16 px images, batches of 2, 4 batches an epoch, 10 optimizer steps, so resumes
happen mid-epoch and across epoch boundaries). A run to be killed is a forked child of the test
process (no second import of torch): a callback sends the signal to its own process at a chosen
step, deterministically, and leaves a marker so that the resumed run passes that step.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
from pathlib import Path

import pytest
import torch

from ldm.data.resumable import EpochSampler, ResumableDataLoader, SeededItems
from ldm.trainer.run import run

REPO = Path(__file__).resolve().parents[1]
STEPS = 10  # optimizer steps of every run (the autoencoder takes two per batch)

COMMON = ["-t", "--accelerator", "cpu", "--logger", "csv", "--no-test", "--trust-config-targets",
          "--max_steps", str(STEPS),
          "data.params.batch_size=2", "data.params.train.params.length=8", "data.params.train.params.size=16",
          "data.params.validation.params.length=2", "data.params.validation.params.size=16",
          "lightning.trainer.val_check_interval=3", "lightning.trainer.limit_val_batches=1",
          "lightning.trainer.log_every_n_steps=1",
          "lightning.callbacks.image_logger.params.batch_frequency=1000",
          "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
          # last.ckpt (and a numbered file) every 2 steps: kills land between checkpoints too
          "lightning.modelcheckpoint.params.every_n_train_steps=2", "lightning.modelcheckpoint.params.monitor=null",
          "lightning.modelcheckpoint.params.save_top_k=-1"]
MODELS = {
    "ldm": [str(REPO / "configs" / "demo" / "ldm_uncond.yaml"),
            "model.params.first_stage_config.params.ddconfig.resolution=16",
            "model.params.first_stage_config.params.ddconfig.ch_mult=[1,1,2]",  # f=4: 4x4x3 latents
            "model.params.image_size=4", "model.params.unet_config.params.image_size=4",
            "model.params.unet_config.params.model_channels=32",
            "model.params.unet_config.params.num_head_channels=16"],
    # Two optimizers (generator, discriminator); the GAN term joins after 2 batches; one loader worker.
    "autoencoder": [str(REPO / "configs" / "demo" / "autoencoder_kl.yaml"),
                    "model.params.ddconfig.resolution=16", "model.params.ddconfig.ch_mult=[1,2]",
                    "model.params.lossconfig.params.disc_start=2", "data.params.num_workers=1"],
}


def train(kind: str, logdir: Path, *extra: str) -> int:
    return run(["--base", MODELS[kind][0], *COMMON, *MODELS[kind][1:], "-l", str(logdir), "-n", kind, *extra])


def resume(rundir: Path, *extra: str) -> int:
    return run(["--resume", str(rundir), *COMMON, *extra])


def the_run(logdir: Path) -> Path:
    (rundir,) = [p for p in logdir.iterdir() if p.is_dir()]
    return rundir


def in_child(fn, *args, stderr: Path) -> int:
    """Run ``fn(*args)`` in a forked child whose stderr goes to ``stderr``; its exit code
    (``-signal`` when a signal killed it)."""
    def target():
        code = 1
        try:
            torch.set_num_threads(1)
            sys.stderr = open(stderr, "w", buffering=1)
            code = fn(*args)
        finally:
            sys.stderr.flush()
            os._exit(code)
    child = multiprocessing.get_context("fork").Process(target=target)
    child.start()
    child.join()
    return child.exitcode


def signal_at(steps, marker_dir: Path, sig: str = "SIGKILL") -> list[str]:
    return ["lightning.callbacks.fault.target=tests.fault_injection.SignalAt",
            f"lightning.callbacks.fault.params.steps=[{','.join(map(str, steps))}]",
            f"lightning.callbacks.fault.params.marker_dir={marker_dir}",
            f"lightning.callbacks.fault.params.signal={sig}"]


def final_state(rundir: Path) -> dict:
    return torch.load(rundir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    assert len(a["optimizer_states"]) == len(b["optimizer_states"])
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"]):
        for pid, state in oa["state"].items():
            for k, v in state.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][pid][k])), (pid, k)
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each model, trained once per module."""
    cache: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in cache:
            logdir = tmp_path_factory.mktemp(f"reference-{kind}")
            assert train(kind, logdir) == 0
            cache[kind] = final_state(the_run(logdir))
        return cache[kind]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ldm", "autoencoder"])
def test_two_uninterrupted_runs_end_identical(kind, reference, tmp_path):
    assert train(kind, tmp_path) == 0
    state = final_state(the_run(tmp_path))
    assert any(k.startswith("model_ema.") for k in state["state_dict"]) or kind == "autoencoder"
    assert_same_training_state(reference(kind), state)


@pytest.mark.slow
@pytest.mark.parametrize("kind, kills", [("ldm", 3), ("autoencoder", 2)])
def test_runs_killed_at_random_steps_resume_exactly(kind, kills, reference, tmp_path):
    # Distinct kill steps, one per life of the run; the resumed runs keep the kill callback (saved
    # config) and pass the steps already fired. Seeded: the same steps on every test run.
    per_batch = 2 if kind == "autoencoder" else 1  # optimizer steps per batch
    steps = sorted(random.Random(f"kill-{kind}").sample(range(per_batch, STEPS, per_batch), kills))
    logdir = tmp_path / "logs"
    assert in_child(train, kind, logdir, *signal_at(steps, tmp_path), stderr=tmp_path / "0.err") == -signal.SIGKILL
    rundir = the_run(logdir)
    for life in range(1, kills):
        code = in_child(resume, rundir, stderr=tmp_path / f"{life}.err")
        assert code == -signal.SIGKILL, (tmp_path / f"{life}.err").read_text()[-2000:]
    assert sorted(p.name for p in tmp_path.glob("SIGKILL-at-*")) == sorted(f"SIGKILL-at-{s}" for s in steps)
    assert resume(rundir) == 0
    assert_same_training_state(reference(kind), final_state(rundir))


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_exits_0_and_resume_is_exact(reference, tmp_path):
    logdir, err = tmp_path / "logs", tmp_path / "train.err"
    assert in_child(train, "ldm", logdir, *signal_at([5], tmp_path, "SIGTERM"), stderr=err) == 0
    rundir = the_run(logdir)
    # The signal arrives while batch 6 starts; the run finishes that batch, saves, and stops.
    assert torch.load(rundir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    message = err.read_text()
    assert f"Received SIGTERM: saved the state after step 6 to {rundir / 'checkpoints' / 'last.ckpt'}" in message
    assert f"--resume {rundir}" in message
    assert resume(rundir) == 0
    assert_same_training_state(reference("ldm"), final_state(rundir))


@pytest.mark.slow
def test_sigusr1_saves_and_stops_in_process_then_handlers_are_restored(reference, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    logdir = tmp_path / "logs"
    assert train("autoencoder", logdir, *signal_at([4], tmp_path, "SIGUSR1")) == 0
    assert {s: signal.getsignal(s) for s in before} == before
    rundir = the_run(logdir)
    assert torch.load(rundir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert not (rundir / "csv" / "version_1").exists()
    assert resume(rundir) == 0
    assert_same_training_state(reference("autoencoder"), final_state(rundir))


@pytest.mark.slow
def test_a_finished_run_extended_and_killed_resumes_from_its_newest_state_exactly(reference, tmp_path):
    # The first run ends at an epoch end (step 4) without a ModelCheckpoint save before: Lightning's
    # own end-of-training save would hold the epoch as complete, and a run limited by max_steps
    # resumed from it starts an epoch too far on. The extension's saves then went to last-v1.ckpt,
    # last-v2.ckpt behind the first run's last.ckpt, which a resume after a kill picked up.
    logdir = tmp_path / "logs"
    assert train("ldm", logdir, "--max_steps", "4", "lightning.modelcheckpoint.params.every_n_train_steps=100") == 0
    rundir = the_run(logdir)
    ckpts = rundir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("last*.ckpt")) == ["last.ckpt"]
    first = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert (first["global_step"], first["epoch"]) == (4, 0)  # saved at the last batch's end
    # The run's checkpoint callback keeps a plain ModelCheckpoint's state key (older runs resume their state).
    assert sum(k.startswith("ModelCheckpoint{'monitor': None") for k in first["callbacks"]) == 2
    # Extended to 10 steps (last.ckpt every 2 steps), killed when step 8 starts: last.ckpt holds step 6.
    assert in_child(resume, rundir, *signal_at([7], tmp_path), stderr=tmp_path / "kill.err") == -signal.SIGKILL
    assert sorted(p.name for p in ckpts.glob("last*.ckpt")) == ["last-previous.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6
    assert resume(rundir) == 0
    assert_same_training_state(reference("ldm"), final_state(rundir))


def test_loader_resumes_at_the_saved_batch_with_the_same_items():
    """The data position alone: a loader restored from state_dict serves the rest of the epoch's
    batches, identical to the uninterrupted loader's, and the next epoch as well."""
    class Noisy(torch.utils.data.Dataset):  # an augmentation drawing from the global RNGs
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"i": i, "noise": torch.rand(()) + random.random()}

    def loader():
        return ResumableDataLoader(SeededItems(Noisy()), batch_size=3, sampler=EpochSampler(10, True, seed=7))

    full = loader()
    full.epoch_sampler.set_epoch(1)
    epoch1 = list(full)
    full.epoch_sampler.set_epoch(2)
    epoch2 = list(full)
    partial = loader()
    partial.epoch_sampler.set_epoch(1)
    it = iter(partial)
    next(it), next(it)
    state = partial.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    restored = loader()
    restored.load_state_dict(state)
    torch.manual_seed(123)  # the resumed process' RNG does not matter
    rest = list(restored)
    assert len(rest) == 2 and len(restored) == 4
    for a, b in zip(epoch1[2:], rest):
        assert torch.equal(a["i"], b["i"]) and torch.equal(a["noise"], b["noise"])
    restored.epoch_sampler.set_epoch(2)
    assert restored.state_dict() == {"epoch": 2, "batches": 0}  # set, not started: nothing served yet
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(epoch2, list(restored)))
    assert restored.state_dict() == {"epoch": 2, "batches": 4}
    assert not torch.equal(torch.cat([b["i"] for b in epoch1]), torch.cat([b["i"] for b in epoch2]))


def test_loader_wrapped_for_distributed_training_iterates_without_a_position():
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper  # what Lightning wraps it in

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return i

    sampler = DistributedSamplerWrapper(EpochSampler(8, True, seed=1), num_replicas=2, rank=0, shuffle=False)
    loader = ResumableDataLoader(SeededItems(Items()), batch_size=2, sampler=sampler)
    served = torch.cat(list(loader)).tolist()
    assert len(served) == 4 and len(set(served)) == 4
    assert loader.state_dict() == {}
    loader.load_state_dict({})


def test_seeded_items_repeat_their_augmentation_and_leave_the_process_rng_alone():
    import numpy as np

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return (i, torch.rand(()).item(), float(np.random.rand()), random.random())

    items = SeededItems(Noisy())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first, again, other = items[(2, 11)], items[(2, 11)], items[(2, 12)]
    assert first == again and first[1:] != other[1:]
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]
    assert items[3][0] == 3  # a plain index reads the item unseeded


@pytest.mark.slow
def test_sigterm_during_gradient_accumulation_waits_for_the_optimizer_step(tmp_path):
    accumulate = ["lightning.trainer.accumulate_grad_batches=2", "--max_steps", "5"]
    assert train("ldm", tmp_path / "reference", *accumulate) == 0
    logdir = tmp_path / "logs"
    # The signal arrives as batch 5 starts, the first of step 3's two batches: the run saves after batch 6.
    assert in_child(train, "ldm", logdir, *accumulate, *signal_at([2], tmp_path, "SIGTERM"),
                    stderr=tmp_path / "train.err") == 0
    rundir = the_run(logdir)
    assert torch.load(rundir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert resume(rundir, *accumulate) == 0
    a, b = final_state(the_run(tmp_path / "reference")), final_state(rundir)
    assert a["global_step"] == b["global_step"] == 5
    assert not [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
