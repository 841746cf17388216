"""main.py end to end: a tiny first-stage run, its run directory, resuming, and failures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.trainer.run import main, run

REPO = Path(__file__).resolve().parents[1]
DEMO_AE = str(REPO / "configs" / "demo" / "autoencoder_kl.yaml")

# Shrink the demo autoencoder: 16 px images, one downsampling, 4 images a batch.
TINY = [
    "model.params.ddconfig.resolution=16", "model.params.ddconfig.ch_mult=[1,2]",
    "data.params.batch_size=4", "data.params.train.params.size=16", "data.params.train.params.length=64",
    "data.params.validation.params.size=16", "data.params.validation.params.length=4",
    "model.params.lossconfig.params.disc_start=2",
    "lightning.trainer.val_check_interval=2", "lightning.trainer.limit_val_batches=1",
    "lightning.callbacks.image_logger.params.batch_frequency=2",
    "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
]


def train(logdir: Path, *extra: str, max_steps: int = 6) -> int:
    return run(["--base", DEMO_AE, "-t", "--accelerator", "cpu", "--logger", "csv", "-n", "tiny",
                "-l", str(logdir), "--max_steps", str(max_steps), *TINY, *extra])


def only_run(logdir: Path) -> Path:
    runs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_train_writes_run_directory_then_resume_continues(tmp_path):
    assert train(tmp_path) == 0
    rundir = only_run(tmp_path)
    assert rundir.name.endswith("_tiny")
    configs = sorted(p.name for p in (rundir / "configs").iterdir())
    assert len(configs) == 2 and configs[0].endswith("-lightning.yaml") and configs[1].endswith("-project.yaml")
    project = OmegaConf.load(rundir / "configs" / configs[1])
    assert project.model.params.ddconfig.resolution == 16  # overrides are part of the saved config
    assert project.model.target == "ldm.models.autoencoder.AutoencoderKL"
    ckpt = torch.load(rundir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # Two optimizer steps per batch (generator, discriminator): 6 steps are 3 batches.
    assert ckpt["global_step"] == 6
    assert any(k.startswith("loss.discriminator.") for k in ckpt["state_dict"])
    images = sorted(p.name for p in (rundir / "images" / "train").iterdir())
    assert any(n.startswith("reconstructions_gs-") for n in images)
    assert any(n.startswith("inputs_gs-") for n in images)
    assert (rundir / "csv" / "metrics.csv").is_file()

    # Resume from the run directory: same directory, saved configs reused, training continues.
    first = {p.name: p.read_bytes() for p in (rundir / "configs").iterdir()}
    assert run(["--resume", str(rundir), "-t", "--accelerator", "cpu", "--logger", "csv",
                "--max_steps", "10"]) == 0
    assert only_run(tmp_path) == rundir
    ckpt = torch.load(rundir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10
    # Both invocations' configs are kept, also when both started in the same second (the resumed
    # one is then named <now>.1-*.yaml): the first invocation's record is never overwritten.
    assert len(list((rundir / "configs").iterdir())) == 4
    assert {name: (rundir / "configs" / name).read_bytes() for name in first} == first


def test_trainer_flags_of_the_command_line_are_recorded_and_kept_on_resume(tmp_path):
    # --precision bf16-mixed trains on CPU under autocast with fp32 weights, and the run directory says so
    assert train(tmp_path, "--precision", "bf16-mixed", max_steps=2) == 0
    rundir = only_run(tmp_path)
    (first,) = (rundir / "configs").glob("*-lightning.yaml")
    trainer = OmegaConf.load(first).lightning.trainer
    assert (trainer.precision, trainer.max_steps, trainer.accelerator) == ("bf16-mixed", 2, "cpu")
    assert trainer.val_check_interval == 2  # the config's own keys stay
    state = torch.load(rundir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert {v.dtype for k, v in state.items() if v.is_floating_point()} == {torch.float32}
    # resumed without the flag, the run keeps its precision; the new --max_steps is recorded for this invocation
    assert run(["--resume", str(rundir), "-t", "--logger", "csv", "--max_steps", "4"]) == 0
    (second,) = set((rundir / "configs").glob("*-lightning.yaml")) - {first}
    trainer = OmegaConf.load(second).lightning.trainer
    assert (trainer.precision, trainer.max_steps) == ("bf16-mixed", 4)
    assert OmegaConf.load(first).lightning.trainer.max_steps == 2


def test_config_errors_exit_2_with_the_config_path(tmp_path, capsys):
    code = main(["--base", DEMO_AE, "-l", str(tmp_path), "model.params.ddconfig.ch_mlt=[1,2]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "config error: model.params.ddconfig" in err or "config error: model.params" in err
    assert "ch_mlt" in err
    assert not any(tmp_path.iterdir())  # nothing was created for a run that never started


def test_dry_run_prints_resolved_config_and_exits(tmp_path, capsys):
    assert run(["--base", DEMO_AE, "--dry-run", "-l", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "Resolved config:" in out and "resolution: 16" in out
    assert "Model: ldm.models.autoencoder.AutoencoderKL" in out
    assert "Data train: SyntheticShapesTrain, 64 examples" in out
    assert not any(tmp_path.iterdir())


def test_failing_run_reports_the_real_error_and_keeps_checkpoints(tmp_path, monkeypatch):
    from ldm.models import autoencoder

    original = autoencoder.AutoencoderKL.training_step
    calls = {"n": 0}

    def failing_step(self, batch, batch_idx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise FloatingPointError("loss became NaN at batch 3")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(autoencoder.AutoencoderKL, "training_step", failing_step)
    with pytest.raises(FloatingPointError, match="loss became NaN at batch 3"):
        train(tmp_path)
    rundir = only_run(tmp_path)
    crash = list((rundir / "checkpoints").glob("crash-*.ckpt"))
    assert len(crash) == 1
    state = torch.load(crash[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 4  # two batches completed
    assert not [p for p in rundir.rglob("*") if ".tmp" in p.name]  # no half-written files


def test_main_py_help_runs_as_a_script():
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for flag in ("--base", "--resume", "--gpus", "--scale_lr", "--trust-config-targets", "--dry-run"):
        assert flag in out.stdout
