"""Our UNet against diffusers, an independent implementation: same weights -> same outputs.

Cross-attention UNets (SD-v1 layout, SD-2 linear projections, class labels) go through diffusers'
own LDM-checkpoint converter into ``UNet2DConditionModel``. Pixel-space-style LDM UNets
(``AttentionBlock`` with legacy fused qkv, as celebahq-ldm-vq-4) map onto ``UNet2DModel``, whose
attention has separate q/k/v projections; diffusers ships no converter for those in the library,
so the test splits the fused qkv itself following the legacy per-head layout.
"""
import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

from ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402
from tests.unet_helpers import randomize  # noqa: E402

SD_V1_TINY = dict(  # v1-inference.yaml with small widths
    image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 2], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=16, use_checkpoint=True, legacy=False,
)
SD_V2_TINY = dict(
    image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 2], num_head_channels=8, use_spatial_transformer=True,
    use_linear_in_transformer=True, transformer_depth=1, context_dim=16, legacy=False,
)
SD_CLASS_TINY = dict(SD_V1_TINY, num_classes=10, transformer_depth=2)


def diffusers_state_dict(ours: UNetModel, unet_params: dict) -> tuple[dict, dict]:
    original_config = {"model": {"params": {
        "unet_config": {"params": copy.deepcopy(unet_params)},
        "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
    }}}
    checkpoint = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    return config, convert_ldm_unet_checkpoint(checkpoint, config)


@pytest.mark.parametrize("params", [SD_V1_TINY, SD_V2_TINY, SD_CLASS_TINY], ids=["sd-v1", "sd-v2-linear", "class"])
def test_crossattn_unet_matches_diffusers(params):
    ours = randomize(UNetModel(**params)).eval()
    config, converted = diffusers_state_dict(ours, params)
    theirs = diffusers.UNet2DConditionModel(**config).eval()
    theirs.load_state_dict(converted, strict=True)
    assert len(converted) == len(ours.state_dict())

    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 980]), torch.randn(2, 7, 16)
    extra, their_extra = {}, {}
    if "num_classes" in params:
        extra["y"] = their_extra["class_labels"] = torch.tensor([3, 7])
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=ctx, **their_extra).sample
        got = ours(x, t, context=ctx, **extra)
    assert expected.abs().mean() > 1e-2  # random weights: a non-trivial function
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


LDM_TINY = dict(  # celebahq-ldm-vq-4 with small widths: AttentionBlock, num_head_channels
    image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[2],
    num_res_blocks=2, channel_mult=[1, 2], num_head_channels=16,
)


def legacy_qkv_to_diffusers(sd: dict, head_channels: int) -> dict:
    """Attention keys of AttentionBlock -> diffusers Attention. The fused 1x1-conv qkv is laid out
    per head as [head][q|k|v][channel]; diffusers wants q, k, v each laid out [head][channel]."""
    out = {}
    for key, value in sd.items():
        prefix, _, name = key.rpartition(".attentions.")
        if not prefix:
            out[key] = value
            continue
        idx, param = name.split(".", 1)
        base = f"{prefix}.attentions.{idx}."
        if param.startswith("norm."):
            out[base + "group_norm." + param[5:]] = value
        elif param.startswith("proj_out."):
            out[base + "to_out.0." + param[9:]] = value.squeeze(-1)
        elif param.startswith("qkv."):
            c = value.shape[0] // 3
            per_head = value.reshape(c // head_channels, 3, head_channels, *value.shape[1:])
            for j, name_ in enumerate(("to_q", "to_k", "to_v")):
                out[base + f"{name_}.{param[4:]}"] = per_head[:, j].reshape(c, -1).squeeze(-1)
        else:
            raise AssertionError(f"unexpected attention key {key}")
    return out


def test_ldm_attentionblock_unet_matches_diffusers_unet2d():
    ours = randomize(UNetModel(**LDM_TINY)).eval()
    layout = {"layers_per_block": 2}
    checkpoint = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    converted = legacy_qkv_to_diffusers(convert_ldm_unet_checkpoint(checkpoint, layout), head_channels=16)
    theirs = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
        downsample_padding=1,
    ).eval()
    theirs.load_state_dict(converted, strict=True)

    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 980])
    with torch.no_grad():
        expected = theirs(x, t).sample
        got = ours(x, t)
    assert expected.abs().mean() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    # The per-head layout matters: reading the fused qkv as q/k/v-major gives another function.
    swapped = UNetModel(**dict(LDM_TINY, use_new_attention_order=True)).eval()
    swapped.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert not torch.allclose(swapped(x, t), expected, atol=1e-3)
