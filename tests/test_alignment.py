"""Representation alignment (REPA): the frozen classifier teacher, the alignment loss, its wiring into
the training loss of a latent diffusion model, and runs that load without the teacher's files."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from ldm.config.errors import ConfigError
from ldm.data.synthetic import SyntheticShapesTrain
from ldm.eval.classifier import load_classifier, save_classifier, train_classifier
from ldm.models.diffusion.alignment import ClassifierTeacher, alignment_loss, block_channels
from ldm.util import instantiate_from_config
from tests.test_inference import lightning_checkpoint, model_config, write_run
from tests.test_synthetic_classifier import TINY

TEACHER = "ldm.models.diffusion.alignment.ClassifierTeacher"


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A 16 px classifier of width 4 (features of its second block: 8 px, 8 channels)."""
    model, config = train_classifier(steps=2, seed=5, **TINY)
    return save_classifier(model, config, tmp_path_factory.mktemp("teacher"))


def alignment_config(folder, **extra) -> dict:
    return {"teacher_config": {"target": TEACHER, "params": {"width": 4, "layers": 2, "size": 16,
                                                             "ckpt_path": None if folder is None else str(folder)}},
            **extra}


def class_model(folder, seed: int = 0, **extra):
    torch.manual_seed(seed)
    cfg = copy.deepcopy(model_config("class"))
    cfg["params"]["first_stage_config"]["params"].pop("ckpt_path")
    cfg["params"]["representation_alignment"] = alignment_config(folder, **extra)
    return instantiate_from_config(cfg, path="model")


def batch(n: int = 4) -> dict:
    data = SyntheticShapesTrain(size=16, n_classes=5)
    return torch.utils.data.default_collate([data[i] for i in range(n)])


def pixels(b: dict) -> torch.Tensor:
    return b["image"].permute(0, 3, 1, 2).float()


# ---- the teacher ----

def test_teacher_is_the_classifiers_first_blocks_frozen_in_eval_mode(teacher_folder):
    classifier, _ = load_classifier(teacher_folder)
    teacher = ClassifierTeacher(width=4, layers=2, size=16, ckpt_path=str(teacher_folder))
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    expected = classifier.body[:3](x)
    assert teacher.out_channels == 8 and bool(teacher.loaded)
    assert torch.equal(teacher(x), expected) and expected.shape == (3, 8, 8, 8)
    teacher.train()  # a parent's train() must not switch BatchNorm to batch statistics
    assert not teacher.training and torch.equal(teacher(x), expected)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_errors_name_the_setting(teacher_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"width.*has width 4"):
        ClassifierTeacher(width=8, layers=2, size=16, ckpt_path=str(teacher_folder))
    with pytest.raises(ConfigError, match=r"ckpt_path.*not found.*train_classifier.py"):
        ClassifierTeacher(width=4, layers=2, size=16, ckpt_path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"ckpt_path.*trained on 16px.*is 32px"):
        ClassifierTeacher(width=4, layers=2, size=32, ckpt_path=str(teacher_folder))
    with pytest.raises(ConfigError, match=r"layers.*1 to 4"):
        ClassifierTeacher(width=4, layers=5, size=16)
    with pytest.raises(ValueError, match="16px images"):
        ClassifierTeacher(width=4, layers=2, size=16)(torch.zeros(1, 3, 32, 32))


# ---- the loss ----

def test_alignment_loss_is_the_mean_cosine_similarity_to_the_pooled_target():
    target = torch.randn(2, 5, 8, 8)
    pooled = F.avg_pool2d(target, 2)
    assert alignment_loss(pooled * 3.0, target).item() == pytest.approx(1.0, abs=1e-6)
    assert alignment_loss(-pooled, target).item() == pytest.approx(-1.0, abs=1e-6)
    projected = torch.randn(2, 5, 4, 4)
    expected = (projected * pooled).sum(1) / (projected.norm(dim=1) * pooled.norm(dim=1))
    assert alignment_loss(projected, target).item() == pytest.approx(expected.mean().item(), abs=1e-6)
    small = torch.randn(2, 5, 2, 2)  # a coarser target is interpolated up to the projection's size
    up = F.interpolate(small, size=(4, 4), mode="bilinear", align_corners=False)
    assert alignment_loss(up, small).item() == pytest.approx(1.0, abs=1e-6)


def test_block_channels_of_unet_blocks():
    model = class_model(None)
    unet = model.model.diffusion_model
    outputs = {}
    for name in ("input_blocks.0", "input_blocks.1", "input_blocks.3", "middle_block", "output_blocks.2"):
        unet.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    unet(torch.randn(1, 3, 8, 8), torch.tensor([3]), context=torch.randn(1, 1, 16))
    for name, out in outputs.items():
        assert block_channels(unet.get_submodule(name)) == out.shape[1], name


# ---- wiring into the model ----

def test_training_loss_adds_the_weighted_alignment_term(teacher_folder):
    model = class_model(teacher_folder, weight=0.7, hidden=16).train()
    b = batch()
    unet = model.model.diffusion_model
    seen = {}
    handle = unet.middle_block.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o))
    loss, log = model.shared_step(b)
    handle.remove()
    target = model.alignment.teacher(pixels(b))
    similarity = alignment_loss(model.alignment.projector(seen["h"]), target)
    assert log["train/align_similarity"].item() == pytest.approx(similarity.item(), abs=1e-6)
    plain = log["train/loss_simple"]  # no timestep weights, logvar 0, no VLB term in this model
    assert loss.item() == pytest.approx(plain.item() - 0.7 * similarity.item(), rel=1e-6)
    assert log["train/loss"] is loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.alignment.projector.parameters())
    assert all(p.grad is None for p in model.alignment.teacher.parameters())


def test_detach_condition_keeps_the_term_out_of_the_conditioning_encoder(teacher_folder):
    b = batch()
    grads = {}
    for detach in (False, True):
        model = class_model(teacher_folder, hidden=16, detach_condition=detach).train()
        with torch.no_grad():  # zero-initialised projections (cross-attention's output among them): make them count
            for p in model.model.diffusion_model.parameters():
                if not p.any():
                    p.normal_(0, 0.1)
        encoder = list(model.cond_stage_model.parameters())
        c = model.get_learned_conditioning(b["class_label"])
        z = torch.randn(4, model.channels, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([10, 300, 600, 900])
        target = model.alignment.teacher(pixels(b))
        with model.alignment.capture() as hidden:
            out = model.apply_model(z, t, c)
        term = model.alignment.loss(hidden["h"], target)
        from_term = torch.autograd.grad(term, encoder, retain_graph=True, allow_unused=True)
        from_output = torch.autograd.grad(out.square().mean(), encoder, allow_unused=True)
        grads[detach] = (out.detach(), [g is not None and bool(g.abs().sum() > 0) for g in from_term],
                         [g is not None and bool(g.abs().sum() > 0) for g in from_output])
    # the same denoiser output; the term reaches the encoder only without detach_condition, the output
    # (the later blocks' cross-attention) either way
    assert torch.equal(grads[False][0], grads[True][0])
    assert any(grads[False][1]) and not any(grads[True][1])
    assert any(grads[False][2]) and any(grads[True][2])
    unet = model.model.diffusion_model  # the hooks go with the capture
    assert not unet.middle_block._forward_pre_hooks and not any(b._forward_pre_hooks for b in unet.input_blocks)


def test_validation_and_sampling_leave_the_term_out(teacher_folder):
    model = class_model(teacher_folder).eval()
    with torch.no_grad():
        _, log = model.shared_step(batch())
    assert "val/align_similarity" not in log and "val/loss" in log
    assert model.alignment_target(batch()) is None


def test_projector_trains_with_the_denoiser_but_stays_out_of_the_ema(teacher_folder):
    model = class_model(teacher_folder)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.alignment.projector.parameters()} <= trainable
    assert not {id(p) for p in model.alignment.teacher.parameters()} & trainable
    assert not any("alignment" in k for k in model.model_ema.state_dict())
    assert block_channels(model.model.diffusion_model.middle_block) == model.alignment.projector[0].in_channels


def test_a_run_loads_without_the_teachers_files(teacher_folder, tmp_path):
    from ldm.inference import load_run

    folder = shutil.copytree(teacher_folder, tmp_path / "teacher")
    model = class_model(folder, seed=3)
    run, _ = write_run(tmp_path / "runs", "class")
    cfg_file = next((run / "configs").glob("*-project.yaml"))
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cfg_file)
    cfg.model.params.representation_alignment = alignment_config(folder)
    OmegaConf.save(cfg, cfg_file)
    torch.save(lightning_checkpoint(model), run / "checkpoints" / "last.ckpt")
    shutil.rmtree(folder)
    loaded = load_run(run)
    assert bool(loaded.alignment.teacher.loaded)
    for key, value in model.alignment.state_dict().items():
        assert torch.equal(loaded.alignment.state_dict()[key], value), key


def test_training_refuses_a_teacher_without_weights():
    model = class_model(None).train()
    with pytest.raises(ConfigError, match=r"teacher_config\.params\.ckpt_path.*no weights.*train_classifier.py"):
        model.shared_step(batch())
    with torch.no_grad():  # loading and validating such a model is fine
        model.eval().shared_step(batch())


def test_latent_cache_batches_are_refused(teacher_folder):
    from ldm.data import latent_cache

    model = class_model(teacher_folder).train()
    b = batch()
    b[latent_cache.LATENT_KEY] = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match="needs the images.*latent-cache"):
        model.shared_step(b)


@pytest.mark.parametrize("extra, path, message", [
    ({"block": "middle"}, "representation_alignment.block", "not a module of the UNet"),
    ({"weight": 0}, "representation_alignment.weight", "> 0"),
    ({"hidden": 0}, "representation_alignment.hidden", ">= 1"),
    ({"layer": 2}, "representation_alignment", "unknown key.*layer"),
    ({"detach_condition": "yes"}, "representation_alignment.detach_condition", "true or false"),
])
def test_config_errors_name_the_entry(teacher_folder, extra, path, message):
    with pytest.raises(ConfigError, match=message) as info:
        class_model(teacher_folder, **extra)
    assert path in str(info.value)


def test_missing_teacher_config_is_named():
    cfg = copy.deepcopy(model_config("class"))
    cfg["params"]["first_stage_config"]["params"].pop("ckpt_path")
    cfg["params"]["representation_alignment"] = {"block": "middle_block"}
    with pytest.raises(ConfigError, match="teacher_config.*missing"):
        instantiate_from_config(cfg, path="model")
