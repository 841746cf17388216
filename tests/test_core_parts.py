"""Composed model parts: the parameterisation table, typed options that fail at start-up with their
config path, the inpainting configs' learning rates and UNet sizes, split_input_params."""
import typing

import numpy as np
import pytest
import torch

from ldm.config.errors import ConfigError
from ldm.config.validate import check_config_tree
from ldm.models.diffusion import parameterization as P
from ldm.models.diffusion.schedule import make_beta_schedule, schedule_arrays
from ldm.models.diffusion.sampling import CompVisDenoiser
from tests.sampler_standins import AnalyticModel


class Buffers:
    def __init__(self, T=100):
        for k, v in schedule_arrays(make_beta_schedule("linear", T, 0.0015, 0.0195)).items():
            setattr(self, k, torch.tensor(v, dtype=torch.float64))


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_one_table_row_is_consistent(name):
    """Each row's four forms agree: the target of (x0, noise) maps back to x0 and eps, its
    sigma-space denoiser gives the same x0, and the VLB factor converts its error into an x0 error."""
    s, row = Buffers(), P.PREDICTIONS[name]
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                       dtype=torch.float64)
    t = torch.tensor([0, 40, 99])
    x_t = P.q_sample(s, x0, t, noise)
    out = row.target(s, x0, noise, t)
    torch.testing.assert_close(row.to_x0(s, x_t, t, out), x0)
    torch.testing.assert_close(row.to_eps(s, x_t, t, out), noise)
    sigma = ((1 - s.alphas_cumprod[t]) / s.alphas_cumprod[t]).sqrt().reshape(-1, 1, 1, 1)
    x_ve = x_t * (1 + sigma ** 2).sqrt()  # x0 + sigma * noise
    torch.testing.assert_close(row.denoised(x_ve, sigma, out), x0)
    # a unit error in the output moves x0 by sqrt(vlb_factor)
    ac = s.alphas_cumprod.numpy()
    shifted = row.to_x0(s, x_t, t, out + 1.0) - x0
    np.testing.assert_allclose(shifted.pow(2).flatten(1).mean(1).numpy(), row.vlb_factor(ac)[t.numpy()], rtol=1e-9)
    assert P.PARAMETERIZATIONS == typing.get_args(P.Parameterization) == ("eps", "x0", "v")


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_sampler_adapter_reads_the_table(name):
    model = AnalyticModel(parameterization=name)
    ref = CompVisDenoiser(AnalyticModel(parameterization="eps"))
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 3.0])
    torch.testing.assert_close(CompVisDenoiser(model)(x, sigma), ref(x, sigma), atol=1e-4, rtol=1e-4)


def ldm_config(**params):
    unet = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                       "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1]}}
    first = {"target": "ldm.models.autoencoder.IdentityFirstStage", "params": {}}
    base = {"unet_config": unet, "first_stage_config": first, "cond_stage_config": "__is_unconditional__"}
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {**base, **params}}}


@pytest.mark.parametrize("key, typo", [("parameterization", "epsilon"), ("loss_type", "mse"),
                                       ("beta_schedule", "scaled_linear"), ("conditioning_key", "cross_attn")])
def test_typed_options_fail_at_start_up_with_their_path(key, typo):
    check_config_tree(ldm_config())  # the base config is valid
    with pytest.raises(ConfigError) as err:
        check_config_tree(ldm_config(**{key: typo}))
    assert err.value.path == f"model.params.{key}" and repr(typo) in str(err.value)
