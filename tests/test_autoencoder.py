"""First-stage models on tiny shapes: maths of the parts, losses, training, checkpoint I/O."""
import math
import os
import pickle
import urllib.error
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ldm import checkpoint as ckpt_io
from ldm.config.errors import ConfigError
from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage, VQModel, VQModelInterface
from ldm.modules.diffusionmodules.model import AttnBlock, make_attn
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution, normal_kl
from ldm.modules.ema import LitEma
from ldm.modules.losses import DummyLoss, LPIPSWithDiscriminator, VQLPIPSWithDiscriminator
from ldm.modules.losses.lpips import LPIPS, VGG16_FILENAME
from ldm.modules.losses.vqperceptual import adopt_weight, hinge_d_loss, measure_perplexity, vanilla_d_loss
from ldm.modules.vqvae.quantize import VectorQuantizer2

KL_DD = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
             num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
VQ_DD = {**KL_DD, "double_z": False}
IDENTITY = {"target": "torch.nn.Identity"}
QUIET_LPIPS = pytest.mark.filterwarnings("ignore:LPIPS built with pretrained=False")


def kl_loss_config(**overrides):
    params = dict(disc_start=5, kl_weight=1e-6, disc_weight=0.5, disc_num_layers=1, perceptual_weight=0.0)
    return {"target": "ldm.modules.losses.LPIPSWithDiscriminator", "params": {**params, **overrides}}


def vq_loss_config(**overrides):
    params = dict(disc_start=5, disc_weight=0.75, disc_num_layers=1, perceptual_weight=0.0, codebook_weight=1.0)
    return {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", "params": {**params, **overrides}}


def coloured_blocks(n: int, size: int = 16, cell: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, size, size, 3) images in [-1, 1]: a grid of cell x cell blocks of random colours."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(n, 3, size // cell, size // cell, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(colours, scale_factor=cell, mode="nearest").permute(0, 2, 3, 1)


# -- architecture ------------------------------------------------------------------------------------
def test_kl_encode_decode_shapes():
    model = AutoencoderKL(ddconfig=KL_DD, lossconfig=IDENTITY, embed_dim=3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = model.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 3, 8, 8)
    assert model.decode(posterior.sample()).shape == (2, 3, 16, 16)
    xrec, post = model(x, sample_posterior=False)
    assert xrec.shape == x.shape and torch.equal(post.mode(), post.mean)
    assert torch.equal(xrec, model.decode(post.mean))


def test_vq_encode_decode_shapes_and_interface():
    torch.manual_seed(0)
    model = VQModel(ddconfig=VQ_DD, lossconfig=IDENTITY, n_embed=32, embed_dim=4, sane_index_shape=True).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    quant, emb_loss, (perplexity, min_encodings, ind) = model.encode(x)
    assert quant.shape == (2, 4, 8, 8) and emb_loss.ndim == 0 and ind.shape == (2, 8, 8)
    assert perplexity is None and min_encodings is None
    xrec, diff = model(x)
    assert xrec.shape == x.shape and torch.equal(diff, emb_loss)
    # equal up to the rounding of the straight-through sum z + (e - z)
    torch.testing.assert_close(model.decode_code(ind), model.decode(quant), atol=1e-5, rtol=1e-5)

    iface = VQModelInterface(ddconfig=VQ_DD, lossconfig=IDENTITY, n_embed=32, embed_dim=4).eval()
    iface.load_state_dict(model.state_dict())
    h = iface.encode(x)
    assert torch.equal(h, model.encode_to_prequant(x))
    assert torch.equal(iface.decode(h), model.decode(quant))
    assert not torch.equal(iface.decode(h, force_not_quantize=True), iface.decode(h))
    assert iface.embed_dim == 4


def test_attention_variants_and_errors():
    assert isinstance(make_attn(32, "vanilla"), AttnBlock)
    assert isinstance(make_attn(32, "none"), nn.Identity)
    with pytest.raises(ValueError, match="attn_type='bogus'"):
        make_attn(32, "bogus")
    keys = set(AttnBlock(32).state_dict())
    assert keys == {f"{m}.{p}" for m in ("norm", "q", "k", "v", "proj_out") for p in ("weight", "bias")}
    model = AutoencoderKL(ddconfig={**KL_DD, "attn_type": "none"}, lossconfig=IDENTITY, embed_dim=4)
    assert not any(".attn" in k for k in model.state_dict())


def test_attention_block_matches_explicit_softmax():
    block = AttnBlock(32)
    x = torch.randn(2, 32, 4, 4)
    h = block.norm(x)
    q, k, v = (f(h).flatten(2) for f in (block.q, block.k, block.v))  # (B, C, N)
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)   # (B, N, N)
    expected = x + block.proj_out((v @ w.transpose(1, 2)).reshape(2, 32, 4, 4))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_bad_ddconfig_key_names_its_path():
    with pytest.raises(ConfigError, match=r"ddconfig\.num_res_block"):
        AutoencoderKL(ddconfig={**KL_DD, "num_res_block": 2}, lossconfig=IDENTITY, embed_dim=4)
    with pytest.raises(ConfigError, match="double_z"):
        AutoencoderKL(ddconfig=VQ_DD, lossconfig=IDENTITY, embed_dim=4)


def test_identity_first_stage():
    x = torch.randn(2, 3, 4, 4)
    stage = IdentityFirstStage(vq_interface=True)
    assert stage.encode(x) is x and stage.decode(x) is x and stage(x) is x
    assert stage.quantize(x) == (x, None, [None, None, None])


# -- distributions -----------------------------------------------------------------------------------
def test_diagonal_gaussian_kl_closed_form_and_monte_carlo():
    mean, logvar = torch.randn(2, 3, 2, 2) * 0.5, torch.randn(2, 3, 2, 2) * 0.3
    post = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
    expected = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    torch.testing.assert_close(post.kl(), expected)
    torch.testing.assert_close(post.kl(), normal_kl(mean, logvar, 0.0, 0.0).sum(dim=(1, 2, 3)))
    # Monte Carlo: KL = E_q[log q(z) - log p(z)]
    z = mean + logvar.mul(0.5).exp() * torch.randn(20000, *mean.shape)
    log_q = torch.distributions.Normal(mean, logvar.mul(0.5).exp()).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    mc = (log_q - log_p).sum(dim=(2, 3, 4)).mean(0)
    torch.testing.assert_close(mc, expected, atol=0.1, rtol=0.03)

    other = DiagonalGaussianDistribution(torch.randn(2, 6, 2, 2))
    torch.testing.assert_close(post.kl(other),
                               normal_kl(mean, logvar, other.mean, other.logvar).sum(dim=(1, 2, 3)))
    sample = torch.randn_like(mean)
    nll = -torch.distributions.Normal(mean, post.std).log_prob(sample).sum(dim=(1, 2, 3))
    torch.testing.assert_close(post.nll(sample), nll)


def test_diagonal_gaussian_deterministic_and_clamp():
    params = torch.cat([torch.ones(1, 2, 2, 2), torch.full((1, 2, 2, 2), 100.0)], 1)
    post = DiagonalGaussianDistribution(params)
    assert torch.all(post.logvar == 20.0)
    det = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(det.sample(), det.mean) and torch.equal(det.kl(), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="even channel"):
        DiagonalGaussianDistribution(torch.randn(1, 3, 2, 2))


# -- vector quantiser --------------------------------------------------------------------------------
def test_vq_nearest_entry_and_straight_through_gradient():
    vq = VectorQuantizer2(n_e=10, e_dim=4, beta=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, loss, (_, _, idx) = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(idx, torch.cdist(flat, vq.embedding.weight).argmin(1))
    torch.testing.assert_close(z_q.detach(), vq.embedding.weight[idx].reshape(2, 3, 3, 4).permute(0, 3, 1, 2))
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward()
    assert torch.equal(z.grad, w)  # straight-through: dz_q/dz = identity


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_loss_beta_placement(legacy):
    """legacy=True: beta on the codebook term; legacy=False: beta on the commitment term."""
    beta = 0.25
    vq = VectorQuantizer2(n_e=10, e_dim=4, beta=beta, legacy=legacy)
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    _, loss, (_, _, idx) = vq(z)
    e = vq.embedding.weight[idx].detach().reshape(1, 2, 2, 4).permute(0, 3, 1, 2)
    mse = ((e - z.detach()) ** 2).mean()
    torch.testing.assert_close(loss, (1 + beta) * mse)
    loss.backward()
    commitment_weight = 1.0 if legacy else beta
    torch.testing.assert_close(z.grad, commitment_weight * 2 * (z.detach() - e) / z.numel())


def test_vq_remap_round_trip(tmp_path):
    used = np.array([3, 7, 1, 9])
    np.save(tmp_path / "used.npy", used)
    vq = VectorQuantizer2(n_e=12, e_dim=4, beta=0.25, remap=str(tmp_path / "used.npy"), unknown_index="extra")
    assert "used" in vq.state_dict() and "used" not in VectorQuantizer2(12, 4, 0.25).state_dict()
    full = torch.tensor([[3, 7, 1, 9, 9, 3]])
    reduced = vq.remap_to_used(full)
    assert reduced.tolist() == [[0, 1, 2, 3, 3, 0]]
    assert torch.equal(vq.unmap_to_all(reduced), full)
    assert vq.remap_to_used(torch.tensor([[5, 7]])).tolist() == [[4, 1]]  # 5 unknown -> extra index 4
    with torch.no_grad():
        vq.embedding.weight[used] += 10.0  # make the used entries the nearest ones
    z = vq.embedding.weight[used][torch.tensor([0, 2, 1, 3])].reshape(1, 2, 2, 4).permute(0, 3, 1, 2)
    z_q, _, (_, _, idx) = vq(z)
    assert idx.reshape(-1).tolist() == [0, 2, 1, 3]
    torch.testing.assert_close(vq.get_codebook_entry(idx.reshape(1, -1), shape=(1, 2, 2, 4)), z_q)
    plain = VectorQuantizer2(n_e=12, e_dim=4, beta=0.25)
    grid = torch.tensor([[[1, 2], [3, 4]]])
    assert torch.equal(plain.get_codebook_entry(grid, shape=None), plain.embedding.weight[grid])  # (1, 2, 2, 4)


# -- EMA ---------------------------------------------------------------------------------------------
def test_litema_update_is_exact():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    ema = LitEma(model, decay=0.9)
    assert set(ema.state_dict()) == {"decay", "num_updates", "0weight", "0bias", "1weight"}
    shadow = {k: v.clone() for k, v in ema.state_dict().items()}
    for n in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema(model)
        d = min(torch.tensor(0.9), torch.tensor((1 + n) / (10 + n), dtype=torch.float32))
        for name, p in model.named_parameters():
            if p.requires_grad:
                key = name.replace(".", "")
                shadow[key] = shadow[key] - (1.0 - d) * (shadow[key] - p.detach())
                assert torch.equal(getattr(ema, key), shadow[key])
        assert int(ema.num_updates) == n
    raw = [p.detach().clone() for p in model.parameters()]
    ema.store(model.parameters())
    ema.copy_to(model)
    assert torch.equal(model[0].weight, ema.get_buffer("0weight"))
    ema.restore(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(raw, model.parameters()))
    fixed = LitEma(model, decay=0.5, use_num_upates=False)
    before = fixed.get_buffer("0weight").clone()
    ema_target = model[0].weight.detach()
    fixed(model)
    assert torch.equal(fixed.get_buffer("0weight"), before - 0.5 * (before - ema_target))


# -- losses ------------------------------------------------------------------------------------------
def test_gan_loss_helpers():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert hinge_d_loss(real, fake) == 0.5 * (0.25 + 0.75)
    torch.testing.assert_close(vanilla_d_loss(real, fake),
                               0.5 * (-torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()))
    assert adopt_weight(1.0, 4, threshold=5) == 0.0 and adopt_weight(1.0, 5, threshold=5) == 1.0
    perplexity, usage = measure_perplexity(torch.tensor([0, 0, 1, 2]), 8)
    torch.testing.assert_close(perplexity, torch.tensor(math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))))
    assert usage == 3
    assert measure_perplexity(torch.arange(8), 8)[0].item() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="n_embed=4"):
        measure_perplexity(torch.tensor([5]), 4)


def _adaptive_weight_formula(nll, g_loss, last_layer, disc_weight):
    a = torch.autograd.grad(nll, last_layer, retain_graph=True)[0].norm()
    b = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0].norm()
    return (a / (b + 1e-4)).clamp(0, 1e4) * disc_weight


@QUIET_LPIPS
def test_kl_loss_adaptive_weight_and_disc_switch():
    model = AutoencoderKL(ddconfig=KL_DD, lossconfig=kl_loss_config(perceptual_weight=1.0, lpips_pretrained=False),
                          embed_dim=4)
    loss = model.loss
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    xrec, posterior = model(x)
    last = model.get_last_layer()
    before, log_before = loss(x, xrec, posterior, 0, 4, last_layer=last)
    after, log_after = loss(x, xrec, posterior, 0, 5, last_layer=last)
    assert torch.isfinite(before) and torch.isfinite(after)
    assert log_before["train/disc_factor"] == 0 and log_before["train/d_weight"] == 0
    assert log_after["train/disc_factor"] == 1.0

    # the logged weight is VQGAN Eq. 7 on the unweighted NLL
    rec = (x - xrec).abs() + loss.perceptual_loss(x, xrec)
    nll = (rec / loss.logvar.exp() + loss.logvar).sum() / 2
    g_loss = -loss.discriminator(xrec).mean()
    expected = _adaptive_weight_formula(nll, g_loss, last, 0.5)
    torch.testing.assert_close(log_after["train/d_weight"], expected)
    kl = posterior.kl().sum() / 2
    torch.testing.assert_close(after, nll + 1e-6 * kl + expected * g_loss)

    d_before, _ = loss(x, xrec, posterior, 1, 4)
    d_after, log_d = loss(x, xrec, posterior, 1, 5)
    assert d_before == 0 and d_after > 0 and set(log_d) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}
    with pytest.raises(ValueError, match="optimizer_idx"):
        loss(x, xrec, posterior, 2, 5)


def test_kl_loss_pixel_loss_l2():
    torch.manual_seed(0)
    loss = LPIPSWithDiscriminator(**kl_loss_config(pixel_loss="l2", logvar_init=0.5)["params"])
    x, xrec = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = DiagonalGaussianDistribution(torch.randn(2, 6, 8, 8))
    total, log = loss(x, xrec, posterior, 0, 0, split="val")  # before disc_start: NLL + KL only
    nll = ((x - xrec) ** 2 / math.exp(0.5) + 0.5).sum() / 2
    torch.testing.assert_close(total, nll + 1e-6 * posterior.kl().sum() / 2)
    torch.testing.assert_close(log["val/rec_loss"], ((x - xrec) ** 2).mean())
    with pytest.raises(ValueError, match="pixel_loss='l3' is not supported; choose 'l1' or 'l2'"):
        LPIPSWithDiscriminator(**kl_loss_config(pixel_loss="l3")["params"])


def test_vq_loss_finite_weight_and_perplexity():
    model = VQModel(ddconfig=VQ_DD, lossconfig=vq_loss_config(pixel_loss="l2"), n_embed=16, embed_dim=4)
    assert model.loss.n_classes == 16
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    xrec, qloss, ind = model(x, return_pred_indices=True)
    last = model.get_last_layer()
    total, log = model.loss(qloss, x, xrec, 0, 7, last_layer=last, split="val", predicted_indices=ind)
    assert torch.isfinite(total)
    nll = ((x - xrec) ** 2).mean()
    g_loss = -model.loss.discriminator(xrec).mean()
    expected = _adaptive_weight_formula(nll, g_loss, last, 0.75)
    torch.testing.assert_close(log["val/d_weight"], expected)
    torch.testing.assert_close(total, nll + expected * g_loss + qloss)
    perplexity, usage = measure_perplexity(ind, 16)
    assert log["val/perplexity"] == perplexity and log["val/cluster_usage"] == usage
    assert 1.0 <= perplexity <= 16.0
    _, log0 = model.loss(qloss, x, xrec, 0, 4, last_layer=last)
    assert log0["train/disc_factor"] == 0 and log0["train/d_weight"] == 0


def test_loss_without_gradients_in_eval_mode_gives_zero_weight():
    model = AutoencoderKL(ddconfig=KL_DD, lossconfig=kl_loss_config(), embed_dim=4).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        xrec, posterior = model(x)
        _, log = model.loss(x, xrec, posterior, 0, 100, last_layer=model.get_last_layer(), split="val")
    assert log["val/d_weight"] == 0 and log["val/disc_factor"] == 1.0


def test_dummy_loss_model_encodes_but_cannot_train():
    model = VQModelInterface(ddconfig=VQ_DD, lossconfig={"target": "ldm.modules.losses.contperceptual.DummyLoss"},
                             n_embed=8, embed_dim=4)
    assert isinstance(model.loss, DummyLoss) and not list(model.loss.state_dict())
    assert model.decode(model.encode(torch.zeros(1, 3, 16, 16))).shape == (1, 3, 16, 16)
    model.learning_rate = 1e-4
    with pytest.raises(RuntimeError, match="inference config"):
        model.configure_optimizers()


# -- training ----------------------------------------------------------------------------------------
class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def _fit(model, images, batches, batch_size=4, accumulate=1):
    model.learning_rate = 1e-3
    model.accumulate_grad_batches = accumulate
    loader = torch.utils.data.DataLoader(_Images(images), batch_size=batch_size, shuffle=True)
    trainer = pl.Trainer(max_steps=2 * batches // accumulate, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "few workers" / "small dataset" notices
        trainer.fit(model, loader)
    return trainer


@torch.no_grad()
def _rec_error(model, images):
    model.eval()
    x = model.get_input({"image": images}, "image")
    xrec = model.decode(model.encode(x).mode()) if isinstance(model, AutoencoderKL) else model(x)[0]
    return (x - xrec).abs().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_training_lowers_reconstruction_error(kind):
    images = coloured_blocks(16)
    if kind == "kl":
        model = AutoencoderKL(ddconfig=KL_DD, lossconfig=kl_loss_config(disc_start=30), embed_dim=4,
                              monitor="val/rec_loss")
    else:
        # from scratch, a codebook needs longer than this test before the GAN term helps
        model = VQModel(ddconfig=VQ_DD, lossconfig=vq_loss_config(disc_start=1000), n_embed=64, embed_dim=4,
                        use_ema=True, monitor="val/rec_loss")
    start = _rec_error(model, images)
    trainer = _fit(model, images, batches=40)
    assert trainer.global_step == 80 and model.loss_step == 40  # two optimizer steps per update
    end = _rec_error(model, images)
    assert end < 0.75 * start, (start, end)
    assert torch.isfinite(torch.tensor(list(trainer.callback_metrics["aeloss"].reshape(1))))
    loader = torch.utils.data.DataLoader(_Images(images[:8]), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = trainer.validate(model, loader, verbose=False)[0]
    assert metrics["val/rec_loss"] > 0 and model.monitor == "val/rec_loss"
    if kind == "vq":
        assert int(model.model_ema.num_updates) == 40
        assert "val_ema/rec_loss" in metrics and "val/perplexity" in metrics


@pytest.mark.slow
def test_gradient_accumulation_steps_every_n_batches():
    model = AutoencoderKL(ddconfig=KL_DD, lossconfig=kl_loss_config(), embed_dim=4)
    trainer = _fit(model, coloured_blocks(8), batches=8, batch_size=2, accumulate=2)
    assert trainer.global_step == 8  # 8 batches, 4 updates, 2 optimizers
    assert model.loss_step == 4


class _HalfLR:
    """A `scheduler_config` target: the LambdaLR multiplier as a function of the step."""

    def schedule(self, step):
        return 0.5


def test_scheduler_config_and_lr_g_factor():
    from ldm.config import trust_all_targets

    model = VQModel(ddconfig=VQ_DD, lossconfig=vq_loss_config(), n_embed=8, embed_dim=4, lr_g_factor=2.0,
                    scheduler_config={"target": f"{__name__}._HalfLR"})
    model.learning_rate = 1e-3
    with trust_all_targets():
        (opt_ae, opt_disc), schedulers = model.configure_optimizers()
    assert [g["lr"] for g in opt_ae.param_groups] == [1e-3]  # 2.0 * 1e-3 * 0.5 after LambdaLR
    assert [g["lr"] for g in opt_disc.param_groups] == [5e-4]
    assert opt_ae.defaults["betas"] == (0.5, 0.9)
    assert len(schedulers) == 2 and all(s["interval"] == "step" for s in schedulers)
    assert {id(p) for p in opt_disc.param_groups[0]["params"]} == {id(p) for p in model.loss.discriminator.parameters()}
    del model.learning_rate
    with pytest.raises(AttributeError, match="learning_rate is not set"):
        model.configure_optimizers()


def test_kl_scheduler_config_scales_both_learning_rates():
    from ldm.config import trust_all_targets

    model = AutoencoderKL(ddconfig=KL_DD, lossconfig=kl_loss_config(), embed_dim=4,
                          scheduler_config={"target": f"{__name__}._HalfLR"})
    model.learning_rate = 1e-3
    with trust_all_targets():
        (opt_ae, opt_disc), schedulers = model.configure_optimizers()
    assert [g["lr"] for g in opt_ae.param_groups] == [5e-4]
    assert [g["lr"] for g in opt_disc.param_groups] == [5e-4]
    assert len(schedulers) == 2 and all(s["interval"] == "step" for s in schedulers)
    plain = AutoencoderKL(ddconfig=KL_DD, lossconfig=kl_loss_config(), embed_dim=4)
    plain.learning_rate = 1e-3
    assert plain.configure_optimizers()[1] == []


def test_log_images_contract():
    model = AutoencoderKL(ddconfig=KL_DD, lossconfig=IDENTITY, embed_dim=4)
    batch = {"image": coloured_blocks(10)}
    log = model.log_images(batch, N=3)
    assert set(log) == {"inputs", "reconstructions", "samples"}
    assert all(v.shape == (3, 3, 16, 16) for v in log.values())
    assert log["inputs"].min() >= -1 and log["inputs"].max() <= 1
    assert set(model.log_images(batch, only_inputs=True)) == {"inputs"}
    vq = VQModel(ddconfig=VQ_DD, lossconfig=IDENTITY, n_embed=8, embed_dim=4)
    assert set(vq.log_images(batch, N=2)) == {"inputs", "reconstructions"}


def test_segmentation_inputs_are_colourised():
    dd = {**KL_DD, "in_channels": 5, "out_ch": 5}
    model = AutoencoderKL(ddconfig=dd, lossconfig=IDENTITY, embed_dim=4, image_key="segmentation",
                          colorize_nlabels=5)
    seg = torch.nn.functional.one_hot(torch.randint(0, 5, (2, 16, 16)), 5).float()
    log = model.log_images({"segmentation": seg})
    assert all(v.shape == (2, 3, 16, 16) for v in log.values())
    assert log["inputs"].min() == -1 and log["inputs"].max() == 1
    assert "colorize" in model.state_dict()


# -- checkpoints -------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_save_load_round_trip_is_bit_exact(tmp_path, suffix):
    model = VQModel(ddconfig=VQ_DD, lossconfig=vq_loss_config(), n_embed=16, embed_dim=4, use_ema=True).eval()
    path = tmp_path / f"model{suffix}"
    ckpt_io.save_state_dict(path, model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    torch.manual_seed(123)  # different random init
    loaded = VQModel(ddconfig=VQ_DD, lossconfig=vq_loss_config(), n_embed=16, embed_dim=4, use_ema=True,
                     ckpt_path=str(path)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_inference_model_drops_loss_keys_and_reports(tmp_path):
    trained = AutoencoderKL(ddconfig=KL_DD, lossconfig=kl_loss_config(), embed_dim=4)
    path = tmp_path / "trained.ckpt"
    ckpt_io.save_state_dict(path, trained.state_dict())
    with pytest.warns(UserWarning, match="dropped"):
        model = AutoencoderKL(ddconfig=KL_DD, lossconfig=IDENTITY, embed_dim=4, ckpt_path=str(path))
    assert torch.equal(model.decoder.conv_out.weight, trained.decoder.conv_out.weight)
    report = ckpt_io.load_into(model, ckpt_io.load_state_dict(path), path=str(path))
    assert report.dropped and all(k.startswith("loss.") for k in report.dropped) and report.ok

    sd = dict(model.state_dict())
    sd["encoder.extra.weight"] = torch.zeros(1)
    del sd["decoder.conv_out.bias"]
    with pytest.raises(RuntimeError, match=r"(?s)missing in checkpoint: decoder\.conv_out\.bias.*unexpected.*encoder\.extra\.weight"):
        ckpt_io.load_into(model, sd)
    report = ckpt_io.load_into(model, sd, strict=False, ignore_keys=("encoder.extra",))
    assert report.missing == ["decoder.conv_out.bias"] and report.ignored == ["encoder.extra.weight"]


def test_prefer_ema_copies_ema_weights(tmp_path):
    sd = {"model.net.weight": torch.zeros(2), "model_ema.netweight": torch.ones(2), "model_ema.decay": torch.tensor(0.9)}
    ckpt_io.save_state_dict(tmp_path / "ema.ckpt", sd)
    assert torch.equal(ckpt_io.load_state_dict(tmp_path / "ema.ckpt", prefer_ema=True)["model.net.weight"], torch.ones(2))
    assert torch.equal(ckpt_io.load_state_dict(tmp_path / "ema.ckpt")["model.net.weight"], torch.zeros(2))


class _Evil:
    """Unpickling this would run code that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_legacy_pickled_checkpoint_loads_tensors_without_running_code(tmp_path):
    model = AutoencoderKL(ddconfig=KL_DD, lossconfig=IDENTITY, embed_dim=4)
    marker = tmp_path / "marker.txt"
    path = tmp_path / "lightning1.ckpt"
    torch.save({"state_dict": model.state_dict(), "global_step": 10, "epoch": 1,
                "callbacks": {"ModelCheckpoint": _Evil(marker)}, "hyper_parameters": {"lr": np.float64(1e-4)}},
               path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the fallback exists for
    sd = ckpt_io.load_state_dict(path)
    assert not marker.exists()
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_missing_ckpt_path_errors_unless_allowed(monkeypatch):
    missing = "/nonexistent/first_stage/model.ckpt"
    monkeypatch.delenv(ckpt_io.ALLOW_MISSING_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"(?s)/nonexistent/first_stage/model\.ckpt.*LDM_ALLOW_MISSING_CKPT=1"):
        AutoencoderKL(ddconfig=KL_DD, lossconfig=IDENTITY, embed_dim=4, ckpt_path=missing)
    monkeypatch.setenv(ckpt_io.ALLOW_MISSING_ENV, "1")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        AutoencoderKL(ddconfig=KL_DD, lossconfig=IDENTITY, embed_dim=4, ckpt_path=missing)
    monkeypatch.delenv(ckpt_io.ALLOW_MISSING_ENV)
    monkeypatch.setattr(ckpt_io, "_allow_missing", None)  # restored after the test: no leak into others
    ckpt_io.allow_missing_checkpoints(True)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        VQModel(ddconfig=VQ_DD, lossconfig=IDENTITY, n_embed=8, embed_dim=4, ckpt_path=missing)
    assert ckpt_io.allow_missing_checkpoints(False) is True  # returns the previous setting
    assert not ckpt_io.missing_checkpoints_allowed()
    assert ckpt_io.allow_missing_checkpoints(None) is False
    monkeypatch.setenv(ckpt_io.ALLOW_MISSING_ENV, "1")
    assert ckpt_io.missing_checkpoints_allowed()  # None defers to the environment again


# -- LPIPS weights -----------------------------------------------------------------------------------
@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path


def test_lpips_offline_error_names_file_and_opt_out(offline_hub):
    lpips = LPIPS()
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(RuntimeError) as info:
        lpips(x, x)
    message = str(info.value)
    assert os.path.join(str(offline_hub), "checkpoints", VGG16_FILENAME) in message
    assert "perceptual_weight: 0" in message and "URLError" in message


def test_perceptual_weight_zero_never_needs_vgg_weights(offline_hub):
    loss = LPIPSWithDiscriminator(disc_start=10, perceptual_weight=0.0, disc_num_layers=1)
    x = torch.rand(1, 3, 16, 16)
    posterior = DiagonalGaussianDistribution(torch.randn(1, 8, 4, 4))
    value, _ = loss(x, x * 0.5, posterior, 0, 0, last_layer=None)
    assert torch.isfinite(value)
    vq = VQLPIPSWithDiscriminator(disc_start=10, perceptual_weight=0.0, disc_num_layers=1)
    assert torch.isfinite(vq(None, x, x * 0.5, 0, 0)[0])


def test_lpips_loads_cached_trunk_or_state_dict(offline_hub):
    with pytest.warns(UserWarning, match="RANDOM"):
        donor = LPIPS(pretrained=False)  # explicit random trunk: works offline, and says so
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert donor(x, y).shape == (1, 1, 1, 1)
    # a torchvision-layout file in the hub cache is picked up on first use
    slices = donor.net.state_dict()
    features = {f"features.{k.split('.', 1)[1]}": v for k, v in slices.items()}
    (offline_hub / "checkpoints").mkdir()
    torch.save(features, offline_hub / "checkpoints" / VGG16_FILENAME)
    cached = LPIPS().eval()
    assert torch.equal(cached(x, y), donor.eval()(x, y))
    assert torch.equal(cached.net.slice3.get_parameter("14.weight"), donor.net.slice3.get_parameter("14.weight"))
    # a state dict carrying the trunk (training checkpoint) makes the file unnecessary
    os.remove(offline_hub / "checkpoints" / VGG16_FILENAME)
    restored = LPIPS()
    restored.load_state_dict(donor.state_dict())
    assert torch.equal(restored.eval()(x, y), donor(x, y))


# -- residual shortcut (DC-AE's parameter-free pixel <-> latent paths) ---------------------------------
from ldm.modules.diffusionmodules.shortcut import (  # noqa: E402
    channel_to_space_duplicate, check_shortcut, space_to_channel_average)

SHORTCUT_DD = {**KL_DD, "attn_resolutions": [], "z_channels": 3}


def test_shortcut_is_average_pooling_and_nearest_upsampling_for_rgb_latents():
    x = torch.randn(2, 3, 16, 16)
    for f in (2, 4):
        down = space_to_channel_average(x, f, 3)
        assert torch.allclose(down, torch.nn.functional.avg_pool2d(x, f), atol=1e-6)
        assert torch.equal(channel_to_space_duplicate(down, f, 3),
                           torch.nn.functional.interpolate(down, scale_factor=f, mode="nearest"))


def test_shortcut_keeps_2d_blocks_when_the_channels_allow():
    # f=4 with 12 = 3 * 2^2 latent channels: the 2x2-pooled image, its quadrants stacked as channels
    x = torch.randn(2, 3, 16, 16)
    z = space_to_channel_average(x, 4, 12)
    assert torch.allclose(z, torch.nn.functional.pixel_unshuffle(torch.nn.functional.avg_pool2d(x, 2), 2), atol=1e-6)
    assert torch.equal(channel_to_space_duplicate(z, 4, 3), torch.nn.functional.interpolate(
        torch.nn.functional.pixel_shuffle(z, 2), scale_factor=2, mode="nearest"))


@pytest.mark.parametrize("f,c", [(1, 3), (2, 4), (4, 4), (4, 12), (4, 16), (8, 4), (8, 48)])
def test_shortcut_down_inverts_up(f, c):
    # averaging a group of duplicates returns the latent: the decoder's path into the encoder's
    z = torch.randn(2, c, 4, 4)
    up = channel_to_space_duplicate(z, f, 3)
    assert up.shape == (2, 3, 4 * f, 4 * f)
    assert torch.allclose(space_to_channel_average(up, f, c), z, atol=1e-6)


def test_check_shortcut_names_the_mismatch():
    check_shortcut(3, 4, 4)
    with pytest.raises(ValueError, match=r"12 values do not split evenly into 5 latent channels"):
        check_shortcut(3, 5, 2)
    with pytest.raises(ValueError, match="factor 3 is not a power of two"):
        check_shortcut(3, 3, 3)


def test_kl_with_shortcut_and_zero_networks_passes_the_downsampled_image():
    model = AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3, residual_shortcut=True)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = model.encode(x)
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    assert torch.allclose(posterior.mean, pooled, atol=1e-6)
    assert torch.equal(posterior.logvar, torch.zeros_like(posterior.logvar))  # the shortcut adds to the mean only
    assert torch.allclose(model.decode(posterior.mode()),
                          torch.nn.functional.interpolate(pooled, scale_factor=2, mode="nearest"), atol=1e-6)
    plain = AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "shortcut_factor"})
    assert torch.equal(plain.encode(x).mean, torch.zeros_like(pooled))  # without it: what the networks give


def test_shortcut_checkpoints_do_not_load_into_models_without_it(tmp_path):
    with_sc = AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3, residual_shortcut=True)
    assert int(with_sc.state_dict()["shortcut_factor"]) == 2
    torch.save({"state_dict": with_sc.state_dict()}, tmp_path / "sc.ckpt")
    plain = AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3)
    assert "shortcut_factor" not in plain.state_dict()  # original checkpoints keep their keys
    torch.save({"state_dict": plain.state_dict()}, tmp_path / "plain.ckpt")
    with pytest.raises(RuntimeError, match="shortcut_factor"):
        AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3, ckpt_path=str(tmp_path / "sc.ckpt"))
    with pytest.raises(RuntimeError, match="shortcut_factor"):
        AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3, residual_shortcut=True,
                      ckpt_path=str(tmp_path / "plain.ckpt"))
    loaded = AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3, residual_shortcut=True,
                           ckpt_path=str(tmp_path / "sc.ckpt"))
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded(x, sample_posterior=False)[0], with_sc(x, sample_posterior=False)[0])


def test_shortcut_config_errors_name_the_keys():
    with pytest.raises(ConfigError, match=r"residual_shortcut.*ddconfig\.in_channels=3, embed_dim=5"):
        AutoencoderKL(ddconfig={**SHORTCUT_DD, "z_channels": 5}, lossconfig=IDENTITY, embed_dim=5,
                      residual_shortcut=True)
    with pytest.raises(ConfigError, match=r"residual_shortcut.*ddconfig\.tanh_out"):
        AutoencoderKL(ddconfig={**SHORTCUT_DD, "tanh_out": True}, lossconfig=IDENTITY, embed_dim=3,
                      residual_shortcut=True)


def test_shortcut_autoencoder_learns_faster():
    """The point of the shortcut: on blocky images (edges between latent cells) a few Adam steps of the same network (same seed)
    reconstruct far better with it than without."""
    x = coloured_blocks(8, cell=4).permute(0, 3, 1, 2).roll(shifts=(1, 1), dims=(2, 3))  # edges off the 2x2 grid
    errors = {}
    for shortcut in (False, True):
        torch.manual_seed(0)
        model = AutoencoderKL(ddconfig=SHORTCUT_DD, lossconfig=IDENTITY, embed_dim=3, residual_shortcut=shortcut)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(20):
            rec, _ = model(x, sample_posterior=False)
            loss = (rec - x).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            errors[shortcut] = float((model(x, sample_posterior=False)[0] - x).abs().mean())
    assert errors[True] < 0.7 * errors[False], errors  # measured 0.100 against 0.170
