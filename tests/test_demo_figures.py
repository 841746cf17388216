"""ldm.eval.demo_figures: the demo's figures equal the evaluation code's scores on the same models,
and the light parts load without torch (scripts/demo.py --help stays fast)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldm.eval import demo_figures as F
from ldm.eval.classifier import save_classifier, train_classifier
from tests.test_inference import write_snapshot, write_run
from tests.test_synthetic_classifier import TINY

REPO = Path(__file__).resolve().parents[1]


def test_constants_and_the_demo_script_load_without_torch():
    code = ("import sys; sys.path.insert(0, 'scripts'); import demo; from ldm.eval import demo_figures; "
            "print('torch' in sys.modules, demo.TEXT_PROMPTS is demo_figures.TEXT_PROMPTS, demo.FULL)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False True Sizes(real_images=1000, class_samples=256, class_steps=20)"


def test_the_lazy_package_exports_what_its_submodules_define():
    import importlib

    import ldm.eval as E

    for name in E.__all__:
        assert getattr(E, name) is getattr(importlib.import_module(f"ldm.eval.{E._MODULE_OF[name]}"), name)
    assert set(E.__all__) <= set(dir(E))
    with pytest.raises(AttributeError, match="module 'ldm.eval' has no attribute 'no_such_metric'"):
        E.no_such_metric  # noqa: B018


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    """A tiny class run with a snapshot of other denoiser weights (the same first stage), and a judge."""
    run, _ = write_run(tmp_path_factory.mktemp("runs"), "class")
    model, config = train_classifier(steps=2, seed=3, **TINY)
    return run, write_snapshot(run, 50), save_classifier(model, config, tmp_path_factory.mktemp("clf"))


SIZES = F.Sizes(real_images=8, class_samples=4, class_steps=2)


@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_class_figures_are_the_scores_of_the_evaluation_code(class_run, tmp_path, weight):
    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import GuideModel, load_run

    run, snapshot, clf = class_run
    guide = snapshot if weight else None
    figures = F.class_figures(run, clf, SIZES, tmp_path / "grid.png", scale=2.0, guide=guide, guide_weight=weight,
                              size=16)
    expected = class_sample_scores(load_run(run, device="cpu"), clf, 4, sampler="ddim", steps=2, scale=2.0, seed=F.SEED,
                                   n_real=8, size=16, progress=False,
                                   guide=GuideModel(load_run(snapshot, device="cpu"), weight) if weight else None)
    assert [f.name for f in figures] == [
        "Classifier accuracy on 8 real validation images", "Guided class samples recognised as their class",
        "Class samples recognised, relative to real images",
        "FID-like score of the classifier's features (not Inception FID)"]
    assert [f.value for f in figures] == [100 * expected.real_accuracy, 100 * expected.accuracy,
                                          100 * expected.relative_accuracy, expected.fid_like]
    assert figures[2].target == 90.0
    how = "4 samples (class i mod 8), DDIM 2 steps, guidance scale 2"
    assert figures[1].note == how + (", autoguidance weight 2 by epoch=000000-step=000000050.ckpt" if weight else "")
    # 4 samples of 16 px with a 2 px border, in rows of 8
    assert Image.open(tmp_path / "grid.png").size == (4 * 18 + 2, 18 + 2)


@pytest.mark.parametrize("guide,weight", [(None, 2.0), ("snapshot", 0.0)])
def test_class_figures_refuse_a_guide_without_weight_and_the_reverse(class_run, tmp_path, guide, weight):
    run, snapshot, clf = class_run
    with pytest.raises(ValueError, match="a guide model needs a positive guide weight"):
        F.class_figures(run, clf, SIZES, tmp_path / "grid.png", scale=2.0,
                        guide=snapshot if guide else None, guide_weight=weight, size=16)
    assert not (tmp_path / "grid.png").exists()


def test_autoencoder_figures_are_the_reconstruction_scores(class_run, tmp_path):
    from omegaconf import OmegaConf

    from ldm.eval.synthetic_scores import reconstruction_scores
    from ldm.inference import load_run
    from ldm.util import instantiate_from_config
    from tests.test_inference import first_stage

    _, _, clf = class_run
    cfg = first_stage("kl")
    cfg["params"].pop("ckpt_path")
    torch.manual_seed(0)
    ae = instantiate_from_config(OmegaConf.create(cfg))
    run = tmp_path / "2024-01-01T00-00-00_demo_autoencoder"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create({"model": cfg}), run / "configs" / "2024-01-01T00-00-00-project.yaml")
    torch.save({"state_dict": ae.state_dict(), "global_step": 1}, run / "checkpoints" / "last.ckpt")

    figures = F.autoencoder_figures(run, 8, tmp_path / "rec.png", clf, size=16)
    expected = reconstruction_scores(load_run(run, device="cpu"), 8, size=16, classifier_folder=clf)
    assert [f.name for f in figures] == ["Autoencoder reconstructions: PSNR on 8 synthetic validation images",
                                         "Reconstructions recognised as their class, relative to the originals"]
    assert [f.value for f in figures] == [expected.psnr, 100 * expected.relative_accuracy]
    assert figures[0].target == 28.0 and figures[0].unit == "dB"
    assert Image.open(tmp_path / "rec.png").size == (8 * 18 + 2, 2 * 18 + 2)  # 8 inputs over their reconstructions
    assert len(F.autoencoder_figures(run, 8, tmp_path / "rec2.png", size=16)) == 1  # no judge: PSNR only
