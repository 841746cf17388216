"""NoiseLevelExperts (eDiff-I's ensemble of expert denoisers) and scripts/score_text_experts.py:
each expert answers at its own noise levels with its own conditioning; the extremes of the switch
are the single models' samples exactly. ``timestep_range`` trains a model on part of the chain."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldm.eval.classifier import save_classifier, train_classifier
from ldm.models.diffusion.sampling import NoiseLevelExperts, ddim_sigmas, sample_ddim
from tests.conftest import load_script
from tests.test_inference import lightning_checkpoint, make_model, write_run
from tests.test_synthetic_classifier import TINY


def _expert(value):
    seen = []

    def d(x, sigma, cond=None):
        seen.append((float(sigma.reshape(-1)[0]), cond))
        return torch.full_like(x, value)
    return d, seen


def test_each_level_goes_to_its_expert_with_its_conditioning():
    (high, seen_h), (low, seen_l) = _expert(1.0), _expert(-1.0)
    d = NoiseLevelExperts(high, low, sigma_switch=2.0, high_args={"cond": "h"}, low_args={"cond": "l"})
    x = torch.zeros(3, 2)
    assert (d(x, torch.full((3,), 5.0), cond="sampler's") == 1).all()
    assert (d(x, torch.full((3,), 2.0)) == -1).all()  # at the switch level: the low expert
    assert (d(x, torch.full((3,), 0.5)) == -1).all()
    assert seen_h == [(5.0, "h")] and seen_l == [(2.0, "l"), (0.5, "l")]
    assert d.calls == {"high": 1, "low": 2}


def test_a_batch_straddling_the_switch_is_refused():
    (high, _), (low, _) = _expert(1.0), _expert(-1.0)
    d = NoiseLevelExperts(high, low, sigma_switch=2.0)
    with pytest.raises(ValueError, match="one noise level per call"):
        d(torch.zeros(2, 1), torch.tensor([3.0, 1.0]))
    with pytest.raises(ValueError, match="sigma_switch must be a number >= 0"):
        NoiseLevelExperts(high, low, sigma_switch=-1.0)


def test_sampling_switches_once_along_the_chain():
    ac = torch.cumprod(1 - torch.linspace(1e-3, 2e-2, 100, dtype=torch.float64), 0)
    sigmas = ddim_sigmas(ac, 10)
    (high, seen_h), (low, seen_l) = _expert(0.5), _expert(0.0)
    sample_ddim(NoiseLevelExperts(high, low, float(sigmas[4])), torch.randn(2, 3) * sigmas[0], sigmas,
                disable=True)
    assert [s for s, _ in seen_h] == pytest.approx(sigmas[:4].tolist())
    assert [s for s, _ in seen_l] == pytest.approx(sigmas[4:-1].tolist())


@pytest.fixture(scope="module")
def two_text_runs(tmp_path_factory):
    """Two tiny text runs sharing the first stage, with different denoisers and text encoders."""
    root = tmp_path_factory.mktemp("runs")
    low, _ = write_run(root / "low", "text")
    high, _ = write_run(root / "high", "text")
    other = make_model("text", 1)
    state = lightning_checkpoint(make_model("text", 0))
    for k, v in lightning_checkpoint(other)["state_dict"].items():
        if not (k.startswith("first_stage_model.") or k == "scale_factor"):
            state["state_dict"][k] = v
    torch.save(state, high / "checkpoints" / "last.ckpt")
    model, config = train_classifier(steps=2, seed=3, **TINY)
    return high, low, save_classifier(model, config, tmp_path_factory.mktemp("clf"))


def _argv(high, low, clf, out, *extra):
    return ["--high", str(high), "--low", str(low), "--classifier", str(clf), "-n", "3", "--steps", "4",
            "--n-real", "8", "--out", str(out), "--prompts", "a red circle on a blue background", *extra]


def test_extremes_are_the_single_models(two_text_runs, tmp_path):
    from ldm.eval.synthetic_scores import text_prompt_scores
    from ldm.inference import load_run

    high, low, clf = two_text_runs
    script = load_script("score_text_experts")
    rows = script.main(_argv(high, low, clf, tmp_path, "--switch-t", "99", "0", "50"))
    by_t = {r["switch_t"]: r for r in rows}
    assert (by_t[99]["high_calls"], by_t[0]["low_calls"]) == (0, 0)
    assert by_t[50]["high_calls"] > 0 and by_t[50]["low_calls"] > 0
    for t, run in ((99, low), (0, high)):
        ref, samples = text_prompt_scores(load_run(run), clf, "a red circle on a blue background", 3,
                                          sampler="unipc", steps=4, n_real=8, size=16)
        assert (by_t[t]["shows_colours"], by_t[t]["shape_accuracy"]) == (ref.shows_colours, ref.shape_accuracy)
        got, _ = script.expert_samples(load_run(high), load_run(low), "a red circle on a blue background", t, 3,
                                       "unipc", 4, 3.0, 0)
        np.testing.assert_array_equal(got, samples)  # the same images as the single model's
    saved = json.loads((tmp_path / "experts.json").read_text())
    assert saved["rows"] == rows and saved["settings"]["sampler"] == "unipc"
    assert (tmp_path / "grid_0.png").is_file()


def test_experts_must_share_the_latent_space(two_text_runs, tmp_path):
    high, low, clf = two_text_runs
    other, _ = write_run(tmp_path / "other", "text", seed=1)  # another first stage
    script = load_script("score_text_experts")
    with pytest.raises(SystemExit, match="different first stages"):
        script.main(_argv(other, low, clf, tmp_path, "--switch-t", "50"))
    with pytest.raises(SystemExit, match=r"--switch-t \[100\]: timesteps must lie in \[0, 99\]"):
        script.main(_argv(high, low, clf, tmp_path, "--switch-t", "100"))
    with pytest.raises(SystemExit, match="--high .*: no such run directory"):
        script.main(_argv(tmp_path / "missing", low, clf, tmp_path, "--switch-t", "50"))


def test_an_expert_trains_on_its_timesteps_only():
    from tests.test_ancestral_loop import pixel_ddpm

    torch.manual_seed(0)
    expert = pixel_ddpm(timestep_range=[12, 20])
    t = expert.sample_timesteps(4000)
    assert (t.min().item(), t.max().item()) == (12, 19)  # T = 20: [lo, hi) covers 12..19
    assert torch.bincount(t - 12, minlength=8).min() > 0
    full = pixel_ddpm()
    assert full.timestep_range == (0, 20)
    t = full.sample_timesteps(4000)
    assert (t.min().item(), t.max().item()) == (0, 19)


@pytest.mark.parametrize("bad", [[5, 5], [-1, 10], [0, 21], [3], [1.0, 10], "0,10", [True, 10]])
def test_bad_timestep_range_is_refused(bad):
    from tests.test_ancestral_loop import pixel_ddpm

    with pytest.raises(ValueError, match=r"timestep_range must be \[lo, hi\) with integers 0 <= lo < hi <= 20"):
        pixel_ddpm(timestep_range=bad)


def test_timestep_range_from_a_config():
    from pathlib import Path

    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    config = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "demo" / "ldm_text.yaml")
    p = config.model.params
    p.first_stage_config.params.ckpt_path = None
    p.timestep_range = [600, 1000]
    assert instantiate_from_config(config.model).timestep_range == (600, 1000)


def _txt2img(run, out, *extra):
    from PIL import Image

    load_script("txt2img").main(["-r", str(run), "--prompt", "a red circle on a blue background", "--n_samples",
                                 "2", "--seed", "3", "--scale", "2", "--steps", "4", "--no-progress", "--device",
                                 "cpu", "--outdir", str(out), *extra])
    return np.stack([np.asarray(Image.open(p)) for p in sorted((out / "samples").rglob("*.png"))])


def test_txt2img_with_a_high_noise_expert(two_text_runs, tmp_path, capsys):
    high, low, _ = two_text_runs
    alone_low, alone_high = _txt2img(low, tmp_path / "low"), _txt2img(high, tmp_path / "high")
    assert not np.array_equal(alone_low, alone_high)
    # DDIM's 4 levels lie at t = 76, 51, 26, 1: switched at the last timestep the expert never answers,
    # at t = 0 it answers every call, and in between the images are neither model's
    assert np.array_equal(_txt2img(low, tmp_path / "a", "--high-noise-expert", str(high), "--switch-t", "99"),
                          alone_low)
    assert "answered 0 of 4 network calls (above t = 99)" in capsys.readouterr().out
    assert np.array_equal(_txt2img(low, tmp_path / "b", "--high-noise-expert", str(high), "--switch-t", "0"),
                          alone_high)
    assert "answered 4 of 4 network calls" in capsys.readouterr().out
    mixed = _txt2img(low, tmp_path / "c", "--high-noise-expert", str(high), "--switch-t", "40")
    assert "answered 2 of 4 network calls" in capsys.readouterr().out
    assert not np.array_equal(mixed, alone_low) and not np.array_equal(mixed, alone_high)


def test_txt2img_refuses_a_wrong_expert(two_text_runs, tmp_path):
    high, low, _ = two_text_runs
    other, _ = write_run(tmp_path / "other", "text", seed=1)  # another first stage
    klass, _ = write_run(tmp_path / "class", "class")
    with pytest.raises(SystemExit, match="--switch-t needs --high-noise-expert"):
        _txt2img(low, tmp_path / "o", "--switch-t", "50")
    with pytest.raises(SystemExit, match="give --switch-t T"):
        _txt2img(low, tmp_path / "o", "--high-noise-expert", str(high))
    with pytest.raises(SystemExit, match=r"--switch-t 100: must lie in \[0, 99\]"):
        _txt2img(low, tmp_path / "o", "--high-noise-expert", str(high), "--switch-t", "100")
    with pytest.raises(SystemExit, match="different first stages"):
        _txt2img(low, tmp_path / "o", "--high-noise-expert", str(other), "--switch-t", "50")
    with pytest.raises(SystemExit, match=r"not a text-conditioned model \(class\)"):
        _txt2img(low, tmp_path / "o", "--high-noise-expert", str(klass), "--switch-t", "50")
    with pytest.raises(SystemExit, match="no such run directory"):
        _txt2img(low, tmp_path / "o", "--high-noise-expert", str(tmp_path / "missing"), "--switch-t", "50")
    assert not (tmp_path / "o" / "samples").exists()  # nothing sampled


def test_sample_latents_checks_the_expert(two_text_runs):
    from ldm.inference import HighNoiseExpert, load_run, prompt_conditioning, sample_latents

    high, low, _ = two_text_runs
    mh, ml = load_run(high), load_run(low)
    c, uc = prompt_conditioning(ml, ["a red circle"])
    shape = (1, ml.channels, ml.image_size, ml.image_size)
    hc, _ = prompt_conditioning(mh, ["a red circle"])
    with pytest.raises(ValueError, match="needs the expert's unconditional conditioning"):
        sample_latents(ml, shape, cond=c, uncond=uc, scale=2.0, steps=2, progress=False,
                       expert=HighNoiseExpert(mh, 50, cond=hc))
    with pytest.raises(ValueError, match=r"switch_t=-1 must lie in \[0, 99\]"):
        sample_latents(ml, shape, cond=c, steps=2, progress=False, expert=HighNoiseExpert(mh, -1, cond=hc))
    mh.register_buffer("alphas_cumprod", mh.alphas_cumprod * 0.999, persistent=False)
    with pytest.raises(ValueError, match="different noise schedules"):
        sample_latents(ml, shape, cond=c, steps=2, progress=False, expert=HighNoiseExpert(mh, 50, cond=hc))


def test_txt2img_renders_several_prompts_in_one_process(two_text_runs, tmp_path):
    from PIL import Image

    from ldm.inference.images import safe_name

    run, prompts = two_text_runs[1], ["a red circle on a blue background", "a green square on a yellow background"]
    common = ["-r", str(run), "--n_samples", "2", "--seed", "3", "--scale", "2", "--steps", "4", "--no-progress",
              "--device", "cpu"]
    load_script("txt2img").main([*common, "--prompt", *prompts, "--outdir", str(tmp_path / "both")])
    for prompt in prompts:  # each prompt its folder of samples and its grid
        assert len(list((tmp_path / "both" / "samples" / safe_name(prompt)).glob("*.png"))) == 2
        assert (tmp_path / "both" / f"grid-{safe_name(prompt)}-0000.png").is_file()
    # the first prompt's images are those of a run of it alone with the same seed; the next draw on
    load_script("txt2img").main([*common, "--prompt", prompts[0], "--outdir", str(tmp_path / "one")])

    def images(folder):
        return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])

    first = images(tmp_path / "both" / "samples" / safe_name(prompts[0]))
    assert np.array_equal(first, images(tmp_path / "one" / "samples" / safe_name(prompts[0])))
