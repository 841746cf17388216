"""configs/demo: every demo latent diffusion config trains (shrunk) on the synthetic data through
main.py's ``run``, on top of a shrunk demo autoencoder trained the same way, and the sampling
script of its task works on the resulting run directory, called with scripts/demo.py's own
sampling command. This is the proof that each script works on demo checkpoints, offline.

Shrinking: 16 px images (f=2 as in the demo, so 8x8x3 latents and 8x8 low-resolution images),
UNets of 32 channels, batches of 4, two optimizer steps.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.data.synthetic import SHAPES, SyntheticShapesValidation, layout_boxes
from ldm.inference.layouts import read_layouts
from ldm.trainer import precision
from ldm.trainer.run import run

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo"
SIZE = 16  # px; latents 8x8


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _module(REPO / "scripts" / "demo.py", "demo_script")
LDM_STAGES = [s for s in demo.STAGES if s.needs_autoencoder]

DATA = ["data.params.batch_size=4", "data.params.train.params.length=16", "data.params.validation.params.length=4",
        f"data.params.train.params.size={SIZE}", f"data.params.validation.params.size={SIZE}",
        "lightning.trainer.val_check_interval=2", "lightning.trainer.limit_val_batches=1",
        "lightning.callbacks.image_logger.params.batch_frequency=1000",
        "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false"]
LDM = [f"model.params.first_stage_config.params.ddconfig.resolution={SIZE}",
       f"model.params.image_size={SIZE // demo.DEMO_F}",
       f"model.params.unet_config.params.image_size={SIZE // demo.DEMO_F}",
       "model.params.unet_config.params.model_channels=32", "model.params.unet_config.params.num_head_channels=16"]


def train(logdir: Path, config: str, name: str, *overrides: str) -> Path:
    assert run(["--base", config, "-t", "--accelerator", "cpu", "--logger", "csv", "-n", name, "-l", str(logdir),
                "--max_steps", "2", *DATA, *overrides]) == 0
    (rundir,) = logdir.glob(f"*_{name}")
    return rundir


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("logs")
    rundir = train(logdir, str(DEMO / "autoencoder_kl.yaml"), "demo_autoencoder",
                   f"model.params.ddconfig.resolution={SIZE}")
    return rundir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A REPA teacher of the class config's width (24) at the tests' image size, barely trained."""
    from ldm.eval.classifier import save_classifier, train_classifier

    model, config = train_classifier(size=SIZE, width=24, steps=2, seed=1, batch_size=8, train_images=16, val_images=8,
                                     progress=False)
    return save_classifier(model, config, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def class_ckpt(tmp_path_factory, autoencoder, teacher) -> Path:
    """The shrunk class stage's last.ckpt: the UNet the shape text model starts from."""
    rundir = train(tmp_path_factory.mktemp("logs"), str(DEMO / "ldm_class.yaml"), "demo_ldm_class",
                   f"model.params.first_stage_config.params.ckpt_path={autoencoder}", *LDM,
                   f"{demo.TEACHER_KEY}={teacher}", f"{demo.TEACHER_KEY.rsplit('.', 1)[0]}.size={SIZE}")
    return rundir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[Path]]:
    return demo.write_inputs(tmp_path_factory.mktemp("inputs"), size=SIZE)


def pngs(folder: Path) -> dict[str, tuple[int, ...]]:
    """Relative path -> array shape of every PNG under ``folder``."""
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)).shape for p in sorted(folder.rglob("*.png"))}


RGB = (SIZE, SIZE, 3)
TEXT_FOLDERS = ("a_red_circle_and_a_blue_square", "a_red_circle_on_a_blue_background")  # the demo's prompts
# Every PNG the stage's sampling command writes, with its shape (inputs: 2 validation examples).
EXPECTED = {
    "ldm_uncond": {**{f"img/{i:05d}.png": RGB for i in range(16)}, "grid-0000.png": (2 + 4 * 18, 2 + 4 * 18, 3)},
    "ldm_class": {**{f"img/{i:05d}.png": RGB for i in range(16)}, "grid-0000.png": (2 + 4 * 18, 2 + 4 * 18, 3)},
    "ldm_text": {**{f"samples/{p}/{i:05d}.png": RGB for p in TEXT_FOLDERS for i in range(16)},
                 **{f"grid-{p}-0000.png": (2 + 18, 2 + 16 * 18, 3) for p in TEXT_FOLDERS}},
    "ldm_text_shapes": {**{f"samples/{p}/{i:05d}.png": RGB for p in TEXT_FOLDERS for i in range(16)},
                        **{f"grid-{p}-0000.png": (2 + 18, 2 + 16 * 18, 3) for p in TEXT_FOLDERS}},
    "ldm_sr": {**{f"shapes{j}_lr_x{demo.DEMO_F}_{k}.png": RGB for j in range(2) for k in range(4)},
               **{f"grid-shapes{j}_lr-0000.png": (2 + 18, 2 + 5 * 18, 3) for j in range(2)}},
    "ldm_semantic": {**{f"shapes{j}_seg/{k:05d}.png": RGB for j in range(2) for k in range(4)},
                     **{f"grid-shapes{j}_seg-0000.png": (2 + 18, 2 + 5 * 18, 3) for j in range(2)}},
    "ldm_layout": {**{f"boxes-{j}/{k:05d}.png": RGB for j in range(2) for k in range(4)},
                   **{f"grid-boxes-{j}-0000.png": (2 + 18, 2 + 5 * 18, 3) for j in range(2)}},
    "ldm_inpaint": {"shapes0.png": RGB, "shapes1.png": RGB, "grid-0000.png": (2 + 2 * 18, 2 + 3 * 18, 3)},
}


def test_every_demo_diffusion_config_has_a_stage_and_a_check():
    configs = {p.stem for p in DEMO.glob("*.yaml")
               if OmegaConf.load(p).model.target == "ldm.models.diffusion.ddpm.LatentDiffusion"}
    assert configs == {s.name for s in LDM_STAGES} == set(EXPECTED)
    assert all(s.config == f"configs/demo/{s.name}.yaml" for s in LDM_STAGES)


def _without(node, keys: set[str]) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node).items() if k not in keys}


@pytest.mark.parametrize("stage", [s.name for s in LDM_STAGES])
def test_demo_diffusion_configs_build_the_demo_autoencoder(stage):
    # the residual shortcut is parameter-free: a first stage built without it would decode the demo
    # autoencoder's latents wrongly (its shortcut_factor buffer makes loading fail instead)
    ae = OmegaConf.load(DEMO / "autoencoder_kl.yaml").model.params
    first = OmegaConf.load(DEMO / f"{stage}.yaml").model.params.first_stage_config.params
    assert first.ddconfig == ae.ddconfig and first.embed_dim == ae.embed_dim
    assert first.get("residual_shortcut", False) == ae.get("residual_shortcut", False) is True


@pytest.mark.parametrize("name", ["ldm_sr", "ldm_semantic", "ldm_layout", "ldm_inpaint"])
def test_task_configs_differ_from_the_demo_only_in_conditioning(name):
    base, task = OmegaConf.load(DEMO / "ldm_uncond.yaml"), OmegaConf.load(DEMO / f"{name}.yaml")
    ae = OmegaConf.load(DEMO / "autoencoder_kl.yaml")
    assert task.lightning == base.lightning and task.model.base_learning_rate == base.model.base_learning_rate
    first = task.model.params.first_stage_config.params
    assert first.ckpt_path is None and first.ddconfig == ae.model.params.ddconfig
    assert first.embed_dim == ae.model.params.embed_dim
    conditioning = {"in_channels", "use_spatial_transformer", "transformer_depth", "context_dim"}
    unet, base_unet = task.model.params.unet_config.params, base.model.params.unet_config.params
    assert _without(unet, conditioning) == _without(base_unet, conditioning)
    # data: the demo's sizes, with the condition's keys switched on
    for split in ("train", "validation"):
        params = dict(task.data.params[split].params)
        extra = {k: params.pop(k) for k in list(params) if k not in base.data.params[split].params}
        assert params == dict(base.data.params[split].params) and set(extra) <= {
            "lr_factor", "layout_tokens", "layout_grid", "layout_vocab", "inpainting_masks"}


def test_task_configs_match_the_synthetic_data():
    ae = OmegaConf.load(DEMO / "autoencoder_kl.yaml").model.params.ddconfig
    assert 2 ** (len(ae.ch_mult) - 1) == demo.DEMO_F  # the latents' downsampling factor
    sr_config = OmegaConf.load(DEMO / "ldm_sr.yaml")
    assert sr_config.data.params.train.params.lr_factor == sr_config.data.params.validation.params.lr_factor == demo.DEMO_F
    sr = sr_config.model.params
    assert sr.conditioning_key == "concat" and sr.cond_stage_key == "LR_image"
    assert sr.unet_config.params.in_channels == 6 and sr.cond_stage_config.target == "torch.nn.Identity"

    semantic = OmegaConf.load(DEMO / "ldm_semantic.yaml").model.params
    rescaler = semantic.cond_stage_config.params
    assert rescaler.in_channels == 1 + len(SHAPES) == SyntheticShapesValidation(size=32, length=1).n_semantic_classes
    assert 32 // 2 ** rescaler.n_stages == semantic.image_size and semantic.unet_config.params.in_channels == 6

    layout = OmegaConf.load(DEMO / "ldm_layout.yaml")
    embedder, data = layout.model.params.cond_stage_config.params, layout.data.params.train.params
    example = SyntheticShapesValidation(size=32, length=1, layout_tokens=True, layout_grid=data.layout_grid,
                                        layout_vocab=data.layout_vocab)[0]
    assert embedder.vocab_size == data.layout_vocab and not embedder.use_tokenizer
    assert example["coordinates_bbox"].shape == (embedder.max_seq_len,) and demo.LAYOUT_GRID == data.layout_grid

    inpaint = OmegaConf.load(DEMO / "ldm_inpaint.yaml").model.params
    assert inpaint.concat_mask_key == "mask" and inpaint.cond_stage_key == "masked_image"
    assert inpaint.unet_config.params.in_channels == 3 + 3 + 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", LDM_STAGES, ids=[s.name for s in LDM_STAGES])
def test_demo_stage_trains_and_its_script_samples(stage, autoencoder, teacher, inputs, request, tmp_path):
    extra = [f"{demo.TEACHER_KEY}={teacher}", f"{demo.TEACHER_KEY.rsplit('.', 1)[0]}.size={SIZE}"] \
        if demo.needs_teacher(stage.config) else []
    if stage.name in demo.STARTS_FROM_CLASS:
        extra.append(f"{demo.CLASS_CKPT_KEY}={request.getfixturevalue('class_ckpt')}")
    if stage.name in ("ldm_class", "ldm_text"):  # a snapshot after the first of 2 steps: the samples' guide
        extra.append(f"{demo.SNAPSHOT_KEY}=1")
    rundir = train(tmp_path / "logs", str(REPO / stage.config), f"demo_{stage.name}",
                   f"model.params.first_stage_config.params.ckpt_path={autoencoder}", *LDM, *extra)
    ckpt = torch.load(rundir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2

    cmds = demo.sample_commands({stage.name: rundir}, tmp_path / "samples", inputs, steps=2)
    assert len(cmds) == 1  # the text stages: every prompt in one txt2img.py call
    written = []
    for cmd in cmds:
        assert cmd[0] == sys.executable and cmd[1].startswith("scripts/")
        script = _module(REPO / cmd[1], f"script_{Path(cmd[1]).stem}")
        written += script.main([*cmd[2:], "--device", "cpu", "--no-progress"])
    (folder,) = (tmp_path / "samples").iterdir()
    (outdir,) = folder.iterdir()
    assert outdir == demo.samples_dir(tmp_path / "samples", stage.name, rundir)  # one folder per run
    assert pngs(outdir) == EXPECTED[stage.name]
    assert {p for p in written if p.suffix == ".png"} == {outdir / k for k in EXPECTED[stage.name]}

    if stage.name == "ldm_class":  # the labels cycle over --classes 0..7; the step-1 snapshot guides
        (npz,) = outdir.glob("samples_16x16x16x3.npz")
        assert np.load(npz)["labels"].tolist() == list(range(8)) * 2
        (cmd,) = cmds
        guide = cmd[cmd.index("--guide-model") + 1]
        assert Path(guide).name.endswith("step=000000001.ckpt") and Path(guide).parent.name == "trainstep_checkpoints"
        assert cmd[cmd.index("--guide-weight") + 1] == f"{demo.CLASS_GUIDE_WEIGHT:g}" == "2"
    if stage.name == "ldm_text":  # every prompt's samples autoguided by the step-1 snapshot
        (cmd,) = cmds
        guide = cmd[cmd.index("--guide-model") + 1]
        assert Path(guide).name.endswith("step=000000001.ckpt") and Path(guide).parent.name == "trainstep_checkpoints"
        assert cmd[cmd.index("--guide-weight") + 1] == f"{demo.TEXT_GUIDE_WEIGHT:g}"
    if stage.name == "ldm_text_shapes":  # the class UNet's own weights, frozen; the new blocks trained
        start = torch.load(request.getfixturevalue("class_ckpt"), map_location="cpu", weights_only=False)["state_dict"]
        state = ckpt["state_dict"]
        frozen = [k for k in start if k.startswith("model.diffusion_model.")]
        assert frozen and all(torch.equal(state[k], start[k]) for k in frozen)
        new = [k for k in state if k.startswith("model.diffusion_model.") and k not in start]
        assert new and all(k.split(".")[2:4] in (["input_blocks", "1"], ["output_blocks", "2"],
                                                 ["output_blocks", "3"]) for k in new)
    if stage.name == "ldm_inpaint":  # known pixels are the input's
        for image, mask in zip(inputs["image"], inputs["mask"]):
            keep = np.asarray(Image.open(mask)) < 128
            assert keep.any() and not keep.all()
            assert np.array_equal(np.asarray(Image.open(outdir / image.name))[keep], np.asarray(Image.open(image))[keep])


def test_write_inputs_cut_from_the_validation_set(tmp_path):
    files = demo.write_inputs(tmp_path, size=32, n=2)
    assert {k: [p.name for p in v] for k, v in files.items()} == {
        "image": ["shapes0.png", "shapes1.png"], "mask": ["shapes0_mask.png", "shapes1_mask.png"],
        "lr": ["shapes0_lr.png", "shapes1_lr.png"], "seg": ["shapes0_seg.png", "shapes1_seg.png"],
        "layout": ["boxes.json"]}
    data = SyntheticShapesValidation(size=32, length=2, lr_factor=2, inpainting_masks=True)
    layouts = read_layouts(files["layout"][0])
    for i in range(2):
        ex = data[i]
        assert np.array_equal(np.asarray(Image.open(files["seg"][i])), ex["segmentation_index"])
        assert np.array_equal(np.asarray(Image.open(files["mask"][i])) > 0, ex["mask"][..., 0] > 0)
        assert np.asarray(Image.open(files["lr"][i])).shape == (16, 16, 3)
        image = np.asarray(Image.open(files["image"][i])).astype(np.float32) / 127.5 - 1
        assert np.abs(image - ex["image"]).max() <= 1 / 127.5
        boxes, crop = layouts[i]
        assert np.allclose(boxes, layout_boxes(ex)) and crop == (0.0, 0.0, 1.0, 1.0)
    assert [len(o["objects"]) for o in json.loads(files["layout"][0].read_text())] == [data[0]["n_objects"],
                                                                                       data[1]["n_objects"]]


def test_stage_selection():
    names = lambda stages: [s.name for s in stages]  # noqa: E731
    default = ["autoencoder", "ldm_class", "ldm_text", "ldm_text_shapes"]  # the stages with targets
    assert names(demo.select_stages(None)) == default
    every = ["autoencoder", "ldm_uncond", "ldm_class", "ldm_text", "ldm_text_shapes", "ldm_sr", "ldm_semantic",
             "ldm_layout", "ldm_inpaint"]
    assert names(demo.select_stages(["all"])) == every
    assert names(demo.select_stages(None, tasks=True)) == [*default, *every[5:]]
    assert names(demo.select_stages(["ldm_inpaint", "autoencoder"])) == ["autoencoder", "ldm_inpaint"]
    assert names(demo.select_stages(["autoencoder"], tasks=True)) == ["autoencoder", *every[5:]]
    assert names(demo.select_stages(["autoencoder", "ldm_uncond"])) == ["autoencoder", "ldm_uncond"]
    with pytest.raises(ValueError, match="unknown stage"):
        demo.select_stages(["ldm_sr", "ldm_superres"])
    with pytest.raises(ValueError, match="task stages need sampling inputs"):
        demo.sample_commands({"ldm_sr": Path("run")}, Path("out"))


def test_each_run_samples_into_its_own_folder():
    # A later demo in the same logdir must not read (or report) an earlier run's samples as its own.
    first = demo.sample_commands({"ldm_text": Path("logs/2026-01-01T00-00-00_demo_ldm_text")}, Path("out"),
                                 text_guide_weight=0)
    second = demo.sample_commands({"ldm_text": Path("logs/2026-01-02T00-00-00_demo_ldm_text")}, Path("out"),
                                  text_guide_weight=0)
    assert first[0][first[0].index("--outdir") + 1] == str(Path("out/text/2026-01-01T00-00-00_demo_ldm_text"))
    assert second[0][second[0].index("--outdir") + 1] == str(Path("out/text/2026-01-02T00-00-00_demo_ldm_text"))
    every = {s.name: Path(f"logs/x_{s.name}") for s in demo.select_stages(["all"]) if s.name != "autoencoder"}
    assert set(demo.SAMPLE_FOLDERS) == set(every)  # every sampled stage has a folder


def test_demo_rejects_unknown_stages_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--stages", "autoencoder", "ldm_superres", "-l", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown stage(s) ldm_superres" in err and "ldm_sr" in err
    assert not any(tmp_path.iterdir())


def test_steps_factor_scales_every_step_count_of_a_stage():
    ae = OmegaConf.load(REPO / "configs/demo/autoencoder_kl.yaml")
    scaled = OmegaConf.merge(ae, OmegaConf.from_dotlist(demo.step_overrides("configs/demo/autoencoder_kl.yaml", 3)))
    for key in demo.STEP_KEYS:  # the autoencoder has all of them but the class run's snapshot interval
        if key != demo.SNAPSHOT_KEY:
            assert OmegaConf.select(scaled, key) == 3 * OmegaConf.select(ae, key), key
    assert OmegaConf.select(scaled, demo.SNAPSHOT_KEY) is None
    # the warm-up stays; the decay still ends at the last batch (max_steps counts both optimizers)
    sched = scaled.model.params.scheduler_config.params
    assert sched.warm_up_steps == ae.model.params.scheduler_config.params.warm_up_steps
    assert 2 * sched.max_decay_steps == scaled.lightning.trainer.max_steps
    assert scaled.model.params.lossconfig.params.disc_start > scaled.lightning.trainer.max_steps
    overrides = demo.step_overrides("configs/demo/ldm_class.yaml", 2)
    assert overrides == ["lightning.trainer.max_steps=2700", "lightning.trainer.val_check_interval=2700",
                         "lightning.callbacks.image_logger.params.batch_frequency=2700",
                         "lightning.callbacks.step_checkpoint.params.every_n_train_steps=1350",
                         "model.params.scheduler_config.params.max_decay_steps=2700"]
    cls = OmegaConf.load(REPO / "configs/demo/ldm_class.yaml")  # its decay ends at the last step too
    assert cls.model.params.scheduler_config.params.max_decay_steps == cls.lightning.trainer.max_steps
    assert demo.step_overrides("configs/demo/ldm_class.yaml", 1) == []
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="--steps-factor must be a whole number"):
            demo.step_overrides("configs/demo/ldm_class.yaml", bad)


@pytest.mark.parametrize("what", ["class", "text"])
def test_samples_are_autoguided_by_the_half_way_snapshot(what, tmp_path, monkeypatch):
    stage, other = f"ldm_{what}", "text" if what == "class" else "class"
    run_dir, weight = tmp_path / f"run_{stage}", f"{what}_guide_weight"
    with pytest.raises(SystemExit, match=f"no snapshot to autoguide the {what} samples with; pass --{what}-guide-weight 0"):
        demo.sample_commands({stage: run_dir}, tmp_path)
    unguided = demo.sample_commands({stage: run_dir}, tmp_path, **{weight: 0})[0]
    assert "--guide-model" not in unguided and "--guide-weight" not in unguided
    config = f"configs/demo/{stage}.yaml"
    cfg = OmegaConf.load(REPO / config)  # the snapshot falls half-way, also when scaled
    every = OmegaConf.select(cfg, demo.SNAPSHOT_KEY)
    assert 2 * every == cfg.lightning.trainer.max_steps
    assert f"{demo.SNAPSHOT_KEY}={2 * every}" in demo.step_overrides(config, 2)
    half, _ = fake_snapshots(run_dir, 2 * every, 4 * every)  # --steps-factor 2
    cmds = demo.sample_commands({stage: run_dir}, tmp_path, **{weight: 1.5})
    (cmd,) = cmds  # the text prompts in one txt2img.py call
    assert cmd[cmd.index("--guide-model") + 1] == str(half) and cmd[cmd.index("--guide-weight") + 1] == "1.5"
    sampled = []
    fake_snapshots(tmp_path / f"run_ldm_{other}", 10, 20)
    monkeypatch.setattr(demo, "run_stage", lambda name, *a, **k: tmp_path / f"run_{name}")
    monkeypatch.setattr(demo, "run", lambda cmd, commands, what: sampled.append(cmd) if what == "sampling" else None)
    demo.main(["--no-report", f"--{what}-guide-weight", "0", "--text-compose-weight", "0", "-l", str(tmp_path)])
    script = "sample_diffusion.py" if what == "class" else "txt2img.py"
    assert [("--guide-model" in cmd) for cmd in sampled] == [Path(cmd[1]).name != script for cmd in sampled]


@pytest.mark.parametrize("argv, message", [(["--steps-factor", "0"], "--steps-factor must be at least 1"),
                                           (["--steps-factor", "2", "--fast"], "do not go together"),
                                           (["--class-scale", "0"], "--class-scale must be a positive number, got 0"),
                                           (["--class-scale", "nan"], "--class-scale must be a positive number"),
                                           (["--class-guide-weight", "-1"],
                                            "--class-guide-weight must be a finite number >= 0, got -1"),
                                           (["--class-guide-weight", "inf"], "--class-guide-weight must be a finite"),
                                           (["--text-guide-weight", "-0.5"],
                                            "--text-guide-weight must be a finite number >= 0, got -0.5")])
def test_demo_rejects_bad_steps_factor_before_training(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        demo.main([*argv, "-l", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_demo_help_runs_as_a_script():
    out = subprocess.run([sys.executable, "scripts/demo.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for word in ("--stages", "--tasks", "--fast", "--steps-factor", "ldm_sr", "ldm_semantic", "ldm_layout", "ldm_inpaint"):
        assert word in out.stdout



@pytest.mark.parametrize("native_bf16", [True, False])
def test_demo_trains_the_latent_stages_on_the_new_autoencoder(tmp_path, monkeypatch, native_bf16):
    calls, precisions = [], {}
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)

    def fake_run_stage(name, config, ae_ckpt, logdir, fast, commands, steps_factor=1, teacher=None, class_ckpt=None,
                       precision="32"):
        calls.append(("stage", name, ae_ckpt, teacher, class_ckpt))
        precisions[name] = precision
        return tmp_path / f"run_{name}"

    fake_snapshots(tmp_path / "run_ldm_class", 500, 1000)
    fake_snapshots(tmp_path / "run_ldm_text", 300, 600)
    monkeypatch.setattr(demo, "run_stage", fake_run_stage)
    monkeypatch.setattr(demo, "run", lambda cmd, commands, what: calls.append(("run", cmd[1], cmd[cmd.index("--out") + 1]
                                                                                 if "--out" in cmd else None)))
    demo.main(["--no-report", "-l", str(tmp_path)])
    ae = tmp_path / "run_autoencoder" / "checkpoints" / "last.ckpt"
    teacher = tmp_path.resolve() / "demo_teacher"
    assert calls[0] == ("stage", "autoencoder", None, None, None)
    # the class model's REPA teacher is trained (seed 1) before the stage that needs it, and passed to it
    assert calls[1] == ("run", "scripts/train_classifier.py", str(teacher))
    class_ckpt = tmp_path / "run_ldm_class" / "checkpoints" / "last.ckpt"
    assert calls[2:5] == [("stage", "ldm_class", ae, teacher, None), ("stage", "ldm_text", ae, None, None),
                          ("stage", "ldm_text_shapes", ae, None, class_ckpt)] and len(calls) == 7
    assert [c[1] for c in calls[5:]] == ["scripts/sample_diffusion.py", "scripts/txt2img.py"]  # both prompts at once
    # --precision auto: the class and shape stages in bf16 autocast where the CPU has bf16 instructions; the
    # autoencoder and the colour model (no colours in bf16) in fp32
    mixed = "bf16-mixed" if native_bf16 else "32"
    assert precisions == {"autoencoder": "32", "ldm_class": mixed, "ldm_text": "32", "ldm_text_shapes": mixed}
    demo.main(["--no-report", "--precision", "32", "-l", str(tmp_path)])
    assert set(precisions.values()) == {"32"}


def fake_snapshots(run_dir: Path, *steps: int) -> list[Path]:
    folder = run_dir / "checkpoints" / "trainstep_checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"epoch={s // 1000:06}-step={s:09}.ckpt" for s in steps]
    for p in paths:
        p.touch()
    return paths


def test_class_scale_reaches_the_class_samples_only(tmp_path, monkeypatch):
    sampled = []
    fake_snapshots(tmp_path / "run_ldm_class", 500, 1000)
    fake_snapshots(tmp_path / "run_ldm_text", 300, 600)
    monkeypatch.setattr(demo, "run_stage", lambda name, *a, **k: tmp_path / f"run_{name}")
    monkeypatch.setattr(demo, "run", lambda cmd, commands, what: sampled.append(cmd) if what == "sampling" else None)
    demo.main(["--no-report", "--class-scale", "5", "-l", str(tmp_path)])
    scales = {Path(cmd[1]).name: cmd[cmd.index("--scale") + 1] for cmd in sampled}
    assert scales == {"sample_diffusion.py": "5", "txt2img.py": "3.0"}  # the text samples keep theirs
    default = demo.sample_commands({"ldm_class": tmp_path / "run_ldm_class"}, tmp_path)[0]
    assert default[default.index("--scale") + 1] == f"{demo.CLASS_SCALE:g}" == "3"


def test_text_samples_compose_the_shape_and_colour_models(tmp_path, monkeypatch):
    runs = {"ldm_text": tmp_path / "run_ldm_text", "ldm_text_shapes": tmp_path / "run_ldm_text_shapes"}
    (cmd,) = demo.sample_commands(runs, tmp_path / "out")  # one txt2img.py call renders every prompt
    at = cmd.index("--prompt")
    assert cmd[at + 1:at + 1 + len(demo.TEXT_PROMPTS)] == [p.text for p in demo.TEXT_PROMPTS]
    rest = at + 1 + len(demo.TEXT_PROMPTS)
    flags = dict(zip(cmd[2:at:2], cmd[3:at:2])) | dict(zip(cmd[rest::2], cmd[rest + 1::2]))
    assert flags["-r"] == str(runs["ldm_text_shapes"]) and flags["--compose-model"] == str(runs["ldm_text"])
    assert flags["--compose-weight"] == f"{demo.TEXT_COMPOSE_WEIGHT:g}" == "3" and flags["--sampler"] == "unipc"
    assert "--guide-model" not in cmd  # the shape run has no snapshot; the colour run's is not needed
    assert flags["--outdir"] == str(demo.samples_dir(tmp_path / "out", "ldm_text", runs["ldm_text"]))
    fake_snapshots(runs["ldm_text"], 300, 600)
    (alone, *_) = demo.sample_commands(runs, tmp_path / "out", text_compose_weight=0)
    assert alone[alone.index("-r") + 1] == str(runs["ldm_text"]) and "--compose-model" not in alone
    assert alone[alone.index("--guide-weight") + 1] == f"{demo.TEXT_GUIDE_WEIGHT:g}"
    # the demo starts the shape model from this invocation's class run, else the logdir's latest
    started = {}
    fake_snapshots(tmp_path / "run_ldm_class", 500, 1000)
    monkeypatch.setattr(demo, "run_stage", lambda name, *a, **k: (started.update({name: a}), tmp_path / f"run_{name}")[1])
    monkeypatch.setattr(demo, "run", lambda cmd, commands, what: None)
    demo.main(["--no-report", "-l", str(tmp_path)])
    assert started["ldm_text_shapes"][-1] == tmp_path / "run_ldm_class" / "checkpoints" / "last.ckpt"
    assert all(args[-1] is None for name, args in started.items() if name != "ldm_text_shapes")
    (tmp_path / "logs" / "x_demo_autoencoder").mkdir(parents=True)  # an autoencoder, no class run
    with pytest.raises(SystemExit, match="no run directory matching .*demo_ldm_class"):
        demo.main(["--no-report", "--stages", "ldm_text_shapes", "-l", str(tmp_path / "logs")])


def test_the_teacher_is_another_seed_than_the_judge(tmp_path, monkeypatch):
    commands = []
    ran = []
    monkeypatch.setattr(demo, "run", lambda cmd, commands, what: (commands.append(cmd), ran.append(what)))
    folder = demo.ensure_classifier(tmp_path, False, commands, teacher=True)
    judge = demo.ensure_classifier(tmp_path, False, commands)
    assert (folder, judge) == (tmp_path / "demo_teacher", tmp_path / "demo_classifier") and ran == ["teacher", "classifier"]
    assert commands[0][commands[0].index("--seed") + 1] == str(demo.TEACHER_SEED) != str(demo.SEED)
    assert "--seed" not in commands[1]  # the judge keeps train_classifier.py's default seed (0)
    assert demo.needs_teacher("configs/demo/ldm_class.yaml") and not demo.needs_teacher("configs/demo/ldm_uncond.yaml")
    cls = OmegaConf.load(REPO / "configs/demo/ldm_class.yaml")
    assert OmegaConf.select(cls, demo.TEACHER_KEY, default="missing") is None  # the key the demo sets exists


def test_text_figures_judge_each_prompts_own_samples(tmp_path):
    from ldm.data.synthetic import COLOURS
    from ldm.eval.classifier import save_classifier, train_classifier
    from ldm.eval.synthetic_scores import text_sample_scores
    from tests.test_synthetic_classifier import TINY

    assert [p.text for p in demo.TEXT_PROMPTS] == ["a red circle and a blue square", "a red circle on a blue background"]
    assert all(p.colours == ("red", "blue") and p.shape == "circle" for p in demo.TEXT_PROMPTS)
    clf = save_classifier(*train_classifier(steps=2, seed=3, **TINY), tmp_path / "clf")
    red_blue = np.zeros((16, 16, 3), np.uint8)
    red_blue[:, :8], red_blue[:, 8:] = COLOURS["red"], COLOURS["blue"]
    green = np.full((16, 16, 3), COLOURS["green"], np.uint8)
    samples = tmp_path / "samples"
    for folder, images in zip(TEXT_FOLDERS, ([red_blue] * 3, [red_blue, green, green, green])):
        (samples / folder).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(samples / folder / f"{i:05d}.png")
    figures = demo.text_figures(samples, clf, n_real=8, size=16)
    assert [f.name for f in figures] == [
        "Text samples showing red and blue ('a red circle and a blue square')",
        "Text samples whose largest shape the classifier calls a circle ('a red circle and a blue square')",
        "Text samples showing red and blue ('a red circle on a blue background')",
        "Text samples whose largest shape the classifier calls a circle ('a red circle on a blue background')"]
    assert [figures[0].value, figures[2].value] == [100.0, 25.0]  # each prompt's samples judged on their own
    second = text_sample_scores(np.stack([red_blue, green, green, green]), ("red", "blue"), "circle", clf, n_real=8,
                                size=16)
    assert figures[3].value == 100 * second.shape_accuracy and figures[2].note.startswith("4 samples;")
    for png in (samples / TEXT_FOLDERS[1]).glob("*.png"):
        png.unlink()
    with pytest.raises(SystemExit, match=f"no text samples under {samples / TEXT_FOLDERS[1]}"):
        demo.text_figures(samples, clf, n_real=8, size=16)


def test_phase_timer_sums_each_phase_and_the_whole():
    ticks = iter([0.0, 10.0, 109.4, 110.0, 150.0, 150.0, 160.6, 200.0])
    timer = demo.PhaseTimer(clock=lambda: next(ticks))          # started at 0
    with timer("autoencoder"):                                    # 10 -> 109.4
        pass
    with timer("teacher"):                                        # 110 -> 150
        pass
    with pytest.raises(RuntimeError), timer("teacher"):           # 150 -> 160.6, counted although it failed
        raise RuntimeError("stage failed")
    assert timer.phases == pytest.approx({"autoencoder": 99.4, "teacher": 50.6})
    assert timer.summary() == "200 s in all (autoencoder 99 s, teacher 51 s)"
    assert demo.PhaseTimer(clock=iter([5.0, 7.0]).__next__).summary() == "2 s in all"


def test_demo_prints_its_wall_time_by_phase(tmp_path, monkeypatch, capsys):
    fake_snapshots(tmp_path / "run_ldm_class", 500, 1000)
    fake_snapshots(tmp_path / "run_ldm_text", 300, 600)
    monkeypatch.setattr(demo, "run_stage", lambda name, *a, **k: tmp_path / f"run_{name}")
    monkeypatch.setattr(demo, "run", lambda cmd, commands, what: None)
    demo.main(["--no-report", "-l", str(tmp_path)])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Demo wall time: ")]
    assert len(line) == 1
    assert re.fullmatch(r"Demo wall time: \d+ s in all \(autoencoder \d+ s, teacher \d+ s, ldm_class \d+ s, "
                        r"ldm_text \d+ s, ldm_text_shapes \d+ s, sampling \d+ s\)\.", line[0]), line[0]


def test_precision_auto_picks_bf16_only_where_the_cpu_computes_it(monkeypatch):
    assert precision.cpu_training_precision("auto", native_bf16=True) == "bf16-mixed"
    assert precision.cpu_training_precision("auto", native_bf16=False) == "32"
    assert [precision.cpu_training_precision(c, native_bf16=True) for c in ("32", "bf16-mixed")] == ["32", "bf16-mixed"]
    with pytest.raises(ValueError, match="--precision must be one of auto, 32, bf16-mixed, got '16-mixed'"):
        precision.cpu_training_precision("16-mixed")
    # the probes of torch.cpu: either instruction set suffices; a missing or failing probe counts as absent
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert precision.cpu_has_native_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")

    def broken():
        raise RuntimeError("no backend")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken)
    assert precision.cpu_has_native_bf16() is False


def test_run_stage_passes_the_precision_to_main_py(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(demo, "run", lambda cmd, commands, what: ran.append(cmd))
    monkeypatch.setattr(demo, "latest_run", lambda logdir, name: tmp_path / name)
    for given in ("bf16-mixed", "32"):
        demo.run_stage("ldm_class", "configs/demo/ldm_class.yaml", None, tmp_path, False, [], precision=given)
    assert ran[0][ran[0].index("--precision") + 1] == "bf16-mixed" and "--precision" not in ran[1]
    # the class model is sampled in the autocast it was trained in
    runs = {"ldm_class": tmp_path / "run_ldm_class"}
    fake_snapshots(runs["ldm_class"], 500, 1000)
    (cmd,) = demo.sample_commands(runs, tmp_path, class_precision="bf16")
    assert cmd[cmd.index("--precision") + 1] == "bf16" and "--precision" not in demo.sample_commands(runs, tmp_path)[0]
    figures = []

    def fake_class_figures(run_dir, classifier, sizes, grid, *args, **kwargs):
        figures.append(kwargs["precision"])
        grid.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(grid)
        return []

    monkeypatch.setattr(demo, "class_figures", fake_class_figures)
    monkeypatch.setattr(demo, "ensure_classifier", lambda *a, **k: tmp_path / "judge")
    demo.write_demo_report(runs, tmp_path, False, [], [], class_precision="bf16")
    assert figures == ["bf16"]
