"""Our first-stage models against independent implementations (diffusers, the lpips package).

Weights are converted from OUR state dict with diffusers' own LDM-checkpoint converter, so these
tests also prove that our keys mean what released LDM checkpoints mean.
"""
import warnings

import lpips as lpips_pkg
import pytest
import torch

from ldm.models.autoencoder import AutoencoderKL, VQModelInterface
from ldm.modules.losses.lpips import LPIPS
from ldm.modules.vqvae.quantize import VectorQuantizer2

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_vae_checkpoint,
    create_vae_diffusers_config_from_ldm,
)

IDENTITY = {"target": "torch.nn.Identity"}
# diffusers' VAE blocks put attention only in the mid block: attn_resolutions must stay empty.
DDCONFIG = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)
ATOL = 1e-4


def _perturb_norms(model: torch.nn.Module) -> None:
    """Fresh GroupNorms are the identity affine map; make them not, so the mapping is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def _diffusers_config(ddconfig: dict, sd: dict) -> dict:
    original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": ddconfig}}}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image_size deprecation notice
        return create_vae_diffusers_config_from_ldm(original, sd, image_size=ddconfig["resolution"],
                                                    scaling_factor=0.18215)


@torch.no_grad()
def test_autoencoder_kl_matches_diffusers():
    ours = AutoencoderKL(ddconfig=DDCONFIG, lossconfig=IDENTITY, embed_dim=4).eval()
    _perturb_norms(ours)
    sd = ours.state_dict()
    config = _diffusers_config(DDCONFIG, sd)
    theirs = diffusers.AutoencoderKL(**config).eval()
    theirs.load_state_dict(convert_ldm_vae_checkpoint(sd, config), strict=True)

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = ours.encode(x)
    reference = theirs.encode(x).latent_dist
    torch.testing.assert_close(posterior.mean, reference.mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(posterior.logvar, reference.logvar, atol=ATOL, rtol=0)
    assert posterior.mean.shape == (2, 4, 8, 8)

    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, atol=ATOL, rtol=0)


def _vq_pair(x: torch.Tensor, n_embed: int = 16):
    dd = {**DDCONFIG, "double_z": False}
    ours = VQModelInterface(ddconfig=dd, lossconfig=IDENTITY, n_embed=n_embed, embed_dim=4).eval()
    _perturb_norms(ours)
    with torch.no_grad():  # codebook drawn from the latents so that quantisation picks many entries
        h = ours.encode(x).permute(0, 2, 3, 1).reshape(-1, 4)
        picks = torch.randperm(h.shape[0])[:n_embed]
        ours.quantize.embedding.weight.copy_(h[picks] + 0.01 * torch.randn(n_embed, 4))
    sd = ours.state_dict()
    config = _diffusers_config(dd, sd)
    theirs = diffusers.VQModel(
        in_channels=3, out_channels=3, down_block_types=config["down_block_types"],
        up_block_types=config["up_block_types"], block_out_channels=config["block_out_channels"],
        layers_per_block=1, latent_channels=4, num_vq_embeddings=n_embed, vq_embed_dim=4,
        norm_num_groups=32, sample_size=16).eval()
    # diffusers has no VQ converter; the VAE one covers encoder/decoder/quant convs, the codebook
    # keeps its key (`quantize.embedding.weight`) in both layouts.
    converted = convert_ldm_vae_checkpoint(sd, config)
    converted["quantize.embedding.weight"] = sd["quantize.embedding.weight"]
    theirs.load_state_dict(converted, strict=True)
    return ours, theirs


@torch.no_grad()
def test_vq_model_matches_diffusers():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ours, theirs = _vq_pair(x)
    h = ours.encode(x)
    torch.testing.assert_close(h, theirs.encode(x).latents, atol=ATOL, rtol=0)

    out = theirs.decode(h)
    torch.testing.assert_close(ours.decode(h), out.sample, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.decode(h, force_not_quantize=True),
                               theirs.decode(h, force_not_quantize=True).sample, atol=ATOL, rtol=0)
    # codebook loss (legacy beta placement) and indices agree with diffusers' quantiser
    z_q, loss, (_, _, idx) = ours.quantize(h)
    ref_q, ref_loss, (_, _, ref_idx) = theirs.quantize(h)
    assert torch.equal(idx, ref_idx)
    assert len(torch.unique(idx)) > 3
    torch.testing.assert_close(z_q, ref_q, atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("legacy", [True, False])
def test_quantizer_loss_gradients_match_diffusers(legacy):
    from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVQ

    ours = VectorQuantizer2(12, 4, beta=0.25, legacy=legacy)
    theirs = DiffusersVQ(12, 4, beta=0.25, legacy=legacy)
    theirs.load_state_dict(ours.state_dict())
    z1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    z2 = z1.detach().clone().requires_grad_(True)
    q1, l1, _ = ours(z1)
    q2, l2, _ = theirs(z2)
    (q1.square().sum() + l1).backward()
    (q2.square().sum() + l2).backward()
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(z1.grad, z2.grad)
    torch.testing.assert_close(ours.embedding.weight.grad, theirs.embedding.weight.grad)


@torch.no_grad()
def test_lpips_matches_lpips_package():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = LPIPS(pretrained=False).eval()
        reference = lpips_pkg.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    # same (random) trunk in both; the linear heads come from the package's shipped weights in both
    reference.net.load_state_dict(ours.net.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    d = ours(x, y)
    assert d.shape == (2, 1, 1, 1)
    torch.testing.assert_close(d, reference(x, y), atol=1e-6, rtol=1e-5)
    assert torch.all(ours(x, x) == 0)
