"""Training options of the diffusion models: the density of the training timesteps
(``timestep_sampling``, uniform as the paper or logit-normal as SD3), the AdamW options
(``optimizer_params``), the coarse x_0 term (``coarse_x0_loss``) and the contrastive term
(``contrastive_loss``)."""
import math

import pytest
import torch

import torch.nn.functional as F

from ldm.models.diffusion.coarse import CoarseX0Loss, make_coarse_x0_loss
from ldm.models.diffusion.contrastive import make_contrastive_loss
from ldm.models.diffusion.parameterization import model_output_to_x0
from ldm.models.diffusion.timesteps import TimestepSampler, make_timestep_sampler
from tests.test_ancestral_loop import pixel_ddpm


def test_uniform_is_the_papers_draw():
    # The same call as before the option existed: runs keep their seeds' timesteps.
    model = pixel_ddpm()
    torch.manual_seed(0)
    t = model.sample_timesteps(64)
    torch.manual_seed(0)
    torch.testing.assert_close(t, torch.randint(0, model.num_timesteps, (64,)).long(), rtol=0, atol=0)


def test_logit_normal_draw_is_the_floor_of_the_scaled_sigmoid():
    s = TimestepSampler(10, 20, "logit_normal", mean=0.5, std=2.0)
    torch.manual_seed(1)
    t = s(1000)
    torch.manual_seed(1)
    u = torch.sigmoid(0.5 + 2.0 * torch.randn(1000))
    expected = (10 + torch.floor(u * 10)).long().clamp(10, 19)
    torch.testing.assert_close(t, expected, rtol=0, atol=0)
    assert t.dtype == torch.long and int(t.min()) >= 10 and int(t.max()) <= 19


def test_probabilities_are_the_logit_normal_mass_of_each_bin():
    s = TimestepSampler(0, 4, "logit_normal", mean=0.0, std=1.0)
    p = s.probabilities()
    # bin k holds u in [k/4, (k+1)/4): P = Phi(logit((k+1)/4)) - Phi(logit(k/4))
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    logit = lambda u: math.log(u / (1 - u))  # noqa: E731
    expected = [phi(logit(0.25)), phi(logit(0.5)) - phi(logit(0.25)), phi(logit(0.75)) - phi(logit(0.5)),
                1 - phi(logit(0.75))]
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert p[1] == pytest.approx(p[2]) and p[0] == pytest.approx(p[3])  # symmetric about the middle at mean 0
    torch.testing.assert_close(TimestepSampler(3, 7).probabilities(), torch.full((4,), 0.25, dtype=torch.float64))


def test_draws_follow_the_stated_probabilities():
    s = TimestepSampler(0, 50, "logit_normal", mean=1.0, std=0.7)
    torch.manual_seed(2)
    freq = torch.bincount(s(200_000), minlength=50).double() / 200_000
    p = s.probabilities()
    assert float((freq - p).abs().max()) < 0.004
    assert float((p * torch.arange(50)).sum()) > 30  # mean > 0: the noisy end


def test_the_model_draws_from_its_config_within_its_expert_range():
    model = pixel_ddpm(timestep_range=[5, 15], timestep_sampling={"type": "logit_normal", "mean": -1.0})
    assert (model.timestep_sampler.lo, model.timestep_sampler.hi, model.timestep_sampler.kind) == (5, 15, "logit_normal")
    torch.manual_seed(3)
    t = model.sample_timesteps(4000)
    assert int(t.min()) >= 5 and int(t.max()) <= 14
    assert float(t.float().mean()) < 9.5  # mean < 0 leans to the clean end of [5, 15)


@pytest.mark.parametrize("config, match", [
    ({"type": "lognormal"}, "unknown; expected one of"),
    ({"type": "logit_normal", "std": 0}, "std > 0"),
    ({"type": "logit_normal", "mean": float("nan")}, "finite mean"),
    ({"type": "logit_normal", "scale": 1}, "unknown key"),
    ({"type": "uniform", "mean": 1.0}, "logit_normal only"),
    ("logit_normal", "must be a mapping"),
])
def test_bad_timestep_sampling_is_refused_with_its_path(config, match):
    with pytest.raises(ValueError, match=match) as info:
        pixel_ddpm(timestep_sampling=config)
    assert "model.params.timestep_sampling" in str(info.value)


def test_no_config_is_uniform_over_the_range():
    s = make_timestep_sampler(None, 2, 9)
    assert (s.kind, s.lo, s.hi) == ("uniform", 2, 9)


def test_optimizer_params_reach_adamw():
    model = pixel_ddpm(optimizer_params={"betas": [0.9, 0.99], "weight_decay": 0, "eps": 1e-6})
    model.learning_rate = 1e-3
    opt = model.configure_optimizers()
    opt = opt[0][0] if isinstance(opt, tuple | list) else opt
    group = opt.param_groups[0]
    assert (group["betas"], group["weight_decay"], group["eps"], group["lr"]) == ((0.9, 0.99), 0.0, 1e-6, 1e-3)


def test_no_optimizer_params_keep_torchs_defaults():
    model = pixel_ddpm()
    model.learning_rate = 2e-4
    opt = model.configure_optimizers()
    opt = opt[0][0] if isinstance(opt, tuple | list) else opt
    defaults = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    group = opt.param_groups[0]
    assert (group["betas"], group["weight_decay"], group["eps"]) == \
        (defaults["betas"], defaults["weight_decay"], defaults["eps"])


@pytest.mark.parametrize("options, match", [
    ({"beta": [0.9, 0.99]}, "unknown key"),
    ({"betas": [0.9]}, "two numbers in"),
    ({"betas": [0.9, 1.0]}, "two numbers in"),
    ({"betas": "0.9,0.99"}, "two numbers in"),
    ({"weight_decay": -0.1}, "weight_decay must be a number >= 0"),
    ({"eps": 0}, "eps must be a number > 0"),
    ({"eps": True}, "eps must be a number > 0"),
    ([0.9, 0.99], "must be a mapping"),
])
def test_bad_optimizer_params_are_refused_with_their_path(options, match):
    with pytest.raises(ValueError, match=match) as info:
        pixel_ddpm(optimizer_params=options)
    assert "model.params.optimizer_params" in str(info.value)


def test_coarse_term_is_the_error_of_the_cell_averages():
    g = torch.Generator().manual_seed(0)
    x0_pred, x0 = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    cells = lambda x: x.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5))  # noqa: E731  4x4 cells of an 8x8 latent
    expected = (cells(x0_pred) - cells(x0)).square().mean()
    torch.testing.assert_close(CoarseX0Loss(0.5, 4).term(x0_pred, x0), expected)
    torch.testing.assert_close(CoarseX0Loss(0.5, 1).term(x0_pred, x0), F.mse_loss(x0_pred, x0))  # pool 1: all of x_0
    ripple = 0.3 * torch.tensor([1.0, -1.0]).repeat(4)  # along the width: zero mean over every 2x2 cell
    assert float(CoarseX0Loss(0.5, 2).term(x0 + ripple, x0)) < 1e-12  # detail within a cell costs nothing


def _with_and_without(**options):
    """A model with ``options`` (the last keyword: the term under test) and one without it, the same
    weights, both training."""
    *shared, (key, value) = options.items()
    plain = pixel_ddpm(**dict(shared))
    model = pixel_ddpm(**dict(shared), **{key: value})
    model.load_state_dict(plain.state_dict())
    return plain.train(), model.train()


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_coarse_x0_loss_adds_its_weighted_term_to_the_training_loss(parameterization):
    plain, model = _with_and_without(parameterization=parameterization, coarse_x0_loss={"weight": 0.7, "pool": 4})
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, plain.num_timesteps - 1])
    base, _ = plain.p_losses(x0, t, noise=noise)
    loss, log = model.p_losses(x0, t, noise=noise)
    x_t = plain.q_sample(x0, t, noise)
    x0_pred = model_output_to_x0(plain, parameterization, x_t, t, plain.model(x_t, t))
    term = F.mse_loss(F.avg_pool2d(x0_pred, 4), F.avg_pool2d(x0, 4))
    torch.testing.assert_close(log["train/loss_coarse"], term.detach())
    torch.testing.assert_close(loss, base + 0.7 * term)
    assert log["train/loss"] is loss
    loss.backward()  # the term trains the denoiser
    assert model.model.diffusion_model.out[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("config, match", [
    ([1, 2], "model.params.coarse_x0_loss must be a mapping"),
    ({"weight": 1.0, "pool": 2, "scale": 3}, r"unknown keys \['scale'\]"),
    ({"weight": 0.0, "pool": 2}, r"coarse_x0_loss.weight must be a number > 0, got 0.0"),
    ({"weight": True, "pool": 2}, r"coarse_x0_loss.weight must be a number > 0"),
    ({"weight": 1.0, "pool": 3}, r"coarse_x0_loss.pool must be a whole number >= 1 dividing the latent side 8, got 3"),
    ({"weight": 1.0}, r"coarse_x0_loss.pool must be a whole number"),
])
def test_bad_coarse_x0_loss_is_refused_with_its_path(config, match):
    with pytest.raises(ValueError, match=match):
        make_coarse_x0_loss(config, 8)
    with pytest.raises(ValueError, match=match):
        pixel_ddpm(coarse_x0_loss=config)


def test_no_coarse_x0_loss_leaves_the_loss_as_the_paper():
    assert make_coarse_x0_loss(None, 8) is None and pixel_ddpm().coarse_x0 is None


def _v_target(model, x0, noise, t):
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * x0  # v = sqrt(a) eps - sqrt(1-a) x_0 (Salimans & Ho 2022)


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_contrastive_loss_subtracts_the_error_against_the_previous_samples_target(snr_gamma):
    plain, model = _with_and_without(parameterization="v", snr_gamma=snr_gamma, contrastive_loss={"weight": 0.05})
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([3, 10, plain.num_timesteps - 1])
    base, _ = plain.p_losses(x0, t, noise=noise)
    loss, log = model.p_losses(x0, t, noise=noise)
    out = plain.model(plain.q_sample(x0, t, noise), t)
    # sample i's negative is sample i-1's (x_0, eps) at sample i's own t: 0 <- 2, 1 <- 0, 2 <- 1
    prev = torch.tensor([2, 0, 1])
    per_sample = (out - _v_target(plain, x0[prev], noise[prev], t)).square().mean(dim=(1, 2, 3))
    if snr_gamma is not None:  # Min-SNR's v weights: min(SNR, gamma) / (SNR + 1)
        snr = plain.alphas_cumprod[t] / (1 - plain.alphas_cumprod[t])
        per_sample = per_sample * snr.clamp(max=snr_gamma) / (snr + 1)
    torch.testing.assert_close(log["train/loss_contrastive"], per_sample.mean().detach())
    torch.testing.assert_close(loss, base - 0.05 * per_sample.mean())
    assert log["train/loss"] is loss
    loss.backward()
    assert model.model.diffusion_model.out[-1].weight.grad.abs().sum() > 0


def test_contrastive_loss_needs_another_sample():
    plain, model = _with_and_without(parameterization="v", contrastive_loss={"weight": 0.5})
    x0, noise, t = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), torch.tensor([7])
    loss, log = model.p_losses(x0, t, noise=noise)
    torch.testing.assert_close(loss, plain.p_losses(x0, t, noise=noise)[0])  # a batch of one: its own target only
    assert "train/loss_contrastive" not in log


@pytest.mark.parametrize("config, match", [
    (0.05, "model.params.contrastive_loss must be a mapping"),
    ({"weight": 0.05, "negatives": 2}, r"unknown keys \['negatives'\]"),
    ({"weight": 1.0}, r"contrastive_loss.weight must be a number in \(0, 1\).*got 1.0"),
    ({"weight": 0}, r"contrastive_loss.weight must be a number in \(0, 1\)"),
    ({"weight": True}, r"contrastive_loss.weight must be a number in \(0, 1\)"),
    ({}, r"contrastive_loss.weight must be a number in \(0, 1\).*got None"),
])
def test_bad_contrastive_loss_is_refused_with_its_path(config, match):
    with pytest.raises(ValueError, match=match):
        make_contrastive_loss(config)
    with pytest.raises(ValueError, match=match):
        pixel_ddpm(contrastive_loss=config)


def test_no_contrastive_loss_leaves_the_loss_as_the_paper():
    assert make_contrastive_loss(None) is None and pixel_ddpm().contrastive is None


def test_unet_trainable_trains_only_the_named_blocks():
    model = pixel_ddpm(unet_trainable=["out.", "input_blocks.1."])
    unet = model.model.diffusion_model
    chosen = {n for n, p in unet.named_parameters() if n.startswith(("out.", "input_blocks.1."))}
    assert chosen and chosen != {n for n, _ in unet.named_parameters()}
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == chosen
    ids = {id(p) for p in model.trainable_parameters()}
    assert ids == {id(p) for n, p in unet.named_parameters() if n in chosen}
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    model.learning_rate = 0.1
    opt = model.configure_optimizers()  # no scheduler_config: the AdamW alone
    model.train()
    loss, _ = model.p_losses(torch.randn(2, 3, 8, 8), torch.tensor([5, 15]))
    loss.backward()
    opt.step()
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= chosen  # the frozen blocks kept their weights
    assert all(p.grad is None for n, p in unet.named_parameters() if n not in chosen)


def test_unet_trainable_by_default_is_the_whole_unet():
    model = pixel_ddpm()
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.model.parameters()}
    assert all(p.requires_grad for p in model.model.parameters())


@pytest.mark.parametrize("prefixes, match", [
    (["input_blocks.9."], r"model.params.unet_trainable: no UNet parameter starts with 'input_blocks.9.'"),
    ("out.", "must be a non-empty list of parameter-name prefixes"),
    ([], "must be a non-empty list"),
    (["out.", 3], "must be a non-empty list"),
])
def test_bad_unet_trainable_is_refused_with_its_path(prefixes, match):
    with pytest.raises(ValueError, match=match):
        pixel_ddpm(unet_trainable=prefixes)
