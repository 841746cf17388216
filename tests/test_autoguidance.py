"""Autoguidance (Karras et al. 2024) on top of classifier-free guidance: the wrapper's formula, its
plumbing through sample_latents, the evaluation and sample_diffusion.py's --guide-model, and the
checks that the guide shares the sampled model's task and latents."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.sampling import AutoGuidance, ClassifierFreeGuidance
from tests.conftest import load_script
from tests.test_inference import make_model, write_snapshot, write_run


def _denoiser(slope: float, calls: list):
    """D(x, sigma, cond) = slope * x + cond, recording (batch size, cond) per call."""
    def d(x, sigma, cond=None):
        calls.append((x.shape[0], cond))
        return slope * x + cond
    return d


def test_the_wrapper_adds_the_pull_away_from_the_guide():
    x, sigma = torch.randn(3, 2), torch.tensor(1.5)
    c, u, cg = torch.full((3, 1), 1.0), torch.full((3, 1), -2.0), torch.full((3, 1), 0.25)
    main_calls, guide_calls = [], []
    d = AutoGuidance(_denoiser(2.0, main_calls), _denoiser(0.5, guide_calls), weight=1.5, guide_cond=cg,
                     scale=3.0, uncond=u)
    g_c, g_u, b_c = 2 * x + c, 2 * x + u, 0.5 * x + cg
    torch.testing.assert_close(d(x, sigma, cond=c), g_u + 3.0 * (g_c - g_u) + 1.5 * (g_c - b_c))
    # the model's two branches in one doubled batch [uncond, cond]; the guide once, with its own condition
    assert [n for n, _ in main_calls] == [6] and torch.equal(main_calls[0][1], torch.cat([u, c]))
    assert len(guide_calls) == 1 and guide_calls[0][0] == 3 and guide_calls[0][1] is cg

    main_calls.clear(), guide_calls.clear()
    alone = AutoGuidance(_denoiser(2.0, main_calls), _denoiser(0.5, guide_calls), weight=1.5, guide_cond=cg)
    # scale 1: Karras et al.'s D_guide + w (D - D_guide) with w = 1 + weight; one conditional call
    torch.testing.assert_close(alone(x, sigma, cond=c), b_c + 2.5 * (g_c - b_c))
    assert [n for n, _ in main_calls] == [3]


def test_weight_zero_is_classifier_free_guidance_exactly():
    x, sigma = torch.randn(4, 3), torch.full((4,), 0.7)
    c, u = torch.randn(4, 1), torch.randn(4, 1)
    guide_calls = []
    ag = AutoGuidance(_denoiser(1.3, []), _denoiser(9.0, guide_calls), weight=0.0, guide_cond=c, scale=4.0, uncond=u)
    cfg = ClassifierFreeGuidance(_denoiser(1.3, []), scale=4.0, uncond=u)
    assert torch.equal(ag(x, sigma, cond=c), cfg(x, sigma, cond=c)) and guide_calls == []


@pytest.mark.parametrize("weight", [-0.5, math.nan, math.inf, "2"])
def test_bad_weights_are_refused(weight):
    with pytest.raises(ValueError, match="autoguidance weight must be a finite number >= 0"):
        AutoGuidance(_denoiser(1.0, []), _denoiser(1.0, []), weight=weight)


@pytest.fixture(scope="module")
def class_run_with_snapshot(tmp_path_factory):
    """A tiny class run and a 'snapshot' of it: other denoiser and class embedding, the same first stage."""
    run, _ = write_run(tmp_path_factory.mktemp("runs"), "class")
    return run, write_snapshot(run, 50)


def _sample(run, out, *extra):
    from PIL import Image

    load_script("sample_diffusion").main(["-r", str(run), "-n", "4", "--classes", "0", "1", "--scale", "2", "-c", "4",
                                          "-e", "0", "--seed", "3", "--device", "cpu", "--no-progress", "-l", str(out),
                                          *extra])
    return np.stack([np.asarray(Image.open(p)) for p in sorted((out / "img").glob("*.png"))])


def test_sample_diffusion_with_a_guide_model(class_run_with_snapshot, tmp_path):
    run, snapshot = class_run_with_snapshot
    plain = _sample(run, tmp_path / "plain")
    assert np.array_equal(_sample(run, tmp_path / "w0", "--guide-model", str(snapshot), "--guide-weight", "0"), plain)
    guided = _sample(run, tmp_path / "w2", "--guide-model", str(snapshot), "--guide-weight", "2")
    assert guided.shape == plain.shape and not np.array_equal(guided, plain)
    again = _sample(run, tmp_path / "w2b", "--guide-model", str(snapshot), "--guide-weight", "2", "--batch_size", "3")
    assert np.array_equal(again, guided)  # the guide's conditioning follows every batch's labels


def test_sample_diffusion_refuses_a_wrong_guide(class_run_with_snapshot, tmp_path):
    run, snapshot = class_run_with_snapshot
    other, _ = write_run(tmp_path / "other", "class", seed=1)  # another first stage
    text, _ = write_run(tmp_path / "text", "text")
    with pytest.raises(SystemExit, match="--guide-weight needs --guide-model"):
        _sample(run, tmp_path / "o", "--guide-weight", "2")
    with pytest.raises(SystemExit, match="--guide-weight -1.0: must be a finite number >= 0"):
        _sample(run, tmp_path / "o", "--guide-model", str(snapshot), "--guide-weight", "-1")
    with pytest.raises(SystemExit, match="the model and its guide have different first stages"):
        _sample(run, tmp_path / "o", "--guide-model", str(other))
    with pytest.raises(SystemExit, match="a text model cannot guide a class one"):
        _sample(run, tmp_path / "o", "--guide-model", str(text))
    with pytest.raises(SystemExit, match="--guide-model .*missing.*no such run directory"):
        _sample(run, tmp_path / "o", "--guide-model", str(tmp_path / "missing"))
    assert not (tmp_path / "o" / "img").exists()  # nothing sampled


def test_evaluation_batches_condition_the_guide(class_run_with_snapshot):
    from ldm.eval.protocols import generation_batches
    from ldm.inference import GuideModel, SamplingOptions, load_run, sample_latents

    run, snapshot = class_run_with_snapshot
    model, guide_model = load_run(run), load_run(snapshot)
    opts = SamplingOptions(sampler="ddim", steps=3, scale=2.0, progress=False)
    plain, labels = generation_batches(model, opts, seed=1)(np.arange(5))
    same, _ = generation_batches(model, opts, seed=1, guide=GuideModel(guide_model, 0.0))(np.arange(5))
    guide = GuideModel(guide_model, 1.0)
    guided, guided_labels = generation_batches(model, opts, seed=1, guide=guide)(np.arange(5))
    assert np.array_equal(same, plain) and not np.array_equal(guided, plain)
    assert labels.tolist() == guided_labels.tolist() == [0, 1, 2, 3, 4]
    expected = guide_model.get_learned_conditioning(torch.tensor(labels))
    torch.testing.assert_close(guide.cond, expected)  # the guide's own embedding of this batch's labels
    with pytest.raises(ValueError, match="the guide model is 'text', the sampled model 'class'"):
        generation_batches(model, opts, seed=1, guide=GuideModel(make_model("text"), 1.0))
    with pytest.raises(ValueError, match="cannot be combined"):
        from ldm.inference import HighNoiseExpert
        sample_latents(model, (1, model.channels, model.image_size, model.image_size), steps=2, progress=False,
                       guide=GuideModel(guide_model, 1.0), expert=HighNoiseExpert(guide_model, 10))


@pytest.fixture(scope="module")
def text_run_with_snapshot(tmp_path_factory):
    run, _ = write_run(tmp_path_factory.mktemp("runs"), "text")
    return run, write_snapshot(run, 50, kind="text")


def test_txt2img_with_a_guide_model(text_run_with_snapshot, tmp_path):
    from tests.test_noise_level_experts import _txt2img

    run, snapshot = text_run_with_snapshot
    plain = _txt2img(run, tmp_path / "plain").astype(int)
    assert np.array_equal(_txt2img(run, tmp_path / "w0", "--guide-model", str(snapshot), "--guide-weight", "0"), plain)
    guided = _txt2img(run, tmp_path / "w2", "--guide-model", str(snapshot), "--guide-weight", "2").astype(int)
    assert guided.shape == plain.shape and np.abs(guided - plain).max() > 8
    # guided by itself, the model pulls away from nothing, however strongly: the guide is conditioned on the
    # same prompt by its own text encoder (with the empty prompt, weight 40 would act as a guidance scale of 42;
    # the last place of the 8-bit images may differ: one batch against a doubled one)
    itself = _txt2img(run, tmp_path / "self", "--guide-model", str(run), "--guide-weight", "40").astype(int)
    assert np.abs(itself - plain).max() <= 1


def test_txt2img_refuses_a_wrong_guide(text_run_with_snapshot, class_run_with_snapshot, tmp_path):
    from tests.test_noise_level_experts import _txt2img

    run, snapshot = text_run_with_snapshot
    with pytest.raises(SystemExit, match="--guide-weight needs --guide-model"):
        _txt2img(run, tmp_path / "o", "--guide-weight", "2")
    with pytest.raises(SystemExit, match="a class model cannot guide a text one"):
        _txt2img(run, tmp_path / "o", "--guide-model", str(class_run_with_snapshot[0]))
    with pytest.raises(SystemExit, match="--guide-model and --high-noise-expert cannot be combined"):
        _txt2img(run, tmp_path / "o", "--guide-model", str(snapshot), "--high-noise-expert", str(snapshot),
                 "--switch-t", "50")
    assert not (tmp_path / "o" / "samples").exists()  # nothing sampled
