"""Noise schedules, the forward process, parameterisations, posterior and VLB weights, LR multipliers."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2
from ldm.models.diffusion import parameterization as P
from ldm.models.diffusion.losses import DiffusionLoss, get_loss, lvlb_weights
from ldm.models.diffusion.schedule import (
    SCHEDULE_BUFFERS, make_beta_schedule, make_ddim_sampling_parameters, make_ddim_timesteps,
    register_schedule_buffers, schedule_arrays)

T = 1000


class Holder(nn.Module):
    """The schedule buffers alone, registered the way DDPM registers them."""

    def __init__(self, betas, v_posterior=0.0):
        super().__init__()
        self.arrays = schedule_arrays(betas, v_posterior)
        register_schedule_buffers(self, self.arrays)


@pytest.fixture(scope="module")
def sched():
    return Holder(make_beta_schedule("linear", T, 0.0015, 0.0195))


def test_linear_schedules_closed_form():
    lin = make_beta_schedule("linear", T, 0.00085, 0.012)
    assert lin.dtype == np.float64 and lin.shape == (T,)
    expected = np.array([(math.sqrt(0.00085) + i * (math.sqrt(0.012) - math.sqrt(0.00085)) / (T - 1)) ** 2
                         for i in range(T)])
    np.testing.assert_allclose(lin, expected, rtol=1e-12)
    assert lin[0] == pytest.approx(0.00085, rel=1e-12) and lin[-1] == pytest.approx(0.012, rel=1e-12)
    np.testing.assert_allclose(make_beta_schedule("sqrt_linear", T, 1e-4, 2e-2), np.linspace(1e-4, 2e-2, T), rtol=1e-12)
    np.testing.assert_allclose(make_beta_schedule("sqrt", T, 1e-4, 2e-2), np.sqrt(np.linspace(1e-4, 2e-2, T)),
                               rtol=1e-12)


def test_cosine_schedule_matches_formula():
    s = 8e-3
    betas = make_beta_schedule("cosine", T, cosine_s=s)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    alpha_bar = np.array([f(t) / f(0) for t in range(T + 1)])
    expected = np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0, 0.999)
    np.testing.assert_allclose(betas, expected, rtol=1e-9, atol=1e-15)
    assert betas.max() == pytest.approx(0.999)  # the last step is clipped
    np.testing.assert_allclose(np.cumprod(1 - betas)[:-1], alpha_bar[1:-1], rtol=1e-9)


def test_unknown_schedule_names_the_argument():
    with pytest.raises(ValueError, match="beta_schedule 'quadratic'"):
        make_beta_schedule("quadratic", 10)


def test_buffers_are_float32_under_original_names(sched):
    buffers = dict(sched.named_buffers())
    assert set(buffers) == set(SCHEDULE_BUFFERS)
    for name in SCHEDULE_BUFFERS:
        assert buffers[name].dtype == torch.float32
        assert torch.equal(buffers[name], torch.tensor(sched.arrays[name], dtype=torch.float32))


def test_buffers_are_real_under_meta_device():
    with torch.device("meta"):
        h = Holder(make_beta_schedule("linear", 10))
    assert h.betas.device.type == "cpu" and torch.isfinite(h.alphas_cumprod).all()


def test_posterior_coefficients_equal_their_formulas(sched):
    a = sched.arrays
    betas, ac = a["betas"], a["alphas_cumprod"]
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    np.testing.assert_allclose(ac, np.cumprod(1 - betas), rtol=1e-12)
    np.testing.assert_allclose(a["alphas_cumprod_prev"], ac_prev, rtol=0)
    np.testing.assert_allclose(a["posterior_variance"], betas * (1 - ac_prev) / (1 - ac), rtol=1e-12)
    np.testing.assert_allclose(a["posterior_mean_coef1"], betas * np.sqrt(ac_prev) / (1 - ac), rtol=1e-12)
    np.testing.assert_allclose(a["posterior_mean_coef2"], (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac), rtol=1e-12)
    assert a["posterior_variance"][0] == 0 and a["posterior_log_variance_clipped"][0] == pytest.approx(np.log(1e-20))
    # v_posterior interpolates to the forward variance β_t
    np.testing.assert_allclose(schedule_arrays(betas, 1.0)["posterior_variance"], betas, rtol=1e-12)


def test_posterior_is_the_gaussian_product(sched):
    """μ̃ and β̃ are the mean and variance of q(x_{t-1}|x_0) q(x_t|x_{t-1}) normalised in x_{t-1}."""
    torch.manual_seed(1)
    x0, xt = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    a = {k: torch.tensor(v) for k, v in sched.arrays.items()}
    mean, var, _ = P.q_posterior(type("S", (), a), x0, xt, t)
    ac_prev, beta = a["alphas_cumprod_prev"][t], a["betas"][t]
    prec_prior, prec_lik = 1 / (1 - ac_prev), (1 - beta) / beta
    exp_var = 1 / (prec_prior + prec_lik)
    exp_mean = exp_var.view(-1, 1, 1, 1) * ((ac_prev.sqrt() / (1 - ac_prev)).view(-1, 1, 1, 1) * x0
                                            + ((1 - beta).sqrt() / beta).view(-1, 1, 1, 1) * xt)
    torch.testing.assert_close(var.flatten(), exp_var, rtol=1e-10, atol=0)
    torch.testing.assert_close(mean, exp_mean, rtol=1e-9, atol=1e-12)


def test_q_sample_exact_given_noise(sched):
    x0, noise = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    t = torch.tensor([0, 1, 250, 700, 999])
    xt = P.q_sample(sched, x0, t, noise)
    ac = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, ac.sqrt() * x0 + (1 - ac).sqrt() * noise)


@pytest.mark.parametrize("t", [10, 400, 900])
def test_q_sample_moments(sched, t):
    """Monte-Carlo moments of q(z_t | z_0): mean sqrt(ᾱ_t) z_0, variance 1 - ᾱ_t."""
    z0 = torch.linspace(-2, 2, 8).view(1, 8)
    n = 40000
    tt = torch.full((n,), t)
    zt = P.q_sample(sched, z0.expand(n, 8), tt, torch.randn(n, 8))
    ac = float(sched.alphas_cumprod[t])
    mean, var, logvar = P.q_mean_variance(sched, z0, torch.tensor([t]))
    torch.testing.assert_close(mean, math.sqrt(ac) * z0)
    assert float(var) == pytest.approx(1 - ac, rel=1e-6) and float(logvar) == pytest.approx(math.log(1 - ac), rel=1e-5)
    se = math.sqrt((1 - ac) / n)
    assert (zt.mean(0) - mean[0]).abs().max() < 5 * se
    assert (zt.var(0) / (1 - ac) - 1).abs().max() < 5 * math.sqrt(2 / n)


def test_parameterisations_convert_exactly(sched):
    s64 = type("S", (), {k: torch.tensor(v) for k, v in sched.arrays.items()})
    x0, eps = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, 100, 500, 800, 999])
    xt = P.q_sample(s64, x0, t, eps)
    v = P.get_v(s64, x0, eps, t)
    close = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(P.predict_start_from_noise(s64, xt, t, eps), x0, **close)
    torch.testing.assert_close(P.predict_noise_from_start(s64, xt, t, x0), eps, **close)
    torch.testing.assert_close(P.predict_start_from_z_and_v(s64, xt, t, v), x0, **close)
    torch.testing.assert_close(P.predict_eps_from_z_and_v(s64, xt, t, v), eps, **close)
    for name, out in (("eps", eps), ("x0", x0), ("v", v)):
        torch.testing.assert_close(P.training_target(s64, name, x0, eps, t), out, **close)
        torch.testing.assert_close(P.model_output_to_x0(s64, name, xt, t, out), x0, **close)
        torch.testing.assert_close(P.model_output_to_eps(s64, name, xt, t, out), eps, **close)
    with pytest.raises(ValueError, match="parameterization 'mu'"):
        P.training_target(s64, "mu", x0, eps, t)


def test_vlb_weights(sched):
    a = sched.arrays
    w = lvlb_weights(a, "eps").double().numpy()
    alphas, ac, pv = 1 - a["betas"], a["alphas_cumprod"], a["posterior_variance"]
    expected = a["betas"][1:] ** 2 / (2 * pv[1:] * alphas[1:] * (1 - ac[1:]))  # Ho et al. Eq. (12)
    np.testing.assert_allclose(w[1:], expected, rtol=1e-5)
    assert w[0] == w[1]
    wx0 = lvlb_weights(a, "x0").double().numpy()
    np.testing.assert_allclose(wx0[1:], a["posterior_mean_coef1"][1:] ** 2 / (2 * pv[1:]), rtol=1e-5)
    wv = lvlb_weights(a, "v").double().numpy()
    np.testing.assert_allclose(wv[1:], wx0[1:] * (1 - ac[1:]), rtol=1e-5)


def test_loss_terms():
    pred, target = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert get_loss(pred, target, "l1") == (pred - target).abs().mean()
    torch.testing.assert_close(get_loss(pred, target, "l2", mean=False), (pred - target) ** 2)
    t = torch.tensor([1, 2, 3])
    logvar, lvlb = torch.tensor([0.0, 0.5, -0.5, 1.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    loss, logs = DiffusionLoss("l2", l_simple_weight=2.0, original_elbo_weight=0.1)(pred, target, t, logvar, lvlb)
    expected = 2.0 * (per / logvar[t].exp() + logvar[t]).mean() + 0.1 * (lvlb[t] * per).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["train/loss_simple"], per.mean())
    assert set(logs) == {"train/loss_simple", "train/loss_vlb", "train/loss"}
    with pytest.raises(ValueError, match="loss_type 'l3'"):
        DiffusionLoss("l3")


def test_ddim_helpers():
    steps = make_ddim_timesteps("uniform", 50, 1000, verbose=False)
    np.testing.assert_array_equal(steps, np.arange(0, 1000, 20) + 1)
    ac = np.cumprod(1 - make_beta_schedule("linear", 1000, 0.00085, 0.012))
    sigmas, a, a_prev = make_ddim_sampling_parameters(ac, steps, eta=0.0, verbose=False)
    assert (sigmas == 0).all() and a[0] == ac[1] and a_prev[0] == ac[0] and (a_prev[1:] == ac[steps[:-1]]).all()
    sigmas1, _, _ = make_ddim_sampling_parameters(ac, steps, eta=1.0, verbose=False)
    np.testing.assert_allclose(sigmas1, np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)))


@pytest.mark.parametrize("schedule,ours,theirs", [
    ("linear", dict(linear_start=0.00085, linear_end=0.012), dict(beta_schedule="scaled_linear",
                                                                 beta_start=0.00085, beta_end=0.012)),
    ("sqrt_linear", dict(linear_start=1e-4, linear_end=2e-2), dict(beta_schedule="linear",
                                                                  beta_start=1e-4, beta_end=2e-2)),
    ("cosine", dict(), dict(beta_schedule="squaredcos_cap_v2")),
])
def test_alphas_cumprod_match_diffusers(schedule, ours, theirs):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, **theirs)
    h = Holder(make_beta_schedule(schedule, T, **ours))
    # diffusers computes its betas in float32; ours are float64 rounded once
    tol = dict(rtol=2e-5, atol=1e-7) if schedule != "cosine" else dict(rtol=2e-4, atol=1e-6)
    torch.testing.assert_close(h.betas, ref.betas.float(), **tol)
    torch.testing.assert_close(h.alphas_cumprod, ref.alphas_cumprod.float(), **tol)


def test_lr_multipliers():
    lin = LambdaLinearScheduler(warm_up_steps=[10], f_min=[0.5], f_max=[1.0], f_start=[1e-6], cycle_lengths=[100])
    assert lin(0) == pytest.approx(1e-6) and lin(5) == pytest.approx(1e-6 + (1 - 1e-6) / 10 * 5)
    assert lin(10) == pytest.approx(0.5 + 0.5 * 90 / 100) and lin(100) == pytest.approx(0.5)
    cos2 = LambdaWarmUpCosineScheduler2([10, 10], [0.1, 0.2], [1.0, 0.8], [0.0, 0.0], [100, 50])
    assert cos2(10) == pytest.approx(1.0) and cos2(55) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.5 * math.pi)))
    assert cos2(100) == pytest.approx(0.1) and cos2(105) == pytest.approx(0.8 * 5 / 10)  # second cycle warm-up
    cos = LambdaWarmUpCosineScheduler(warm_up_steps=1000, lr_min=1e-4, lr_max=0.1, lr_start=1e-3,
                                      max_decay_steps=50000)
    assert cos(500) == pytest.approx(1e-3 + (0.1 - 1e-3) / 2)
    assert cos(25500) == pytest.approx(1e-4 + 0.5 * (0.1 - 1e-4))
    assert cos(10 ** 6) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="one entry per cycle"):
        LambdaLinearScheduler([1], [0.1, 0.2], [1.0], [0.0], [10])
