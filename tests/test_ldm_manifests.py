"""Every released LatentDiffusion config builds a model whose state dict has exactly the original
keys and shapes (tests/reference/state-dicts), so released checkpoints load with strict checking.

Models are built on the meta device: no memory for weights, seconds per model even at 1.5B params.
"""
import pytest
import torch
from omegaconf import OmegaConf

from tests.reference_data import all_manifests, load_config, state_dict_shapes

from ldm.util import instantiate_from_config

LDM_MANIFESTS = [(src, m) for src, m in all_manifests() if m["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"]


def test_all_latent_diffusion_manifests_are_covered():
    # 7 training configs, 11 released models, Stable Diffusion v1 (the retrieval-augmented config,
    # which has no manifest, is checked separately below)
    assert len(LDM_MANIFESTS) == 19


@pytest.mark.parametrize("source,manifest", LDM_MANIFESTS, ids=[s for s, _ in LDM_MANIFESTS])
def test_state_dict_matches_original(source, manifest, monkeypatch):
    monkeypatch.setenv("LDM_ALLOW_MISSING_CKPT", "1")  # first-stage ckpt_path files are not shipped
    config = load_config(source).model
    with torch.device("meta"), pytest.warns() if _has_ckpt_path(config) else _nullcontext():
        model = instantiate_from_config(config, path="model")
    ours, theirs = state_dict_shapes(model), manifest["state_dict"]
    assert sorted(set(theirs) - set(ours)) == [], "keys missing"
    assert sorted(set(ours) - set(theirs)) == [], "unexpected keys"
    assert {k: v for k, v in ours.items() if v != theirs[k]} == {}, "shape mismatch"
    # schedule constants stay real on a meta model: the non-persistent ones never come from a checkpoint
    assert model.betas.device.type == "cpu" and model.lvlb_weights.device.type == "cpu"
    assert model.num_timesteps == config.params.timesteps
    torch.testing.assert_close(model.alphas_cumprod, torch.cumprod(1 - model.betas.double(), 0).float())


def test_retrieval_augmented_config_builds(monkeypatch):
    """No manifest exists for it; its denoiser keys must equal those of the UNet it configures."""
    monkeypatch.setenv("LDM_ALLOW_MISSING_CKPT", "1")
    config = load_config("latent-diffusion/configs/retrieval-augmented-diffusion/768x768.yaml").model
    with torch.device("meta"):
        model = instantiate_from_config(config, path="model")
        unet = instantiate_from_config(config.params.unet_config)
    ours = state_dict_shapes(model)
    assert {k[len("model.diffusion_model."):]: v for k, v in ours.items()
            if k.startswith("model.diffusion_model.")} == state_dict_shapes(unet)
    assert not any(k.startswith("cond_stage_model.") for k in ours)  # torch.nn.Identity: no weights
    assert model.scale_factor == pytest.approx(0.22765929) and "scale_factor" not in ours
    assert model.model.conditioning_key == "crossattn"


def _has_ckpt_path(config) -> bool:
    return "ckpt_path" in OmegaConf.to_container(config.params.first_stage_config.get("params", {}))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
