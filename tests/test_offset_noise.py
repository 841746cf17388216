"""Offset noise (Guttenberg 2023): the training ε gets one extra N(0, offset²) value per sample and
channel, constant over the image; ``noise_offset: 0`` (the default) is the paper's N(0, I)."""
import pytest
import torch

from ldm.models.diffusion.losses import training_noise
from tests.test_ancestral_loop import pixel_ddpm


def test_zero_offset_is_the_papers_noise():
    x = torch.zeros(2, 3, 5, 5)
    torch.manual_seed(0)
    noise = training_noise(x)
    torch.manual_seed(0)
    torch.testing.assert_close(noise, torch.randn_like(x), rtol=0, atol=0)


def test_offset_adds_one_constant_per_sample_and_channel():
    x = torch.zeros(2, 3, 5, 7)
    torch.manual_seed(1)
    noise = training_noise(x, 0.3)
    torch.manual_seed(1)
    iid = torch.randn_like(x)
    per_channel = torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(noise, iid + 0.3 * per_channel, rtol=0, atol=0)  # constant over the image


def test_offset_raises_the_variance_of_the_channel_means():
    # Mean over H*W pixels: variance 1/(H*W) for N(0, I), plus offset^2 with the offset.
    x = torch.zeros(4000, 2, 8, 8)
    torch.manual_seed(2)
    plain = training_noise(x).mean(dim=(2, 3)).var().item()
    offset = training_noise(x, 0.5).mean(dim=(2, 3)).var().item()
    assert plain == pytest.approx(1 / 64, rel=0.05)
    assert offset == pytest.approx(1 / 64 + 0.25, rel=0.05)


def test_the_model_trains_on_it():
    model = pixel_ddpm(noise_offset=0.2)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([1, 7, 15])
    torch.manual_seed(3)
    loss_default, _ = model.p_losses(x, t)
    torch.manual_seed(3)
    loss_explicit, _ = model.p_losses(x, t, training_noise(x, 0.2))
    torch.manual_seed(3)
    loss_plain, _ = model.p_losses(x, t, torch.randn_like(x))
    torch.testing.assert_close(loss_default, loss_explicit, rtol=0, atol=0)
    assert loss_default != loss_plain


@pytest.mark.parametrize("offset", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_offset_is_refused(offset):
    with pytest.raises(ValueError, match="noise_offset must be a number >= 0"):
        pixel_ddpm(noise_offset=offset)
