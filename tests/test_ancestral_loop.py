"""The model's ancestral loops run the one ancestral sampler (``sampling.sample_ddpm``) and equal a
hand-written chain of the original single-step ``p_sample``."""
import pytest
import torch

from ldm.models.diffusion import ancestral
from ldm.models.diffusion.ddpm import DDPM

T = 20


def pixel_ddpm(**overrides):
    unet = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, num_res_blocks=1,
                           attention_resolutions=[], channel_mult=[1], num_heads=1)}
    model = DDPM(unet_config=unet, timesteps=T, image_size=8, channels=3, use_ema=False,
                 linear_start=0.0015, linear_end=0.0195, **overrides)
    with torch.no_grad():  # the output conv starts at zero; make the output depend on the input
        for p in model.model.diffusion_model.out.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("v_posterior", [0.0, 0.5])
@pytest.mark.parametrize("clip_denoised", [True, False])
def test_loop_equals_chain_of_p_sample(v_posterior, clip_denoised):
    model = pixel_ddpm(v_posterior=v_posterior, clip_denoised=clip_denoised)
    x_T = torch.randn(2, 3, 8, 8)
    torch.manual_seed(5)
    out, inter = ancestral.p_sample_loop(model, None, x_T.shape, x_T=x_T, verbose=False, log_every_t=5)
    torch.manual_seed(5)  # p_sample draws one N(0, I) per step, as the loop does before t = 0
    img = x_T
    with torch.no_grad():
        for t in reversed(range(T)):
            img = model.p_sample(img, torch.full((2,), t), clip_denoised=clip_denoised)
    torch.testing.assert_close(out, img, atol=1e-5, rtol=1e-5)
    assert len(inter) == 1 + 5  # x_T, then t = 19 (first), 15, 10, 5, 0
    torch.testing.assert_close(inter[-1], out)


def test_masked_loop_keeps_known_region_and_progressive_rows():
    model = pixel_ddpm()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1.0
    out, _ = ancestral.p_sample_loop(model, None, x0.shape, mask=mask, x0=x0, verbose=False)
    known = mask.expand_as(x0).bool()
    assert torch.equal(out[known], x0[known]) and not torch.equal(out[~known], x0[~known])
    seen = []
    _, rows = ancestral.p_sample_loop(model, None, x0.shape, progressive=True, verbose=False, log_every_t=10,
                                      callback=seen.append)
    assert seen == list(reversed(range(T))) and len(rows) == 3  # x̂_0 at t = 19, 10, 0
    assert all(r.abs().max() <= 1.0 for r in rows)  # clip_denoised: x̂_0 in [-1, 1]
