"""Tiny UNets: shapes, the three conditioning routes, checkpointing, attention numerics."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldm.config.errors import ConfigError
from ldm.modules.attention import CrossAttention, LinearAttention, SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import (
    AttentionBlock,
    Downsample,
    QKVAttention,
    QKVAttentionLegacy,
    UNetModel,
    Upsample,
)
from ldm.modules.diffusionmodules.util import checkpoint, normalization, timestep_embedding
from ldm.util import instantiate_from_config
from tests.unet_helpers import randomize

TINY = dict(
    image_size=16, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
    attention_resolutions=[2], channel_mult=[1, 2], num_heads=2,
)
TINY_XATTN = dict(TINY, use_spatial_transformer=True, context_dim=16, legacy=False)


def inputs(batch=2, channels=4, size=16):
    return torch.randn(batch, channels, size, size), torch.tensor([3, 750][:batch])


# ---------------------------------------------------------------- shapes and conditioning


def test_output_shape_and_codebook_head():
    x, t = inputs()
    unet = randomize(UNetModel(**TINY))
    out = unet(x, t)
    assert out.shape == x.shape and out.abs().sum() > 0
    logits = UNetModel(**dict(TINY, n_embed=11))(x, t)
    assert logits.shape == (2, 11, 16, 16)


def test_concat_conditioning_changes_output():
    x, t = inputs()
    unet = randomize(UNetModel(**dict(TINY, in_channels=8))).eval()
    c1, c2 = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    o1, o2 = unet(torch.cat([x, c1], 1), t), unet(torch.cat([x, c2], 1), t)
    assert o1.shape == x.shape and not torch.allclose(o1, o2)


def test_crossattn_conditioning():
    x, t = inputs()
    unet = randomize(UNetModel(**dict(TINY_XATTN, transformer_depth=2))).eval()
    ctx = torch.randn(2, 7, 16)
    out = unet(x, t, context=ctx)
    assert out.shape == x.shape
    assert not torch.allclose(out, unet(x, t, context=torch.randn(2, 7, 16)))
    # The context length M is free; one context per transformer block is accepted.
    assert unet(x, t, context=torch.randn(2, 3, 16)).shape == x.shape
    torch.testing.assert_close(unet(x, t, context=[ctx, ctx]), out)
    with pytest.raises(ValueError, match="contexts"):
        unet(x, t, context=[ctx, ctx, ctx])


def test_class_label_conditioning():
    x, t = inputs()
    unet = randomize(UNetModel(**dict(TINY, num_classes=10))).eval()
    assert unet.label_emb.weight.shape == (10, 128)
    o1, o2 = unet(x, t, y=torch.tensor([1, 2])), unet(x, t, y=torch.tensor([5, 2]))
    assert not torch.allclose(o1[0], o2[0]) and torch.allclose(o1[1], o2[1])
    with pytest.raises(ValueError, match="class-conditional"):
        unet(x, t)
    with pytest.raises(ValueError, match="class-conditional"):
        UNetModel(**TINY)(x, t, y=torch.tensor([1, 2]))


def test_sequential_and_continuous_class_embeddings():
    x, t = inputs()
    seq = UNetModel(**dict(TINY, num_classes="sequential", adm_in_channels=6))
    assert {k: tuple(v.shape) for k, v in seq.state_dict().items() if k.startswith("label_emb")} == {
        "label_emb.0.0.weight": (128, 6), "label_emb.0.0.bias": (128,),
        "label_emb.0.2.weight": (128, 128), "label_emb.0.2.bias": (128,),
    }
    assert seq(x, t, y=torch.randn(2, 6)).shape == x.shape
    assert UNetModel(**dict(TINY, num_classes="continuous"))(x, t, y=torch.randn(2, 1)).shape == x.shape
    with pytest.raises(ValueError, match="adm_in_channels"):
        UNetModel(**dict(TINY, num_classes="sequential"))


def test_scale_shift_norm_and_resblock_updown():
    x, t = inputs()
    unet = randomize(UNetModel(**dict(TINY, use_scale_shift_norm=True, resblock_updown=True, num_res_blocks=[1, 2])))
    assert unet.input_blocks[1][0].emb_layers[1].out_features == 2 * 32
    assert "input_blocks.2.0.op.weight" not in unet.state_dict()  # resampling inside a ResBlock
    assert unet(x, t).shape == x.shape


def test_sd2_options():
    unet = UNetModel(**dict(
        TINY_XATTN, num_res_blocks=2, use_linear_in_transformer=True, num_attention_blocks=[1, 1],
        disable_self_attentions=[True, True], num_head_channels=16, num_heads=-1, attention_resolutions=[1, 2],
    ))
    sd = unet.state_dict()
    assert sd["input_blocks.1.1.proj_in.weight"].shape == (32, 32)  # linear, not 1x1 conv
    assert "input_blocks.2.1.norm.weight" not in sd  # second ResBlock of the level has no attention
    # attn1 reads the 16-wide context when self-attention is disabled; the middle keeps self-attention
    assert sd["input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"].shape == (32, 16)
    assert sd["middle_block.1.transformer_blocks.0.attn1.to_k.weight"].shape == (64, 64)
    x, t = inputs()
    assert randomize(unet)(x, t, context=torch.randn(2, 5, 16)).shape == x.shape


def test_invalid_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="context_dim"):
        UNetModel(**dict(TINY, use_spatial_transformer=True))
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNetModel(**dict(TINY, num_res_blocks=[1, 1, 1]))
    with pytest.raises(ValueError, match="num_attention_blocks"):
        UNetModel(**dict(TINY, num_attention_blocks=[2, 2]))
    cfg = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": dict(TINY, num_head=4)}
    with pytest.raises(ConfigError, match="num_head"):
        instantiate_from_config(cfg, path="model.params.unet_config")


def test_fp16_conversion_casts_convolutions_only():
    unet = UNetModel(**dict(TINY, use_fp16=True))
    unet.convert_to_fp16()
    assert unet.input_blocks[0][0].weight.dtype == torch.float16
    assert unet.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # GroupNorm stays float32
    assert unet.time_embed[0].weight.dtype == torch.float32 and unet.dtype == torch.float16
    unet.convert_to_fp32()
    assert unet.input_blocks[0][0].weight.dtype == torch.float32


def test_groupnorm32_computes_in_float32():
    norm = randomize(normalization(64))
    x = torch.randn(2, 64, 4, 4) * 300
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, norm(x.bfloat16().float()).bfloat16(), rtol=0, atol=0)


def test_resampling_layers():
    x = torch.randn(1, 8, 6, 6)
    assert Upsample(8, True, out_channels=4)(x).shape == (1, 4, 12, 12)
    assert Downsample(8, False)(x).shape == (1, 8, 3, 3)
    v = torch.randn(1, 8, 3, 6, 6)
    assert Upsample(8, False, dims=3)(v).shape == (1, 8, 3, 12, 12)
    assert Downsample(8, True, dims=3)(v).shape == (1, 8, 3, 3, 3)
    with pytest.raises(ValueError, match="use_conv"):
        Downsample(8, False, out_channels=4)


# ---------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("config", [TINY, dict(TINY_XATTN, use_scale_shift_norm=True)], ids=["attnblock", "xattn"])
def test_checkpointing_gives_same_outputs_and_gradients(config):
    plain = randomize(UNetModel(**config))
    ckpt = UNetModel(**dict(config, use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x, t = inputs()
    ctx = torch.randn(2, 5, 16) if "context_dim" in config else None
    results = []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda a: saved.append(a) or a, lambda a: a):
            out = model(xi, t, context=ctx)
        out.square().mean().backward()
        results.append((out.detach(), xi.grad, [p.grad for p in model.parameters()], len(saved)))
    (o1, gx1, gp1, n1), (o2, gx2, gp2, n2) = results
    torch.testing.assert_close(o2, o1, rtol=0, atol=0)
    torch.testing.assert_close(gx2, gx1, rtol=1e-5, atol=1e-6)
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert n2 < n1 / 2  # activations inside blocks are recomputed, not stored


def test_checkpoint_keeps_autocast_state():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = checkpoint(lin, (x,), lin.parameters(), True)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()  # recomputation under the same autocast state: dtypes match
    assert x.grad.dtype == torch.float32


# ---------------------------------------------------------------- attention numerics


def naive_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d)) V on (B, N, d) tensors, materialising the score matrix."""
    sim = torch.einsum("bid,bjd->bij", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        sim = sim.masked_fill(~mask[:, None, :], -torch.finfo(sim.dtype).max)
    return torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)


def test_cross_attention_matches_naive_softmax():
    attn = randomize(CrossAttention(query_dim=24, context_dim=10, heads=3, dim_head=8)).eval()
    x, ctx = torch.randn(2, 9, 24), torch.randn(2, 5, 10)
    mask = torch.tensor([[True] * 5, [True, True, False, True, False]])

    def split(t):  # (B, L, h*d) -> (B*h, L, d)
        return t.reshape(t.shape[0], t.shape[1], 3, 8).transpose(1, 2).reshape(-1, t.shape[1], 8)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(ctx)), split(attn.to_v(ctx))
    for m in (None, mask):
        ref = naive_attention(q, k, v, None if m is None else m.repeat_interleave(3, dim=0))
        ref = attn.to_out(ref.reshape(2, 3, 9, 8).transpose(1, 2).reshape(2, 9, 24))
        torch.testing.assert_close(attn(x, ctx, mask=m), ref, rtol=1e-5, atol=1e-5)
    # without a context it is self-attention
    self_attn = randomize(CrossAttention(query_dim=24, heads=3, dim_head=8))
    q, k, v = split(self_attn.to_q(x)), split(self_attn.to_k(x)), split(self_attn.to_v(x))
    ref = self_attn.to_out(naive_attention(q, k, v).reshape(2, 3, 9, 8).transpose(1, 2).reshape(2, 9, 24))
    torch.testing.assert_close(self_attn(x), ref, rtol=1e-5, atol=1e-5)


def legacy_reference(qkv, heads):
    """The original per-head layout: (N, H*3*C, T) split per head into q, k, v; q and k each
    scaled by C^-1/4."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(bs * heads, 3 * ch, length).split(ch, dim=1)
    scale = ch ** -0.25
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)


def new_order_reference(qkv, heads):
    """The q/k/v-major layout: (N, 3*H*C, T) chunked into q, k, v first, then split per head."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = (t.reshape(bs * heads, ch, length) for t in qkv.chunk(3, dim=1))
    w = torch.einsum("bct,bcs->bts", q, k).div(math.sqrt(ch)).softmax(dim=-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)


def test_qkv_attention_orderings():
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    legacy, new = QKVAttentionLegacy(4)(qkv), QKVAttention(4)(qkv)
    torch.testing.assert_close(legacy, legacy_reference(qkv, 4), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new, new_order_reference(qkv, 4), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(legacy, new, atol=1e-2)
    # With one head both layouts are [q | k | v] and agree.
    torch.testing.assert_close(QKVAttentionLegacy(1)(qkv), QKVAttention(1)(qkv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_matches_reference(new_order):
    block = randomize(AttentionBlock(64, num_head_channels=16, use_new_attention_order=new_order))
    assert block.num_heads == 4
    x = torch.randn(2, 64, 4, 5)
    flat = x.reshape(2, 64, 20)
    qkv = F.conv1d(block.norm(flat), block.qkv.weight, block.qkv.bias)
    ref = (new_order_reference if new_order else legacy_reference)(qkv, 4)
    ref = flat + F.conv1d(ref, block.proj_out.weight, block.proj_out.bias)
    torch.testing.assert_close(block(x), ref.reshape(2, 64, 4, 5), rtol=1e-5, atol=1e-5)


def test_spatial_transformer_is_identity_at_init_and_linear_matches_conv():
    st = SpatialTransformer(32, n_heads=2, d_head=8, context_dim=6)
    x, ctx = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 6)
    torch.testing.assert_close(st(x, ctx), x)  # zero-initialised proj_out
    randomize(st)
    lin = SpatialTransformer(32, n_heads=2, d_head=8, context_dim=6, use_linear=True)
    sd = {k: v.flatten(1) if k.startswith("proj_") and v.ndim == 4 else v for k, v in st.state_dict().items()}
    lin.load_state_dict(sd)
    torch.testing.assert_close(lin(x, ctx), st(x, ctx), rtol=1e-5, atol=1e-5)


def test_linear_attention_matches_formula():
    la = randomize(LinearAttention(16, heads=2, dim_head=4))
    x = torch.randn(2, 16, 3, 3)
    q, k, v = la.to_qkv(x).reshape(2, 3, 2, 4, 9).unbind(1)
    k = k.softmax(dim=-1)
    out = torch.stack([
        torch.stack([(k[b, h] @ v[b, h].T).T @ q[b, h] for h in range(2)]) for b in range(2)
    ])  # per head: (K V^T)^T Q, shape (d, N)
    torch.testing.assert_close(la(x), la.to_out(out.reshape(2, 8, 3, 3)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- timestep embedding


def test_timestep_embedding_values():
    t = torch.tensor([0, 1, 500])
    emb = timestep_embedding(t, 4)
    # half = 2 frequencies: 1 and 10000^(-1/2) = 0.01; layout [cos | sin]
    expected = torch.tensor([
        [1.0, 1.0, 0.0, 0.0],
        [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)],
        [math.cos(500), math.cos(5), math.sin(500), math.sin(5)],
    ])
    torch.testing.assert_close(emb, expected, rtol=0, atol=2e-5)
    odd = timestep_embedding(torch.tensor([2.5]), 5, max_period=100)
    # frequencies 1 and 100^(-1/2) = 0.1; odd width is zero-padded
    torch.testing.assert_close(
        odd, torch.tensor([[math.cos(2.5), math.cos(0.25), math.sin(2.5), math.sin(0.25), 0.0]]), rtol=0, atol=1e-6
    )
    assert torch.equal(timestep_embedding(torch.tensor([3, 7]), 3, repeat_only=True), torch.tensor([[3] * 3, [7] * 3]))


def test_schedules_resolve_under_original_util_path():
    from ldm.models.diffusion import schedule
    from ldm.modules.diffusionmodules.util import make_beta_schedule, make_ddim_timesteps

    assert make_beta_schedule is schedule.make_beta_schedule
    assert make_ddim_timesteps is schedule.make_ddim_timesteps
