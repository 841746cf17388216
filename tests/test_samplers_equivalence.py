"""Our samplers against diffusers' schedulers configured like the original CompVis samplers.

Configurations that reproduce the originals (T = 1000, betas linear in sqrt(beta) = diffusers'
"scaled_linear"; every scheduler with clip_sample / thresholding off):
* DDIMSampler  = DDIMScheduler(set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
* PLMSSampler  = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                               timestep_spacing="leading")
* DPMSolverSampler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
      solver_type="midpoint", lower_order_final=True, timestep_spacing="linspace",
      final_sigmas_type="sigma_min") for step counts dividing T - 1 = 999 (9, 27): only there do the
      original's continuous time-uniform steps land on the integer timesteps diffusers uses.
* UniPC-bh2    = UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, solver_order=2,
      lower_order_final=True, timestep_spacing="linspace", final_sigmas_type="sigma_min")
* ancestral DDPM = DDPMScheduler(variance_type="fixed_small") over all 1000 steps.
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ldm.models.diffusion.ddim import DDIMSampler  # noqa: E402
from ldm.models.diffusion.dpm_solver import DPMSolverSampler  # noqa: E402
from ldm.models.diffusion.plms import PLMSSampler  # noqa: E402
from ldm.models.diffusion.sampling import (CompVisDenoiser, ddim_sigmas, ddim_timesteps, ddpm_sigmas,  # noqa: E402
                                           dpm_solver_sigmas, karras_sigmas, sample_ddim, sample_ddpm,
                                           sample_dpmpp_2m, sample_plms, sample_unipc, ve_to_vp, vp_to_ve)
from tests.sampler_standins import LDM_SCHEDULE, SD_SCHEDULE, AnalyticModel, OracleModel  # noqa: E402

TOL = 1e-4
SHAPE = (2, 4, 8, 8)


def scheduler_kwargs(schedule):
    return dict(num_train_timesteps=1000, beta_start=schedule[0], beta_end=schedule[1],
                beta_schedule="scaled_linear", prediction_type="epsilon")


def run_diffusers(scheduler, model, x_T, step_kwargs=lambda i: {}):
    """The diffusers sampling loop; returns the states after every scheduler.step."""
    sample, states = x_T * scheduler.init_noise_sigma, []
    for i, t in enumerate(scheduler.timesteps):
        eps = model.apply_model(scheduler.scale_model_input(sample, t), t.expand(sample.shape[0]), None)
        sample = scheduler.step(eps, t, sample, **step_kwargs(i)).prev_sample
        states.append(sample)
    return states


def run_ours(fn, model, x_T, sigmas, **kw):
    """Our sampler on a VP start latent; returns the VP states after every step."""
    states = []
    cb = lambda d: states.append(ve_to_vp(d["x_next"], d["sigma_next"]))  # noqa: E731
    fn(CompVisDenoiser(model), vp_to_ve(x_T, sigmas[0]), sigmas, callback=cb, disable=True, **kw)
    return states


@pytest.mark.parametrize("schedule", [SD_SCHEDULE, LDM_SCHEDULE])
def test_schedule_matches_diffusers_scaled_linear(schedule):
    sched = diffusers.DDIMScheduler(**scheduler_kwargs(schedule))
    model = AnalyticModel(schedule=schedule)
    torch.testing.assert_close(model.alphas_cumprod, sched.alphas_cumprod, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("steps", [10, 30, 50])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_trajectory_matches_diffusers(steps, eta):
    model = AnalyticModel()
    sched = diffusers.DDIMScheduler(**scheduler_kwargs(SD_SCHEDULE), clip_sample=False, set_alpha_to_one=False,
                                    steps_offset=1, timestep_spacing="leading")
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == ddim_timesteps(steps).flip(0).tolist()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(SHAPE, generator=g)
    noises = [torch.randn(SHAPE, generator=g) for _ in range(steps)]
    ref = run_diffusers(sched, model, x_T, lambda i: {"eta": eta, "variance_noise": noises[i]})
    it = iter(noises)
    ours = run_ours(sample_ddim, model, x_T, ddim_sigmas(model.alphas_cumprod, steps), eta=eta,
                    noise_sampler=lambda s, sn: next(it))
    assert len(ours) == len(ref) == steps
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_ddim_sampler_class_matches_diffusers():
    model = AnalyticModel(schedule=LDM_SCHEDULE)
    sched = diffusers.DDIMScheduler(**scheduler_kwargs(LDM_SCHEDULE), clip_sample=False, set_alpha_to_one=False,
                                    steps_offset=1, timestep_spacing="leading")
    sched.set_timesteps(25)
    x_T = torch.randn(SHAPE)
    ref = run_diffusers(sched, model, x_T)[-1]
    out, inter = DDIMSampler(model).sample(25, SHAPE[0], SHAPE[1:], x_T=x_T, verbose=False, log_every_t=5)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    torch.testing.assert_close(inter["x_inter"][-1], ref, atol=TOL, rtol=0)
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 1 + 25 // 5 + 1


@pytest.mark.parametrize("steps", [10, 50])
def test_plms_trajectory_matches_diffusers_pndm(steps):
    model = AnalyticModel()
    sched = diffusers.PNDMScheduler(**scheduler_kwargs(SD_SCHEDULE), skip_prk_steps=True, set_alpha_to_one=False,
                                    steps_offset=1, timestep_spacing="leading")
    sched.set_timesteps(steps)
    x_T = torch.randn(SHAPE)
    ref = run_diffusers(sched, model, x_T)
    model.calls = 0
    ours = run_ours(sample_plms, model, x_T, ddim_sigmas(model.alphas_cumprod, steps))
    assert model.calls == steps + 1 == len(ref)  # the pseudo improved Euler start costs one call
    for a, b in zip(ours, ref[1:]):  # diffusers' first output is the Euler half of the first step
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    out, _ = PLMSSampler(model).sample(steps, SHAPE[0], SHAPE[1:], x_T=x_T, verbose=False)
    torch.testing.assert_close(out, ref[-1], atol=TOL, rtol=0)


@pytest.mark.parametrize("steps", [9, 27])
def test_dpm_solver_pp_matches_diffusers(steps):
    model = AnalyticModel()
    sched = diffusers.DPMSolverMultistepScheduler(
        **scheduler_kwargs(SD_SCHEDULE), algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, timestep_spacing="linspace", final_sigmas_type="sigma_min", thresholding=False)
    sched.set_timesteps(steps)
    sigmas = dpm_solver_sigmas(model.alphas_cumprod, steps)
    t = CompVisDenoiser(model).sigma_to_t(sigmas[:-1])
    assert t.dtype == torch.long and t.tolist() == sched.timesteps.tolist()
    x_T = torch.randn(SHAPE)
    ref = run_diffusers(sched, model, x_T)
    ours = run_ours(sample_dpmpp_2m, model, x_T, sigmas)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    out, _ = DPMSolverSampler(model).sample(steps, SHAPE[0], SHAPE[1:], x_T=x_T, verbose=False)
    torch.testing.assert_close(out, ref[-1], atol=TOL, rtol=0)


def test_dpmpp_2m_karras_matches_diffusers():
    """DPM++ 2M Karras to sigma = 0, the model fed rounded timesteps (``quantize``) as diffusers."""
    model, steps = AnalyticModel(), 12
    sched = diffusers.DPMSolverMultistepScheduler(
        **scheduler_kwargs(SD_SCHEDULE), algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        use_karras_sigmas=True, final_sigmas_type="zero")
    sched.set_timesteps(steps)
    d = CompVisDenoiser(model, quantize=True)
    sigmas = karras_sigmas(steps, d.sigma_min, d.sigma_max)
    torch.testing.assert_close(sigmas, sched.sigmas, atol=1e-5, rtol=1e-5)
    x_T = torch.randn(SHAPE)
    ref = run_diffusers(sched, model, x_T)[-1]
    out = sample_dpmpp_2m(d, vp_to_ve(x_T, sigmas[0]), sigmas, disable=True)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("steps", [9, 27])
def test_unipc_bh2_matches_diffusers(steps):
    model = AnalyticModel()
    sched = diffusers.UniPCMultistepScheduler(
        **scheduler_kwargs(SD_SCHEDULE), solver_order=2, solver_type="bh2", predict_x0=True,
        lower_order_final=True, timestep_spacing="linspace", final_sigmas_type="sigma_min")
    sched.set_timesteps(steps)
    x_T = torch.randn(SHAPE)
    ref = run_diffusers(sched, model, x_T)[-1]
    model.calls = 0
    ours = run_ours(sample_unipc, model, x_T, dpm_solver_sigmas(model.alphas_cumprod, steps))[-1]
    assert model.calls == steps
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_ancestral_matches_diffusers(clip):
    model = AnalyticModel(channels=2, schedule=LDM_SCHEDULE)
    sched = diffusers.DDPMScheduler(**scheduler_kwargs(LDM_SCHEDULE), variance_type="fixed_small",
                                    clip_sample=clip, clip_sample_range=1.0)
    sched.set_timesteps(1000)
    x_T = torch.randn(1, 2, 4, 4)
    g_ref, g_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref = run_diffusers(sched, model, x_T, lambda i: {"generator": g_ref})[-1]
    sigmas = ddpm_sigmas(model.alphas_cumprod)
    out = sample_ddpm(CompVisDenoiser(model), vp_to_ve(x_T, sigmas[0]), sigmas, generator=g_ours,
                      clip_denoised=clip, disable=True)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_adapter_recovers_x0_exactly(parameterization):
    x0, noise = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    model = OracleModel(x0, noise, parameterization).double()
    d = CompVisDenoiser(model)
    t = torch.tensor([0, 999])
    for step in t.tolist():
        sigma = d.sigmas[step].expand(SHAPE[0])
        z_t = model.q_sample(x0, torch.full((SHAPE[0],), step), noise)  # the VP latent
        torch.testing.assert_close(d(vp_to_ve(z_t, sigma), sigma), x0, atol=1e-10, rtol=1e-10)


def test_parameterizations_define_the_same_denoiser():
    x = torch.randn(SHAPE)
    sigma = torch.tensor([0.5, 3.0])
    outs = [CompVisDenoiser(AnalyticModel(parameterization=p))(x, sigma) for p in ("eps", "x0", "v")]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-5, rtol=1e-5)
