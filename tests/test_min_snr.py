"""Min-SNR-γ timestep weighting (Hang et al. 2023): the weights equal diffusers' training recipe
(``compute_snr`` then min(SNR, γ) / SNR for ε, / (SNR + 1) for v), and a model trained with
``snr_gamma`` computes exactly that weighted loss."""
import numpy as np
import pytest
import torch

from ldm.models.diffusion.losses import DiffusionLoss, min_snr_weights
from tests.test_ancestral_loop import pixel_ddpm


def test_weights_equal_the_diffusers_training_recipe():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.training_utils import compute_snr

    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear")
    t = torch.arange(1000)
    snr = compute_snr(sched, t).double()
    ac = sched.alphas_cumprod.double().numpy()
    clipped = torch.clamp(snr, max=5.0)
    torch.testing.assert_close(min_snr_weights(ac, "eps", 5.0).double(), clipped / snr, rtol=1e-5, atol=0)
    torch.testing.assert_close(min_snr_weights(ac, "v", 5.0).double(), clipped / (snr + 1), rtol=1e-5, atol=0)
    torch.testing.assert_close(min_snr_weights(ac, "x0", 5.0).double(), clipped, rtol=1e-5, atol=0)


def test_weights_only_lower_the_nearly_clean_timesteps():
    ac = np.linspace(0.999, 0.001, 50)
    w = min_snr_weights(ac, "eps", 5.0).numpy()
    snr = ac / (1 - ac)
    assert (w[snr <= 5] == 1).all()  # noisy timesteps keep the paper's weight
    np.testing.assert_allclose(w[snr > 5], 5 / snr[snr > 5], rtol=1e-6)
    assert w[0] < 0.01


@pytest.mark.parametrize("gamma", [0, -1.0, float("inf"), float("nan"), True, "5"])
def test_bad_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="snr_gamma must be a positive number"):
        min_snr_weights(np.array([0.9, 0.5]), "eps", gamma)
    with pytest.raises(ValueError, match="snr_gamma must be a positive number"):
        pixel_ddpm(snr_gamma=gamma)


def test_loss_weights_each_sample_by_its_timestep():
    pred, target = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 2, 3])
    w = torch.tensor([0.1, 0.2, 0.5, 1.0])
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    logvar, lvlb = torch.zeros(4), torch.ones(4)
    loss, logs = DiffusionLoss("l2")(pred, target, t, logvar, lvlb, timestep_weights=w)
    torch.testing.assert_close(loss, (w[t] * per).mean())
    torch.testing.assert_close(logs["train/loss_simple"], per.mean())  # logged unweighted


def test_model_trains_on_the_weighted_loss():
    plain, weighted = pixel_ddpm(), pixel_ddpm(snr_gamma=1.0)
    weighted.load_state_dict(plain.state_dict())
    assert plain.snr_weights is None and "snr_weights" not in weighted.state_dict()  # not in checkpoints
    x, noise, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 5, 10, 19])
    with torch.no_grad():
        eps = plain.apply_model(plain.q_sample(x, t, noise), t)
        per = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
        loss_plain, _ = plain.p_losses(x, t, noise)
        loss_weighted, _ = weighted.p_losses(x, t, noise)
    ac = weighted.alphas_cumprod.double()
    snr = ac / (1 - ac)
    w = (torch.clamp(snr, max=1.0) / snr).float()
    torch.testing.assert_close(loss_plain, per.mean())
    torch.testing.assert_close(loss_weighted, (w[t] * per).mean())
    assert loss_weighted < loss_plain


def test_latent_diffusion_takes_it_from_the_config():
    from pathlib import Path

    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    config = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "demo" / "ldm_class.yaml")
    model = instantiate_from_config(config.model)
    expected = min_snr_weights(model.alphas_cumprod.double().numpy(), "v", 5.0)
    assert model.snr_gamma == 5.0 and model.parameterization == "v"
    torch.testing.assert_close(model.snr_weights, expected)


def test_floor_raises_the_noisiest_weights_only():
    ac = np.linspace(0.999, 0.001, 50)
    snr = ac / (1 - ac)
    x0 = min_snr_weights(ac, "x0", 5.0, floor=0.1).numpy()
    np.testing.assert_allclose(x0, np.maximum(np.minimum(snr, 5.0), 0.1), rtol=1e-6)
    assert x0.min() == pytest.approx(0.1) and (snr < 0.1).any()
    eps = min_snr_weights(ac, "eps", 5.0, floor=0.1).numpy()
    np.testing.assert_allclose(eps, np.maximum(np.minimum(snr, 5.0), 0.1) / snr, rtol=1e-5)
    assert (eps[snr < 0.1] > 1).all()  # the ε loss of the noisiest timesteps is weighted up
    # no upper clip without γ: SNR itself on x_0, i.e. the ε loss with a floor
    np.testing.assert_allclose(min_snr_weights(ac, "eps", None, floor=0.1).numpy(),
                               np.maximum(1.0, 0.1 / snr), rtol=1e-5)


@pytest.mark.parametrize("floor, gamma, message", [
    (0, 5.0, "snr_floor must be a positive number"), (float("nan"), 5.0, "snr_floor must be a positive number"),
    (True, 5.0, "snr_floor must be a positive number"), (5.0, 5.0, "snr_floor \\(5.0\\) must be below snr_gamma"),
    (None, None, "needs snr_gamma, snr_floor or both")])
def test_bad_floor_is_refused(floor, gamma, message):
    with pytest.raises(ValueError, match=message):
        min_snr_weights(np.array([0.9, 0.5]), "x0", gamma, floor=floor)
    if gamma is not None or floor is not None:
        with pytest.raises(ValueError, match=message):
            pixel_ddpm(snr_gamma=gamma, snr_floor=floor)


def test_model_trains_on_the_floored_weights():
    plain, weighted = pixel_ddpm(parameterization="x0"), pixel_ddpm(parameterization="x0", snr_gamma=5.0,
                                                                    snr_floor=0.5)
    weighted.load_state_dict(plain.state_dict())
    x, noise, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 5, 10, 19])
    with torch.no_grad():
        per = ((plain.apply_model(plain.q_sample(x, t, noise), t) - x) ** 2).mean(dim=(1, 2, 3))
        loss, _ = weighted.p_losses(x, t, noise)
    ac = weighted.alphas_cumprod.double()
    w = torch.clamp(ac / (1 - ac), min=0.5, max=5.0).float()
    torch.testing.assert_close(loss, (w[t] * per).mean())
