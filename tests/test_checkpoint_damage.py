"""Resuming is safe and survives damage: no unpickling of code, damaged newest checkpoints are
detected and skipped for the previous intact one, a full disk never harms the previous file."""
from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.data import AttributeDict
from omegaconf import OmegaConf

from ldm.checkpoint import (DamagedCheckpointError, UnsafeCheckpointError, load_training_checkpoint,
                            save_state_dict)
from ldm.config import ConfigError
from ldm.config.loading import load_experiment
from ldm.trainer.checkpoint_io import AtomicCheckpointIO
from ldm.trainer.rundir import resume_run
from ldm.trainer.run import main, run

from tests.test_main_e2e import DEMO_AE, TINY, only_run, train


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def training_state(step: int, **extra) -> dict:
    """A Lightning-shaped training checkpoint (what resume needs), tiny."""
    return {"epoch": 0, "global_step": step, "pytorch-lightning_version": "2.6.0",
            "state_dict": {"w": torch.full((3,), float(step))},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": []}],
            "lr_schedulers": [], "loops": {"fit_loop": {"epoch_progress": {"current": {"ready": 1}}}},
            "callbacks": {}, **extra}


def make_run(tmp_path: Path, *steps: int) -> Path:
    """A run directory with a saved config and `last.ckpt` saved at each of ``steps`` in turn."""
    run_dir = tmp_path / "run"
    (run_dir / "configs").mkdir(parents=True)
    (run_dir / "configs" / "2026-01-01T00-00-00-project.yaml").write_text("model: {target: x.y}\n")
    io = AtomicCheckpointIO()
    for step in steps:
        io.save_checkpoint(training_state(step), run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bytes_in_tensor_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = data.index(np.float32(2.0).tobytes() * 3)  # the tensor [2., 2., 2.] of training_state(2)
    data[i:i + 4] = np.float32(-7.0).tobytes()
    path.write_bytes(bytes(data))


def no_temporary_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.startswith(".tmp")]


# -- detection ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, problem", [
    (lambda p: truncate(p, 0.5), "truncated or corrupt"),
    (lambda p: truncate(p, 0.98), "truncated or corrupt"),
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_bytes(b"not a checkpoint at all" * 10), "truncated or corrupt"),
    (flip_bytes_in_tensor_data, "does not match its CRC-32"),
])
def test_damaged_checkpoints_are_detected_with_the_file_and_the_problem(tmp_path, damage, problem):
    path = tmp_path / "last.ckpt"
    torch.save(training_state(2), path)
    damage(path)
    for load in (load_training_checkpoint, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(DamagedCheckpointError) as info:
            load(path)
        assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)


def test_a_checkpoint_that_pickles_code_is_refused_and_nothing_runs(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(training_state(2, callbacks={"evil": _Payload(tmp_path / "pwned")}), path)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load: it pickles objects other than tensors"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not (tmp_path / "pwned").exists()


def test_training_state_with_rng_omegaconf_and_attribute_dicts_round_trips_as_plain_data(tmp_path):
    np.random.seed(3)
    random.seed(3)
    state = training_state(4, hyper_parameters=AttributeDict(
        config=OmegaConf.create({"model": {"lr": 0.5, "mult": [1, 2]}}), name="x"),
        rng_states={"numpy": np.random.get_state(), "python": random.getstate(), "torch": torch.get_rng_state()},
        extra={"score": np.float64(0.25), "counts": np.arange(4)})
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(state, path)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert type(loaded["hyper_parameters"]) is dict and type(loaded["hyper_parameters"]["config"]) is dict
    assert loaded["hyper_parameters"]["config"] == {"model": {"lr": 0.5, "mult": [1, 2]}}
    np.random.set_state(loaded["rng_states"]["numpy"])
    random.setstate(loaded["rng_states"]["python"])
    np.random.seed(3)
    expected_np = np.random.rand(3)
    np.random.set_state(loaded["rng_states"]["numpy"])
    assert np.array_equal(np.random.rand(3), expected_np)
    assert torch.equal(loaded["rng_states"]["torch"], state["rng_states"]["torch"])
    assert loaded["extra"]["score"] == 0.25 and np.array_equal(loaded["extra"]["counts"], np.arange(4))


# -- rotation, fallback ------------------------------------------------------------------------------------
def test_last_checkpoint_rotates_to_last_previous(tmp_path):
    run_dir = make_run(tmp_path, 2)
    ckpts = run_dir / "checkpoints"
    first = (ckpts / "last.ckpt").read_bytes()
    assert not (ckpts / "last-previous.ckpt").exists()
    AtomicCheckpointIO().save_checkpoint(training_state(4), ckpts / "last.ckpt")
    assert (ckpts / "last-previous.ckpt").read_bytes() == first
    assert load_training_checkpoint(ckpts / "last.ckpt")["global_step"] == 4
    assert no_temporary_files(ckpts)


@pytest.mark.parametrize("damage", [lambda p: truncate(p), flip_bytes_in_tensor_data])
def test_resume_falls_back_to_the_previous_intact_checkpoint_loudly(tmp_path, damage, capsys):
    run_dir = make_run(tmp_path, 1, 2)
    ckpts = run_dir / "checkpoints"
    assert resume_run(str(run_dir), []).resume_ckpt == ckpts / "last.ckpt"
    torch.save(training_state(2), ckpts / "last.ckpt")  # same content as before; now damage it
    damage(ckpts / "last.ckpt")
    resumed = resume_run(str(run_dir), [])
    assert resumed.resume_ckpt == ckpts / "last-previous.ckpt"
    err = capsys.readouterr().err
    assert err.startswith(f"WARNING: skipping damaged checkpoint {ckpts / 'last.ckpt'}: ")
    assert f"RESUMING FROM THE OLDER CHECKPOINT {ckpts / 'last-previous.ckpt'} instead." in err


def test_resume_then_tries_the_step_checkpoints_newest_first(tmp_path, capsys):
    run_dir = make_run(tmp_path, 5, 6)
    ckpts = run_dir / "checkpoints"
    for step in (2, 4, 3):
        torch.save(training_state(step), ckpts / f"epoch=000000-step={step:09}.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpts / "epoch=000000-step=000000009.ckpt")  # weights only
    truncate(ckpts / "last.ckpt")
    (ckpts / "last-previous.ckpt").write_bytes(b"")
    assert resume_run(str(run_dir), []).resume_ckpt == ckpts / "epoch=000000-step=000000004.ckpt"
    err = capsys.readouterr().err
    assert "last-previous.ckpt: empty file (0 bytes)" in err and "step=000000009.ckpt: holds weights only" in err
    for p in ckpts.glob("epoch=*"):
        p.unlink()
    with pytest.raises(ConfigError, match=r"^--resume: no intact checkpoint to resume from in .*last\.ckpt: "
                                          r"not a complete torch checkpoint archive.*last-previous\.ckpt: empty"):
        resume_run(str(run_dir), [])


def test_resume_takes_a_numbered_last_checkpoint_of_an_earlier_version_only_when_it_has_more_steps(tmp_path, capsys):
    # Earlier versions numbered the ModelCheckpoint's saves (last-v1.ckpt, ...) when last.ckpt was
    # already there: an extended run could leave its newest state in one of them.
    run_dir = make_run(tmp_path, 4)
    ckpts = run_dir / "checkpoints"
    torch.save(training_state(4), ckpts / "last-v1.ckpt")  # the same step: last.ckpt stays first
    assert resume_run(str(run_dir), []).resume_ckpt == ckpts / "last.ckpt"
    assert capsys.readouterr().err == ""
    for name, step in (("last-v2.ckpt", 7), ("last-v3.ckpt", 6), ("last-vx.ckpt", 9), ("last-v4.ckpt", 8)):
        torch.save(training_state(step), ckpts / name)
    truncate(ckpts / "last-v4.ckpt")  # damaged: passed over
    assert resume_run(str(run_dir), []).resume_ckpt == ckpts / "last-v2.ckpt"
    assert capsys.readouterr().err == (f"WARNING: {ckpts / 'last-v2.ckpt'} holds 7 steps, {ckpts / 'last.ckpt'} only "
                                       "4 (a run directory written by an earlier version); resuming from "
                                       f"{ckpts / 'last-v2.ckpt'}.\n")


def test_loading_a_run_for_sampling_takes_its_newest_numbered_last_checkpoint_too(tmp_path, capsys):
    from ldm.inference import find_run
    run_dir = make_run(tmp_path, 4)
    ckpts = run_dir / "checkpoints"
    assert find_run(run_dir).ckpt == ckpts / "last.ckpt"
    torch.save(training_state(3), ckpts / "last-v1.ckpt")  # older than last.ckpt: not taken
    assert find_run(run_dir).ckpt == ckpts / "last.ckpt" and capsys.readouterr().err == ""
    torch.save(training_state(6), ckpts / "last-v2.ckpt")
    torch.save(training_state(9), ckpts / "last-v3.ckpt")
    truncate(ckpts / "last-v3.ckpt")  # damaged: passed over
    assert find_run(run_dir).ckpt == ckpts / "last-v2.ckpt"
    assert capsys.readouterr().err == (f"WARNING: {ckpts / 'last-v2.ckpt'} holds 6 steps, {ckpts / 'last.ckpt'} only "
                                       "4 (a run directory written by an earlier version); loading "
                                       f"{ckpts / 'last-v2.ckpt'}.\n")
    assert find_run(ckpts / "last.ckpt").ckpt == ckpts / "last.ckpt"  # a file named by the user is the file


def test_resume_from_a_named_damaged_file_is_an_error_naming_it(tmp_path):
    run_dir = make_run(tmp_path, 1, 2)
    truncate(run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"^--resume: cannot resume from damaged checkpoint .*last\.ckpt: not a "
                                          r"complete torch checkpoint archive"):
        resume_run(str(run_dir / "checkpoints" / "last.ckpt"), [])
    assert resume_run(str(run_dir / "checkpoints" / "last-previous.ckpt"), []).resume_ckpt.name == "last-previous.ckpt"


# -- full disk ---------------------------------------------------------------------------------------------
def _disk_full_after(nbytes: int):
    def save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"\0" * nbytes)  # part of the file made it to disk, then the disk was full
            out.flush()
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return save


def test_full_disk_while_saving_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, 1, 2)
    ckpts = run_dir / "checkpoints"
    last, previous = (ckpts / "last.ckpt").read_bytes(), (ckpts / "last-previous.ckpt").read_bytes()
    monkeypatch.setattr("ldm.trainer.checkpoint_io.torch.save", _disk_full_after(4096))
    with pytest.raises(OSError) as info:
        AtomicCheckpointIO().save_checkpoint(training_state(3), ckpts / "last.ckpt")
    assert info.value.errno == errno.ENOSPC
    assert (ckpts / "last.ckpt").read_bytes() == last and (ckpts / "last-previous.ckpt").read_bytes() == previous
    assert sorted(p.name for p in ckpts.iterdir()) == ["last-previous.ckpt", "last.ckpt"]
    assert resume_run(str(run_dir), []).resume_ckpt == ckpts / "last.ckpt"


def test_full_disk_while_saving_weights_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    save_state_dict(path, {"w": torch.ones(2)})
    before = path.read_bytes()
    monkeypatch.setattr("ldm.checkpoint.torch.save", _disk_full_after(100))
    with pytest.raises(OSError, match="No space left"):
        save_state_dict(path, {"w": torch.zeros(2)})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.ckpt"]


# -- main.py --resume end to end ---------------------------------------------------------------------------
def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys):
    run_dir = tmp_path / "logs" / "2026-01-01T00-00-00_tiny"
    (run_dir / "configs").mkdir(parents=True)
    OmegaConf.save(load_experiment([DEMO_AE], TINY), run_dir / "configs" / "2026-01-01T00-00-00-project.yaml")
    (run_dir / "checkpoints").mkdir()
    torch.save(training_state(2, callbacks={"evil": _Payload(tmp_path / "pwned")}),
               run_dir / "checkpoints" / "last.ckpt")
    assert main(["--resume", str(run_dir), "-t", "--accelerator", "cpu", "--logger", "none", "--max_steps", "4"]) == 2
    err = capsys.readouterr().err
    assert f"config error: --resume: {run_dir / 'checkpoints' / 'last.ckpt'}: refusing to load" in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_training_resumes_from_the_previous_checkpoint_when_the_last_is_truncated(tmp_path, capsys):
    assert train(tmp_path) == 0
    rundir = only_run(tmp_path)
    ckpts = rundir / "checkpoints"
    previous_step = load_training_checkpoint(ckpts / "last-previous.ckpt")["global_step"]
    assert 0 < previous_step < 6
    truncate(ckpts / "last.ckpt", 0.3)
    assert run(["--resume", str(rundir), "-t", "--accelerator", "cpu", "--logger", "csv", "--max_steps", "8"]) == 0
    err = capsys.readouterr().err
    assert f"WARNING: skipping damaged checkpoint {ckpts / 'last.ckpt'}" in err
    assert f"RESUMING FROM THE OLDER CHECKPOINT {ckpts / 'last-previous.ckpt'}" in err
    assert load_training_checkpoint(ckpts / "last.ckpt")["global_step"] == 8
    assert no_temporary_files(rundir)
