"""Samplers of ldm.models.diffusion.sampling and the original class API, on analytic stand-in models."""
import inspect
import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.sampling import (SAMPLERS, ClassifierFreeGuidance, CompVisDenoiser, cat_conditioning,
                                           ddim_sigmas, ddim_timesteps, ddpm_sigmas, dpm_solver_sigmas,
                                           invert_ddim, karras_sigmas, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                                           sample_plms, sample_unipc, timestep_sigmas, ve_to_vp, vp_to_ve)
from tests.sampler_standins import LDM_SCHEDULE, AnalyticModel

SHAPE = (2, 4, 8, 8)
STOCHASTIC = {"ddpm": {}, "ddim": {"eta": 1.0}}
ALL = sorted(SAMPLERS)


@pytest.fixture(scope="module")
def model():
    return AnalyticModel()


def levels(model, steps=8):
    return ddim_sigmas(model.alphas_cumprod, steps)


def run(name, model, x_T, sigmas, **kw):
    kw = {**STOCHASTIC.get(name, {}), **kw}
    x = SAMPLERS[name](CompVisDenoiser(model), vp_to_ve(x_T, sigmas[0]), sigmas, disable=True, **kw)
    return ve_to_vp(x, sigmas[-1])


# ---- one signature, shapes, dtypes, seeds, progress bars ----

@pytest.mark.parametrize("name", ALL)
def test_common_signature(name):
    params = inspect.signature(SAMPLERS[name]).parameters
    assert list(params)[:3] == ["denoiser", "x", "sigmas"]
    for kw, default in [("extra_args", None), ("callback", None), ("disable", None), ("generator", None)]:
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY and params[kw].default is default


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device(name, model, dtype):
    x_T = torch.randn(SHAPE, dtype=dtype)
    out = run(name, model, x_T, levels(model), generator=torch.Generator().manual_seed(0))
    assert out.shape == SHAPE and out.dtype == dtype and out.device == x_T.device
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_seeded_generator_reproduces(name, model):
    x_T = torch.randn(SHAPE)
    a = run(name, model, x_T, levels(model), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter when a generator is given
    b = run(name, model, x_T, levels(model), generator=torch.Generator().manual_seed(3))
    c = run(name, model, x_T, levels(model), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert torch.equal(a, c) == (name not in STOCHASTIC)  # only the ancestral samplers draw noise


@pytest.mark.parametrize("name", ALL)
def test_progress_bar_can_be_disabled(name, model, capsys):
    x = vp_to_ve(torch.randn(SHAPE), levels(model)[0])
    SAMPLERS[name](CompVisDenoiser(model), x, levels(model), disable=True)
    assert capsys.readouterr().err == ""
    SAMPLERS[name](CompVisDenoiser(model), x, levels(model), disable=False)
    assert "8/8" in capsys.readouterr().err


@pytest.mark.parametrize("name", ALL)
def test_callback_once_per_step(name, model):
    seen = []
    run(name, model, torch.randn(SHAPE), levels(model), callback=lambda d: seen.append(d))
    assert [d["i"] for d in seen] == list(range(8))
    assert set(seen[0]) == {"i", "sigma", "sigma_next", "x", "denoised", "x_next"}


@pytest.mark.parametrize("name", ALL)
def test_rejects_bad_sigmas(name, model):
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="decreasing"):
        SAMPLERS[name](CompVisDenoiser(model), x, levels(model).flip(0), disable=True)
    with pytest.raises(ValueError, match="at least 2"):
        SAMPLERS[name](CompVisDenoiser(model), x, levels(model)[:1], disable=True)


# ---- DDIM: determinism, inversion, masking ----

def test_ddim_eta0_is_deterministic(model):
    x_T = torch.randn(SHAPE)
    torch.manual_seed(1)
    a = run("ddim", model, x_T, levels(model), eta=0.0)
    torch.manual_seed(2)
    b = run("ddim", model, x_T, levels(model), eta=0.0)
    assert torch.equal(a, b)


def test_ddim_inversion_returns_the_start_latent(model):
    """Inversion then sampling with 500 steps reproduces the latent to 0.02 (max abs, latent std 0.5);
    the error is first order in the step size."""
    x0 = 0.5 * torch.randn(SHAPE)
    d = CompVisDenoiser(model)
    errors = {}
    for steps in (50, 500):
        sigmas = ddim_sigmas(model.alphas_cumprod, steps)
        z = invert_ddim(d, vp_to_ve(x0, sigmas[-1]), sigmas.flip(0), disable=True)
        back = ve_to_vp(sample_ddim(d, z, sigmas, disable=True), sigmas[-1])
        errors[steps] = (back - x0).abs().max().item()
    assert errors[500] < 0.02
    assert errors[500] < errors[50] / 5


def test_ddim_sampler_encode_decode_roundtrip(model):
    sampler = DDIMSampler(model)
    sampler.make_schedule(500, verbose=False)
    x0 = 0.5 * torch.randn(SHAPE)
    z, out = sampler.encode(x0, None, t_enc=400, return_intermediates=4)
    assert torch.equal(out["x_encoded"], z) and out["intermediate_steps"] == [0, 100, 200, 300]
    back = sampler.decode(z, None, t_start=400)
    assert (back - x0).abs().max() < 0.02


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_masked_ddim_keeps_known_region(model, eta):
    sigmas = levels(model, 10)
    x0 = torch.randn(SHAPE)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1.0  # left half known
    g = torch.Generator().manual_seed(0)
    draws = []

    def noise_sampler(sigma, sigma_next):
        draws.append(torch.randn(SHAPE, generator=g))
        return draws[-1]

    seen = []
    out = sample_ddim(CompVisDenoiser(model), vp_to_ve(torch.randn(SHAPE), sigmas[0]), sigmas, eta=eta,
                      mask=mask, x0=x0, noise_sampler=noise_sampler, callback=seen.append, disable=True)
    per_step = 2 if eta > 0 else 1  # re-noising first, then the eta noise
    known = mask.expand(SHAPE).bool()
    for step in seen:
        renoise = draws[per_step * step["i"]]
        expected = x0 + step["sigma"] * renoise  # q(x_t | x0) in x0 + sigma*n coordinates
        torch.testing.assert_close(step["x"][known], expected[known], atol=1e-6, rtol=0)
        assert not torch.allclose(step["x"][~known], expected[~known])
    assert torch.equal(out[known], x0[known])


def test_ddim_sampler_class_mask_returns_x0(model):
    x0 = torch.randn(SHAPE)
    mask = torch.ones(SHAPE[0], 1, 8, 8)
    mask[..., 2:6, 2:6] = 0.0
    for sampler in (DDIMSampler(model), PLMSSampler(model)):
        out, _ = sampler.sample(10, SHAPE[0], SHAPE[1:], mask=mask, x0=x0, verbose=False)
        assert torch.equal(out[mask.expand(SHAPE).bool()], x0[mask.expand(SHAPE).bool()])


def test_masked_ancestral_and_plms_keep_known_region(model):
    x0, mask = torch.randn(SHAPE), (torch.rand(1, 1, 8, 8) > 0.5).float()
    for fn in (sample_ddpm, sample_plms):
        out = fn(CompVisDenoiser(model), torch.randn(SHAPE) * 15, levels(model), mask=mask, x0=x0, disable=True)
        assert torch.equal(out[mask.expand(SHAPE).bool()], x0[mask.expand(SHAPE).bool()])
    with pytest.raises(ValueError, match="both `mask` and `x0`"):
        sample_ddim(CompVisDenoiser(model), torch.randn(SHAPE), levels(model), mask=mask, disable=True)


# ---- classifier-free guidance ----

COND_LAYOUTS = {
    "tensor": lambda b: torch.randn(b, 3, 5),
    "list": lambda b: [torch.randn(b, 3, 5), torch.randn(b, 7)],
    "dict": lambda b: {"c_concat": [torch.randn(b, 1, 8, 8)], "c_crossattn": [torch.randn(b, 3, 5)]},
}


@pytest.mark.parametrize("layout", sorted(COND_LAYOUTS))
def test_cfg_scale_one_equals_conditional_sampling(model, layout):
    cond, uncond = COND_LAYOUTS[layout](2), COND_LAYOUTS[layout](2)
    sigmas, x = levels(model), vp_to_ve(torch.randn(SHAPE), levels(model)[0])
    plain = sample_ddim(CompVisDenoiser(model), x, sigmas, extra_args={"cond": cond}, disable=True)
    guided = sample_ddim(ClassifierFreeGuidance(CompVisDenoiser(model), 1.0, uncond), x, sigmas,
                         extra_args={"cond": cond}, disable=True)
    assert torch.equal(plain, guided)


@pytest.mark.parametrize("layout", sorted(COND_LAYOUTS))
def test_cfg_batched_equals_two_calls(model, layout):
    cond, uncond = COND_LAYOUTS[layout](2), COND_LAYOUTS[layout](2)
    d, scale = CompVisDenoiser(model), 7.5
    x, sigma = torch.randn(SHAPE), torch.tensor([2.0, 0.3])
    model.calls = 0
    guided = ClassifierFreeGuidance(d, scale, uncond)(x, sigma, cond=cond)
    assert model.calls == 1  # one forward pass over the doubled batch
    d_c, d_u = d(x, sigma, cond=cond), d(x, sigma, cond=uncond)
    torch.testing.assert_close(guided, d_u + scale * (d_c - d_u), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(d_c, d_u)


def test_cat_conditioning_layouts_and_errors():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(cat_conditioning(a, b), torch.cat([a, b]))
    out = cat_conditioning({"c_concat": [a], "c_crossattn": [a]}, {"c_concat": [b], "c_crossattn": [b]})
    assert torch.equal(out["c_crossattn"][0][2:], b) and torch.equal(out["c_concat"][0][:2], a)
    assert cat_conditioning(None, None) is None
    with pytest.raises(ValueError, match="keys"):
        cat_conditioning({"c_concat": [a]}, {"c_crossattn": [b]})
    with pytest.raises(TypeError, match=r"cond\[0\]"):
        cat_conditioning([a], [[b]])
    with pytest.raises(ValueError, match="unconditional conditioning"):
        ClassifierFreeGuidance(lambda x, s, cond=None: x, 3.0, None)


def test_sampler_classes_guidance_matches_wrapper(model):
    cond, uncond = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    x_T = torch.randn(SHAPE)
    out, _ = DDIMSampler(model).sample(10, 2, SHAPE[1:], cond, x_T=x_T, verbose=False,
                                       unconditional_guidance_scale=5.0, unconditional_conditioning=uncond)
    sigmas = ddim_sigmas(model.alphas_cumprod, 10)
    d = ClassifierFreeGuidance(CompVisDenoiser(model), 5.0, uncond)
    ref = ve_to_vp(sample_ddim(d, vp_to_ve(x_T, sigmas[0]), sigmas, extra_args={"cond": cond}, disable=True),
                   sigmas[-1])
    assert torch.equal(out, ref)


# ---- accuracy: the fast samplers ----

@pytest.mark.parametrize("schedule", [None, LDM_SCHEDULE])
def test_fast_samplers_beat_ddim_at_few_steps(schedule):
    """Against a 1000-step DDIM reference (every training step): on the same 10-step grid
    UniPC-bh2 and DPM-Solver++(2M) are closer than DDIM, and UniPC with 20 steps beats DDIM with 50."""
    model = AnalyticModel() if schedule is None else AnalyticModel(schedule=schedule)
    d, ac = CompVisDenoiser(model), model.alphas_cumprod
    x_T = torch.randn(SHAPE)

    def err(fn, sigmas):
        out = ve_to_vp(fn(d, vp_to_ve(x_T, sigmas[0]), sigmas, disable=True), sigmas[-1])
        return (out - ref).abs().max().item()

    full = dpm_solver_sigmas(ac, 999)
    assert d.sigma_to_t(full[:-1]).tolist() == list(range(999, 0, -1))
    ref = ve_to_vp(sample_ddim(d, vp_to_ve(x_T, full[0]), full, disable=True), full[-1])
    grid10 = dpm_solver_sigmas(ac, 10)
    ddim10 = err(sample_ddim, grid10)
    assert err(sample_unipc, grid10) < 0.6 * ddim10
    assert err(sample_dpmpp_2m, grid10) < 0.8 * ddim10
    assert err(sample_unipc, dpm_solver_sigmas(ac, 20)) < err(sample_ddim, dpm_solver_sigmas(ac, 50))
    karras20 = karras_sigmas(21, d.sigma_min, d.sigma_max)[:-1]  # 20 steps ending at sigma(0) as the reference
    assert err(sample_unipc, karras20) < err(sample_ddim, dpm_solver_sigmas(ac, 50))


# ---- schedules and step counts ----

def original_uniform_grid(steps, T=1000):
    return np.asarray(list(range(0, T, T // steps))) + 1


def test_ddim_timesteps_exact_count_for_every_step_number():
    for steps in range(1, 1000):
        ts = ddim_timesteps(steps)
        assert len(ts) == steps and ts[0] == 1 and ts[-1] <= 999 and bool((ts.diff() > 0).all())
        orig = original_uniform_grid(steps)
        np.testing.assert_array_equal(ts.numpy(), orig[:steps])  # a prefix of the original grid
        if 1000 % steps == 0:
            assert len(orig) == steps
    assert len(original_uniform_grid(30)) == 31 and len(ddim_timesteps(30)) == 30
    np.testing.assert_array_equal(ddim_timesteps(50).numpy(), np.arange(1, 1000, 20))


def test_ddim_timesteps_rejects_what_cannot_be_run():
    with pytest.raises(ValueError, match="beyond the last training step"):
        ddim_timesteps(1000)
    with pytest.raises(ValueError, match="exceeds"):
        ddim_timesteps(1001)
    with pytest.raises(ValueError, match="positive integer"):
        ddim_timesteps(0)
    with pytest.raises(ValueError, match="distinct"):
        ddim_timesteps(50, discretize="quad")
    with pytest.raises(ValueError, match="discretize"):
        ddim_timesteps(10, discretize="cubic")
    quad = ddim_timesteps(20, discretize="quad").numpy()
    np.testing.assert_array_equal(quad, (np.linspace(0, np.sqrt(800), 20) ** 2).astype(int) + 1)


def test_class_samplers_walk_the_original_grid(model):
    # The original DDIM/PLMS classes walk make_ddim_timesteps' grid: 31 steps for S = 30 (PLMS needs
    # one more evaluation for its first step); DPM-Solver's class takes exactly S steps.
    for sampler, n_steps, calls in ((DDIMSampler(model), 31, 31), (PLMSSampler(model), 31, 32),
                                    (DPMSolverSampler(model), 30, 30)):
        model.calls = 0
        steps = []
        sampler.sample(30, 2, SHAPE[1:], verbose=False, callback=steps.append)
        assert steps == list(range(n_steps)) and model.calls == calls


def test_level_tables(model):
    ac = model.alphas_cumprod
    table = ((1 - ac.double()) / ac.double()).sqrt()
    torch.testing.assert_close(ddim_sigmas(ac, 4), table[[751, 501, 251, 1, 0]].float())
    full = ddpm_sigmas(ac)
    assert len(full) == 1001 and full[-1] == 0 and full[0] == table[-1].float()
    between = timestep_sigmas(ac, torch.tensor([10.0, 10.5, 11.0]))
    torch.testing.assert_close(between[[0, 2]], table[[10, 11]])
    log_alpha = -0.5 * torch.log1p(between ** 2)  # linear in t between training steps
    torch.testing.assert_close(log_alpha[1], (log_alpha[0] + log_alpha[2]) / 2)
    k = karras_sigmas(5, 0.1, 10.0)
    assert len(k) == 6 and k[-1] == 0 and math.isclose(k[0].item(), 10.0, rel_tol=1e-6)
    assert math.isclose(k[-2].item(), 0.1, rel_tol=1e-6)
    log_snr = dpm_solver_sigmas(ac, 6, "logSNR").log()
    torch.testing.assert_close(log_snr.diff(), log_snr.diff().mean().expand(6), atol=1e-5, rtol=0)


def test_denoiser_timesteps(model):
    d = CompVisDenoiser(model)
    t = d.sigma_to_t(d.sigmas[[0, 500, 999]].float())
    assert t.dtype == torch.long and t.tolist() == [0, 500, 999]
    half = d.sigma_to_t(d.t_to_sigma(torch.tensor([500.25])).float())
    assert half.dtype == torch.float32 and abs(half.item() - 500.25) < 1e-3
    assert CompVisDenoiser(model, quantize=True).sigma_to_t(d.t_to_sigma(torch.tensor([500.4]))).tolist() == [500]
    with pytest.raises(ValueError, match="outside the model's range"):
        d(torch.randn(SHAPE), torch.tensor([1e-4, 1.0]))


# ---- the original class API ----

def test_class_api_seeded_and_intermediates(model):
    torch.manual_seed(7)
    a, inter = DDIMSampler(model).sample(20, 2, SHAPE[1:], eta=1.0, verbose=False, log_every_t=5)
    torch.manual_seed(7)
    b, _ = DDIMSampler(model).sample(20, 2, SHAPE[1:], eta=1.0, verbose=False, log_every_t=5)
    assert torch.equal(a, b)
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 1 + 20 // 5 + 1
    assert torch.equal(inter["x_inter"][-1], a)


def test_stochastic_encode_then_decode(model):
    sampler = DDIMSampler(model)
    sampler.make_schedule(50, ddim_eta=0.0, verbose=False)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([30, 30])
    z = sampler.stochastic_encode(x0, t, noise=noise)
    a = model.alphas_cumprod[sampler.ddim_timesteps[30]]
    torch.testing.assert_close(z, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    out = sampler.decode(z, None, t_start=30)
    sigmas = ddim_sigmas(model.alphas_cumprod, 50)[-31:]  # steps 29..0 of the grid, then sigma(0)
    ref = ve_to_vp(sample_ddim(CompVisDenoiser(model), vp_to_ve(z, sigmas[0]), sigmas, disable=True), sigmas[-1])
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="t_start"):
        sampler.decode(z, None, t_start=51)


def test_decode_single_step(model):
    """img2img with a low strength runs one step: a one-element schedule must work too."""
    sampler = DDIMSampler(model)
    sampler.make_schedule(50, ddim_eta=0.0, verbose=False)
    z = torch.randn(SHAPE)
    out = sampler.decode(z, None, t_start=1)
    sigmas = ddim_sigmas(model.alphas_cumprod, 50)[-2:]  # step 0 of the grid, then sigma(0)
    ref = ve_to_vp(sample_ddim(CompVisDenoiser(model), vp_to_ve(z, sigmas[0]), sigmas, disable=True), sigmas[-1])
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_class_api_errors(model):
    with pytest.raises(ValueError, match="ddim_eta must be 0 for PLMS"):
        PLMSSampler(model).sample(10, 2, SHAPE[1:], eta=0.5, verbose=False)
    with pytest.raises(ValueError, match="mask, x0"):
        DPMSolverSampler(model).sample(10, 2, SHAPE[1:], mask=torch.ones(1), x0=torch.ones(1), verbose=False)
    with pytest.raises(ValueError, match="x_T has shape"):
        DDIMSampler(model).sample(10, 2, SHAPE[1:], x_T=torch.randn(3, 4, 8, 8), verbose=False)
    with pytest.raises(ValueError, match="quantize_x0"):
        DDIMSampler(model).sample(10, 2, SHAPE[1:], quantize_x0=True, verbose=False)
    with pytest.warns(UserWarning, match="no effect without"):
        DDIMSampler(model).sample(5, 2, SHAPE[1:], unconditional_guidance_scale=3.0, verbose=False)
    with pytest.warns(UserWarning, match="conditionings but batch_size"), pytest.raises(RuntimeError):
        DDIMSampler(model).sample(5, 2, SHAPE[1:], conditioning=torch.randn(3, 5), verbose=False)
    with pytest.raises(RuntimeError, match="make_schedule"):
        DDIMSampler(model).stochastic_encode(torch.randn(SHAPE), torch.tensor([1, 1]))


def test_score_corrector_shifts_eps(model):
    class Shift:
        def modify_score(self, m, eps, z_t, t, c, delta):
            assert m is model and t.dtype == torch.long and z_t.shape == SHAPE
            return eps + delta

    x_T = torch.randn(SHAPE)
    out, _ = DDIMSampler(model).sample(5, 2, SHAPE[1:], x_T=x_T, verbose=False, score_corrector=Shift(),
                                       corrector_kwargs={"delta": 0.1})
    d = CompVisDenoiser(model)
    shifted = lambda x, sigma, cond=None: d(x, sigma, cond) - 0.1 * sigma[:, None, None, None]  # noqa: E731
    sigmas = ddim_sigmas(model.alphas_cumprod, 5)
    ref = ve_to_vp(sample_ddim(shifted, vp_to_ve(x_T, sigmas[0]), sigmas, disable=True), sigmas[-1])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="both `mask` and `x0`"):
        DDIMSampler(model).sample(5, 2, SHAPE[1:], x0=x_T, verbose=False)


def test_quantize_x0_uses_first_stage(model):
    class Quantizer:
        def quantize(self, z):
            return z.round(), None, None

    model.first_stage_model = Quantizer()
    try:
        x_T = torch.randn(SHAPE)
        seen = []
        DDIMSampler(model).sample(5, 2, SHAPE[1:], x_T=x_T, quantize_x0=True, verbose=False,
                                  img_callback=lambda x0, i: seen.append(x0))
        assert all(torch.equal(x0, x0.round()) for x0 in seen)
    finally:
        del model.first_stage_model
