"""Every original LatentDiffusion config builds a UNet whose state dict has exactly the keys and
shapes of the released checkpoints (``model.diffusion_model.*``)."""
import pytest
import torch

from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.util import instantiate_from_config
from tests.reference_data import all_manifests, load_config, state_dict_shapes

PREFIX = "model.diffusion_model."
LDM_MANIFESTS = [(src, m) for src, m in all_manifests() if m["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"]


def test_all_latent_diffusion_manifests_are_covered():
    # 7 latent-diffusion/configs, 11 released latent-diffusion/models, Stable Diffusion v1.
    assert len(LDM_MANIFESTS) == 19


@pytest.mark.parametrize("source,manifest", LDM_MANIFESTS, ids=[src for src, _ in LDM_MANIFESTS])
def test_unet_state_dict_matches_original(source, manifest):
    unet_config = load_config(source).model.params.unet_config
    assert unet_config.target == "ldm.modules.diffusionmodules.openaimodel.UNetModel"
    # Meta tensors: full-size UNets (up to ~870M parameters) without allocating their weights.
    with torch.device("meta"):
        unet = instantiate_from_config(unet_config, path="model.params.unet_config")
    assert isinstance(unet, UNetModel)
    expected = {k[len(PREFIX):]: v for k, v in manifest["state_dict"].items() if k.startswith(PREFIX)}
    got = state_dict_shapes(unet)
    assert sorted(got) == sorted(expected), (
        f"missing {sorted(set(expected) - set(got))[:5]}, unexpected {sorted(set(got) - set(expected))[:5]}"
    )
    mismatched = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
    assert not mismatched
    # The manifest lists buffers too; the UNet has none, so parameters account for every entry.
    assert sum(p.numel() for p in unet.parameters()) == sum(
        torch.Size(s).numel() for s in expected.values()
    )
