"""Command line, run directories, trainer-config mapping, atomic checkpoints, image logging."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.config import ConfigError
from ldm.trainer.callbacks import ImageLogger
from ldm.trainer.checkpoint_io import AtomicCheckpointIO
from ldm.trainer.cli import parse_args, parse_gpus
from ldm.trainer.rundir import new_run, resume_run, save_configs
from ldm.trainer.trainer_config import normalise_trainer_config


def opts(**kw):
    base = dict(gpus=None, accelerator=None, devices=None, num_nodes=None, strategy=None, precision=None,
                max_steps=None, max_epochs=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_parses_original_flags_and_overrides():
    opt, overrides = parse_args(["--base", "a.yaml", "b.yaml", "-t", "--gpus", "0,1", "-n", "exp", "-s", "7",
                                 "--no-test", "model.params.x=1", "data.params.batch_size=4"])
    assert opt.base == ["a.yaml", "b.yaml"] and opt.train is True and opt.no_test is True
    assert (opt.gpus, opt.name, opt.seed, opt.scale_lr) == ("0,1", "exp", 7, False)
    assert overrides == ["model.params.x=1", "data.params.batch_size=4"]
    opt, overrides = parse_args(["--base", "a.yaml", "model.params.x=1"])  # nargs="*" must not eat it
    assert opt.base == ["a.yaml"] and overrides == ["model.params.x=1"]


@pytest.mark.parametrize("argv, message", [
    (["-t"], "give at least one config"),
    (["-b", "a.yaml", "--bogus"], "unrecognized arguments: --bogus"),
    (["-b", "a.yaml", "-n", "x", "-r", "logs/run"], "cannot be combined"),
])
def test_cli_rejects_bad_invocations(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("spec, expected", [
    ("0,1", ("gpu", [0, 1])), ("0,", ("gpu", [0])), ("2", ("gpu", 2)), ("-1", ("gpu", -1)), ("0", ("cpu", 1)),
])
def test_legacy_gpus_mapping(spec, expected):
    assert parse_gpus(spec) == expected


def test_trainer_config_maps_legacy_keys_and_rejects_unknown():
    with pytest.warns(UserWarning, match="weights_summary was removed"):
        cfg = normalise_trainer_config({"benchmark": True, "weights_summary": None, "replace_sampler_ddp": False},
                                       opts(accelerator="cpu", max_steps=5, precision="16"))
    assert cfg == {"benchmark": True, "use_distributed_sampler": False, "accelerator": "cpu", "devices": 1,
                   "max_steps": 5, "precision": "16-mixed"}
    with pytest.raises(ConfigError, match=r"^lightning\.trainer\.max_step: not a Lightning 2 Trainer argument"):
        normalise_trainer_config({"max_step": 3}, opts())
    with pytest.raises(ConfigError, match="use -r/--resume"):
        normalise_trainer_config({"resume_from_checkpoint": "x.ckpt"}, opts())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_gpus_without_cuda_suggest_cpu():
    with pytest.raises(ConfigError, match="--accelerator cpu"):
        normalise_trainer_config({}, opts(gpus="0,1"))
    with pytest.raises(ConfigError, match="--accelerator cpu"):
        normalise_trainer_config({"gpus": "0,"}, opts())


def test_run_dirs_are_unique_and_named(tmp_path):
    a = new_run(tmp_path, ["configs/demo/ae.yaml"], now="2026-01-01T00-00-00")
    assert a.logdir == tmp_path / "2026-01-01T00-00-00_ae"
    a.logdir.mkdir()
    b = new_run(tmp_path, ["configs/demo/ae.yaml"], now="2026-01-01T00-00-00")
    assert b.logdir == tmp_path / "2026-01-01T00-00-00_ae-1"
    c = new_run(tmp_path, [], name="exp", postfix="_v2", debug=True, now="T")
    assert c.logdir == tmp_path / "debug" / "T_exp_v2"


def test_resume_uses_saved_configs_and_last_checkpoint(tmp_path):
    run = new_run(tmp_path, ["x.yaml"], now="T0")
    config = OmegaConf.create({"model": {"target": "t"}, "lightning": {"trainer": {"max_steps": 3}}})
    project, lightning = save_configs(run, config)
    assert OmegaConf.load(project) == OmegaConf.create({"model": {"target": "t"}})
    assert OmegaConf.load(lightning).lightning.trainer.max_steps == 3
    with pytest.raises(ConfigError, match="no checkpoints/last.ckpt"):
        resume_run(str(run.logdir), [])
    run.ckptdir.mkdir()
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "optimizer_states": [], "state_dict": {}},
                                         run.ckptdir / "last.ckpt")
    resumed = resume_run(str(run.logdir), ["extra.yaml"], now="T1")
    assert resumed.resume_ckpt == run.ckptdir / "last.ckpt"
    assert resumed.base_configs == [lightning, project, Path("extra.yaml")]
    assert resume_run(str(run.ckptdir / "last.ckpt"), []).logdir == run.logdir
    with pytest.raises(ConfigError, match="cannot find"):
        resume_run(str(tmp_path / "nope"), [])


def test_atomic_checkpoint_keeps_previous_file_on_failure(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"w": torch.zeros(3), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]  # no temporary file left behind


def test_image_logger_schedule_and_files(tmp_path):
    logger = ImageLogger(batch_frequency=8, max_images=2, increase_log_steps=True)
    steps = [s for s in range(0, 20) if logger.check_frequency(s)]
    assert steps == [1, 2, 4, 8, 16]
    images = {"inputs": torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)}
    written = logger.log_local(tmp_path, "train", images, global_step=8, current_epoch=0, batch_idx=3)
    assert [p.name for p in written] == ["inputs_gs-000008_e-000000_b-000003.png"]
    from PIL import Image
    img = Image.open(written[0])
    assert img.mode == "RGB" and img.size == (2 * 4 + 3 * 2, 4 + 2 * 2)  # make_grid pads by 2


@pytest.mark.parametrize("log_validation", [True, False])
def test_image_logger_validation_grids_can_be_left_out(log_validation):
    logger = ImageLogger(batch_frequency=1, max_images=2, increase_log_steps=False, log_validation=log_validation)
    splits = []
    logger.log_img = lambda pl_module, batch, batch_idx, split="train": splits.append((split, batch_idx))

    class Trainer:
        sanity_checking = False

    logger.on_train_batch_end(Trainer(), None, None, {}, 0)
    for batch_idx in (0, 1):
        logger.on_validation_batch_end(Trainer(), None, None, {}, batch_idx)
    assert splits == ([("train", 0), ("val", 0)] if log_validation else [("train", 0)])
