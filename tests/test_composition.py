"""Composable guidance (Liu et al. 2022): a second model's classifier-free guidance direction added
to the sampled model's, each model with its own conditioning and asked only within its schedule."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldm.models.diffusion.sampling import ComposedGuidance
from tests.conftest import load_script
from tests.test_inference import write_run
from tests.test_noise_level_experts import _txt2img, two_text_runs  # noqa: F401  (a fixture)

PROMPT = "a red circle on a blue background"


def _denoiser(factor=None):
    """x times ``factor``, or times the conditioning when none is given; records each call."""
    seen = []

    def d(x, sigma, cond=None):
        seen.append(float(sigma.reshape(-1)[0]))
        return x * (cond if factor is None else factor)
    return d, seen


def test_the_wrapper_adds_the_partner_direction_within_its_range():
    main, _ = _denoiser(2.0)
    partner, seen = _denoiser()  # one forward pass over [uncond, cond]: rows times 1 and times 5
    c, u = torch.full((2, 1), 5.0), torch.full((2, 1), 1.0)
    d = ComposedGuidance(main, partner, 0.5, cond=c, uncond=u, sigma_range=(0.1, 3.0))
    x = torch.ones(2, 1)
    torch.testing.assert_close(d(x, torch.full((2,), 1.0)), x * 2.0 + 0.5 * (5.0 - 1.0))
    torch.testing.assert_close(d(x, torch.full((2,), 3.0)), x * 4.0)   # the range's ends are inside
    torch.testing.assert_close(d(x, torch.full((2,), 4.0)), x * 2.0)   # above it: the sampled model alone
    torch.testing.assert_close(d(x, torch.full((2,), 0.05)), x * 2.0)  # below it, too
    assert seen == [1.0, 3.0] and d.calls == {"composed": 2, "alone": 2}
    with pytest.raises(ValueError, match="one noise level per call"):
        d(x, torch.tensor([1.0, 4.0]))
    silent = ComposedGuidance(main, partner, 0.0, cond=c, uncond=u)
    torch.testing.assert_close(silent(x, torch.full((2,), 1.0)), x * 2.0)
    assert len(seen) == 2 and silent.calls == {"composed": 0, "alone": 1}  # weight 0 never asks the partner


@pytest.mark.parametrize("kwargs, message", [
    ({"weight": -1.0}, "finite number >= 0"), ({"weight": float("nan")}, "finite number >= 0"),
    ({"uncond": None}, "conditional and unconditional"), ({"sigma_range": (2.0, 1.0)}, "0 <= lo <= hi"),
])
def test_bad_composition_settings_are_refused(kwargs, message):
    main, _ = _denoiser(1.0)
    args = {"weight": 1.0, "cond": torch.ones(1), "uncond": torch.ones(1), "sigma_range": (0.0, 1.0), **kwargs}
    with pytest.raises(ValueError, match=message):
        ComposedGuidance(main, main, **args)


def test_composing_a_model_with_itself_adds_to_its_scale(two_text_runs):
    """D_u + s (D_c - D_u) + b (D_c - D_u) is guidance at scale s + b: the same latents."""
    from ldm.inference import ComposedModel, load_run, prompt_conditioning, sample_latents

    _, low, _ = two_text_runs
    model, twin = load_run(low), load_run(low)
    c, uc = prompt_conditioning(model, [PROMPT] * 2)
    shape = (2, model.channels, model.image_size, model.image_size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def sample(scale, compose=None):
        return sample_latents(model, shape, cond=c, uncond=uc, scale=scale, sampler="unipc", steps=4, x_T=noise,
                              progress=False, compose=compose)
    composed = ComposedModel(twin, 1.5, cond=c, uncond=uc)
    torch.testing.assert_close(sample(2.0, composed), sample(3.5), rtol=1e-4, atol=1e-4)
    assert composed.calls == {"composed": 4, "alone": 0}
    torch.testing.assert_close(sample(2.0, ComposedModel(twin, 0.0, cond=c, uncond=uc)), sample(2.0))
    assert not torch.allclose(sample(2.0, composed), sample(2.0), atol=1e-3)


def test_a_partner_is_asked_only_within_its_schedule(two_text_runs):
    from ldm.inference import ComposedModel, load_run, prompt_conditioning, sample_latents

    high, low, _ = two_text_runs
    model, partner = load_run(low), load_run(high)
    # a less noisy schedule for the partner: its highest level lies below the sampled model's
    partner.register_buffer("alphas_cumprod", partner.alphas_cumprod ** 0.25, persistent=False)
    c, uc = prompt_conditioning(model, [PROMPT])
    pc, puc = prompt_conditioning(partner, [PROMPT])
    shape = (1, model.channels, model.image_size, model.image_size)
    composed = ComposedModel(partner, 2.0, cond=pc, uncond=puc)
    z = sample_latents(model, shape, cond=c, uncond=uc, scale=2.0, sampler="ddim", steps=6, progress=False,
                       generator=torch.Generator().manual_seed(1), compose=composed)
    assert torch.isfinite(z).all()
    assert composed.calls["composed"] > 0 and composed.calls["alone"] > 0  # the noisiest steps alone
    with pytest.raises(ValueError, match="conditional and unconditional"):
        sample_latents(model, shape, cond=c, steps=2, progress=False, compose=ComposedModel(partner, 1.0, cond=pc))


def test_txt2img_and_scoring_with_a_composed_model(two_text_runs, tmp_path, capsys):
    high, low, clf = two_text_runs
    alone = _txt2img(low, tmp_path / "alone")
    assert np.array_equal(_txt2img(low, tmp_path / "zero", "--compose-model", str(high), "--compose-weight", "0"),
                          alone)
    both = _txt2img(low, tmp_path / "both", "--compose-model", str(high), "--compose-weight", "2")
    assert "--compose-model added its guidance to 4 of 4 steps" in capsys.readouterr().out
    assert not np.array_equal(both, alone)
    # with autoguidance of weight 0 (classifier-free guidance exactly) the composition is the same
    assert np.array_equal(_txt2img(low, tmp_path / "guided", "--compose-model", str(high), "--compose-weight", "2",
                                   "--guide-model", str(high), "--guide-weight", "0"), both)
    other, _ = write_run(tmp_path / "other", "text", seed=1)  # another first stage
    klass, _ = write_run(tmp_path / "class", "class")
    with pytest.raises(SystemExit, match="--compose-weight needs --compose-model"):
        _txt2img(low, tmp_path / "o", "--compose-weight", "2")
    with pytest.raises(SystemExit, match="different first stages"):
        _txt2img(low, tmp_path / "o", "--compose-model", str(other))
    with pytest.raises(SystemExit, match=r"not a text-conditioned model \(class\)"):
        _txt2img(low, tmp_path / "o", "--compose-model", str(klass))
    with pytest.raises(SystemExit, match="cannot be combined"):
        _txt2img(low, tmp_path / "o", "--compose-model", str(high), "--high-noise-expert", str(high),
                 "--switch-t", "50")
    assert not (tmp_path / "o" / "samples").exists()  # nothing sampled

    script = load_script("score_text_run")
    argv = ["-r", str(low), "--classifier", str(clf), "-n", "2", "--steps", "4", "--n-real", "8",
            "--prompts", PROMPT, "--out", str(tmp_path / "scores")]
    plain = script.main(argv)
    composed = script.main([*argv[:-1], str(tmp_path / "composed"), "--compose-model", str(high)])
    saved = json.loads((tmp_path / "composed" / "scores.json").read_text())["settings"]
    assert saved["compose_weight"] == 3.0 and saved["compose_model"].endswith(high.name)
    assert len(plain) == len(composed) == 1
    with pytest.raises(SystemExit, match="different first stages"):
        script.main([*argv[:-1], str(tmp_path / "bad"), "--compose-model", str(other)])
