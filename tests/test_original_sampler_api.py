"""The original DDIMSampler / PLMSSampler API used by third-party code: the grid of ``make_schedule``,
hand-written loops over ``p_sample_ddim`` / ``p_sample_plms`` with the original signatures, and
``sample(**kwargs)``."""
import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.plms import PLMSSampler
from tests.sampler_standins import LDM_SCHEDULE, AnalyticModel

SHAPE = (2, 4, 8, 8)


@pytest.fixture(scope="module")
def model():
    return AnalyticModel(schedule=LDM_SCHEDULE)


def ddim_loop(sampler, x_T, cond=None, **step_kwargs):
    """The body of the original ``ddim_sampling``, written against the public methods."""
    steps = np.flip(sampler.ddim_timesteps)
    img, total = x_T, len(steps)
    for i, step in enumerate(steps):
        index = total - i - 1
        ts = torch.full((x_T.shape[0],), int(step), dtype=torch.long)
        img, pred_x0 = sampler.p_sample_ddim(img, cond, ts, index=index, **step_kwargs)
    return img, pred_x0


def plms_loop(sampler, x_T, cond=None):
    """The body of the original ``plms_sampling``, with its ``old_eps`` bookkeeping."""
    steps = np.flip(sampler.ddim_timesteps)
    img, total, old_eps = x_T, len(steps), []
    for i, step in enumerate(steps):
        index = total - i - 1
        ts = torch.full((x_T.shape[0],), int(step), dtype=torch.long)
        ts_next = torch.full((x_T.shape[0],), int(steps[min(i + 1, total - 1)]), dtype=torch.long)
        img, pred_x0, e_t = sampler.p_sample_plms(img, cond, ts, index=index, old_eps=old_eps, t_next=ts_next)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return img


@pytest.mark.parametrize("S", [1, 7, 30, 50, 64, 150, 400])
def test_make_schedule_is_the_original_grid(model, S):
    sampler = DDIMSampler(model)
    sampler.make_schedule(ddim_num_steps=S, ddim_eta=0.5, verbose=False)
    c = 1000 // S
    expected = [k * c + 1 for k in range(1000) if k * c < 1000]  # range(0, 1000, c) + 1
    assert sampler.ddim_timesteps.tolist() == expected
    ac = model.alphas_cumprod.double()
    a = ac[expected]
    a_prev = torch.cat([ac[:1], a[:-1]])
    torch.testing.assert_close(sampler.ddim_alphas.double(), a, rtol=1e-6, atol=0)
    np.testing.assert_allclose(sampler.ddim_alphas_prev, a_prev.numpy(), rtol=1e-6)
    sig = 0.5 * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()  # Song et al. 2021, Eq. 16
    torch.testing.assert_close(sampler.ddim_sigmas.double(), sig, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(sampler.ddim_sqrt_one_minus_alphas.double(), (1 - a).sqrt(), rtol=1e-6, atol=0)


def test_make_schedule_30_gives_31_steps(model):
    for sampler in (DDIMSampler(model), PLMSSampler(model)):
        sampler.make_schedule(ddim_num_steps=30, verbose=False)
        steps = sampler.ddim_timesteps.tolist()
        assert len(steps) == 31 and steps[:3] == [1, 34, 67] and steps[-1] == 991


def test_make_schedule_quad_and_out_of_range(model):
    sampler = DDIMSampler(model)
    sampler.make_schedule(10, ddim_discretize="quad", verbose=False)
    assert sampler.ddim_timesteps.tolist() == [1, 10, 40, 89, 159, 247, 356, 484, 633, 801]
    for S in (333, 600):  # the grid's last step would be 1000: the original indexed past the table
        with pytest.raises(ValueError, match="beyond the last training step"):
            sampler.make_schedule(S, verbose=False)


@pytest.mark.parametrize("S, eta", [(10, 0.0), (25, 0.0), (10, 1.0)])
def test_p_sample_ddim_loop_reproduces_sample(model, S, eta):
    x_T = torch.randn(SHAPE)
    torch.manual_seed(3)
    ref, inter = DDIMSampler(model).sample(S, SHAPE[0], SHAPE[1:], x_T=x_T, eta=eta, verbose=False)
    sampler = DDIMSampler(model)
    sampler.make_schedule(ddim_num_steps=S, ddim_eta=eta, verbose=False)
    torch.manual_seed(3)
    out, pred_x0 = ddim_loop(sampler, x_T)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred_x0, inter["pred_x0"][-1], atol=1e-5, rtol=1e-5)


def test_p_sample_ddim_loop_reproduces_ddim_sampling_on_the_31_step_grid(model):
    sampler = DDIMSampler(model)
    sampler.make_schedule(ddim_num_steps=30, verbose=False)
    x_T = torch.randn(SHAPE)
    calls = []
    ref, inter = sampler.ddim_sampling(None, SHAPE, x_T=x_T, callback=calls.append, log_every_t=10)
    assert calls == list(range(31))
    assert len(inter["x_inter"]) == 1 + 4  # x_T, then indices 30 (the first), 20, 10, 0
    out, _ = ddim_loop(sampler, x_T)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # sample(30) walks the same 31-step grid and gives the same samples, as the original did
    model.calls = 0
    samples, _ = DDIMSampler(model).sample(30, SHAPE[0], SHAPE[1:], x_T=x_T, verbose=False)
    assert model.calls == 31
    torch.testing.assert_close(samples, ref, atol=1e-5, rtol=1e-5)


def test_ddim_sampling_on_the_original_steps(model):
    """``ddim_use_original_steps`` with ``timesteps=k`` walks training steps k-1, ..., 0 to clean data."""
    sampler = DDIMSampler(model)
    sampler.make_schedule(10, verbose=False)
    x = torch.randn(SHAPE) * 0.3
    ref, _ = sampler.ddim_sampling(None, SHAPE, x_T=x, ddim_use_original_steps=True, timesteps=5, verbose=False)
    img = x
    for step in reversed(range(5)):
        img, _ = sampler.p_sample_ddim(img, None, torch.full((2,), step), index=step, use_original_steps=True)
    torch.testing.assert_close(img, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("S", [10, 20])
def test_p_sample_plms_loop_reproduces_sample(model, S):
    x_T = torch.randn(SHAPE)
    cond = torch.randn(SHAPE[0], 3)
    ref, _ = PLMSSampler(model).sample(S, SHAPE[0], SHAPE[1:], conditioning=cond, x_T=x_T, verbose=False)
    sampler = PLMSSampler(model)
    sampler.make_schedule(ddim_num_steps=S, verbose=False)
    model.calls = 0
    out = plms_loop(sampler, x_T, cond)
    assert model.calls == S + 1  # the pseudo improved Euler start costs one call
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_p_sample_plms_returns_the_eps_of_the_step(model):
    sampler = PLMSSampler(model)
    sampler.make_schedule(10, verbose=False)
    x = torch.randn(SHAPE)
    t = torch.full((2,), int(sampler.ddim_timesteps[9]))
    history = [torch.randn(SHAPE) for _ in range(3)]
    before = [h.clone() for h in history]
    _, pred_x0, e_t = sampler.p_sample_plms(x, None, t, index=9, old_eps=history)
    torch.testing.assert_close(e_t, model.eps(x, t), atol=1e-5, rtol=1e-5)
    a = model.alphas_cumprod[t][:, None, None, None]
    e_prime = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24  # Liu et al. 2022, Eq. 12
    torch.testing.assert_close(pred_x0, (x - (1 - a).sqrt() * e_prime) / a.sqrt(), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(h, b) for h, b in zip(history, before))  # the caller's list is not touched


def test_single_steps_check_t_against_index(model):
    sampler = DDIMSampler(model)
    sampler.make_schedule(10, verbose=False)
    with pytest.raises(ValueError, match="not training step 901 of grid index 9"):
        sampler.p_sample_ddim(torch.randn(SHAPE), None, torch.full((2,), 900), index=9)
    with pytest.raises(ValueError, match="index must lie in"):
        sampler.p_sample_ddim(torch.randn(SHAPE), None, torch.full((2,), 900), index=10)


def test_sample_is_tolerant_of_extra_keywords(model):
    x_T = torch.randn(SHAPE)
    ref, _ = DDIMSampler(model).sample(5, SHAPE[0], SHAPE[1:], x_T=x_T, verbose=False)
    for cls in (DDIMSampler, PLMSSampler, DPMSolverSampler):
        with pytest.warns(UserWarning, match="dynamic_threshold, ucg_schedule not used"):
            out, _ = cls(model, device="cpu").sample(5, SHAPE[0], SHAPE[1:], x_T=x_T, verbose=False,
                                                     dynamic_threshold=None, ucg_schedule=None)
        assert out.shape == SHAPE
    with pytest.warns(UserWarning, match="dynamic_threshold"):
        out, _ = DDIMSampler(model).sample(5, SHAPE[0], SHAPE[1:], x_T=x_T, verbose=False, dynamic_threshold=None)
    assert torch.equal(out, ref)


def test_ddim_sampling_timesteps_argument_follows_the_original_rule(model):
    """``timesteps=k`` on the DDIM grid runs its first ``int(min(k / n, 1) * n) - 1`` steps, as the
    original ``ddim_sampling`` did (one fewer than asked); on the original steps, exactly k."""
    sampler = DDIMSampler(model)
    sampler.make_schedule(20, verbose=False)
    for k, runs in ((10, 9), (20, 19), (40, 19)):
        calls = []
        sampler.ddim_sampling(None, SHAPE, x_T=torch.randn(SHAPE), timesteps=k, callback=calls.append, verbose=False)
        assert len(calls) == runs
    calls = []
    sampler.ddim_sampling(None, SHAPE, x_T=torch.randn(SHAPE), ddim_use_original_steps=True, timesteps=7,
                          callback=calls.append, verbose=False)
    assert len(calls) == 7
