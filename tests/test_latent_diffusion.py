"""LatentDiffusion end to end with tiny real modules: KL first stage, UNet, class embedder."""
import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ldm.data.masks import mask_image
from ldm import checkpoint as ckpt_io
from ldm.models.diffusion.conditioning import (
    DiffusionWrapper, drop_conditioning, inpainting_condition, mask_at_latent_size, split_inpainting_condition)
from ldm.models.diffusion.ddpm import DDPM, LatentDiffusion
from ldm.util import instantiate_from_config

T = 50  # a short chain keeps ancestral sampling cheap
FIRST_STAGE = {
    "target": "ldm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": 4,
        "lossconfig": {"target": "torch.nn.Identity"},
        "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3,
                     "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
    },
}  # f = 2: 16px images -> 8x8x4 latents


def unet(in_channels=4, **extra):
    params = dict(image_size=8, in_channels=in_channels, out_channels=4, model_channels=32, num_res_blocks=1,
                  attention_resolutions=[2], channel_mult=[1, 2], num_heads=2, **extra)
    return {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": params}


def make(kind="uncond", **overrides):
    params = dict(first_stage_config=FIRST_STAGE, timesteps=T, linear_start=0.0015, linear_end=0.0195,
                  first_stage_key="image", image_size=8, channels=4, log_every_t=10, monitor="val/loss_simple_ema")
    if kind == "uncond":
        params.update(unet_config=unet(), cond_stage_config="__is_unconditional__")
    elif kind == "class":
        params.update(unet_config=unet(use_spatial_transformer=True, context_dim=16, legacy=False),
                      cond_stage_config={"target": "ldm.modules.encoders.modules.ClassEmbedder",
                                         "params": {"embed_dim": 16, "n_classes": 10, "key": "class_label",
                                                    "null_class": True}},
                      cond_stage_key="class_label", cond_stage_trainable=True, conditioning_key="crossattn")
    elif kind == "concat":  # inpainting-style: the masked image through the first stage, concatenated
        params.update(unet_config=unet(in_channels=8), cond_stage_config="__is_first_stage__",
                      cond_stage_key="masked_image", concat_mode=True)
    elif kind == "inpaint":  # as inpainting_big (Sec. 4.5): [z_t, E(masked image), mask at latent size]
        params.update(unet_config=unet(in_channels=4 + 4 + 1), cond_stage_config="__is_first_stage__",
                      cond_stage_key="masked_image", concat_mask_key="mask", conditioning_key="concat")
    params.update(overrides)
    model = instantiate_from_config({"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params})
    with torch.no_grad():  # near-deterministic latents: a random KL encoder's posterior is ~N(mean, 1)
        model.first_stage_model.quant_conv.bias[4:].fill_(-20.0)
    return model


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 16, 16, 3, generator=g) * 2 - 1  # channel-last, as the datasets deliver
    mask = (torch.rand(n, 16, 16, 1, generator=g) > 0.5).float()  # 1 = fill, as ldm.data.places
    return {"image": img, "mask": mask, "masked_image": mask_image(img, mask),
            "class_label": torch.randint(0, 10, (n,), generator=g)}


def randomize_output(model):
    """The UNet's output conv starts at zero; perturb it so outputs depend on every weight."""
    with torch.no_grad():
        for p in model.model.diffusion_model.out.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("kind", ["uncond", "class", "concat"])
def test_loss_finite_and_stages_frozen(kind):
    model = make(kind)
    loss, logs = model.shared_step(batch())
    assert torch.isfinite(loss) and set(logs) == {"train/loss_simple", "train/loss_vlb", "train/loss"}
    loss.backward()
    assert all(p.grad is None for p in model.first_stage_model.parameters())
    assert model.model.diffusion_model.out[2].weight.grad is not None
    model.train()  # train() must not unfreeze the first stage
    assert not model.first_stage_model.training
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    assert model.model.conditioning_key == {"uncond": None, "class": "crossattn", "concat": "concat"}[kind]
    if kind == "class":
        assert model.cond_stage_model.embedding.weight.grad is not None  # τ_θ trained jointly (Eq. (3))
    if kind == "concat":
        assert model.cond_stage_model is model.first_stage_model


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = make("uncond", use_ema=False)
    model.learning_rate = 5e-3
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 5e-3
    data = batch(8, seed=1)
    data["image"] = data["image"][:2].repeat(4, 1, 1, 1)  # two images: an easy distribution to fit
    z, _ = model.get_input(data, "image")
    t = torch.arange(0, T, T // 8)[:8]
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(5))

    def held_out_loss():
        with torch.no_grad():
            return model.p_losses(z, None, t, noise=noise)[0].item()

    before = held_out_loss()
    for _ in range(80):
        loss, _ = model.shared_step(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)


def test_scale_by_std_sets_unit_latent_std_and_persists(tmp_path):
    model = make("uncond", scale_by_std=True)
    assert "scale_factor" in model.state_dict() and float(model.scale_factor) == 1.0
    data = batch(8)
    torch.manual_seed(3)
    model.on_train_batch_start(data, 0)
    s = float(model.scale_factor)
    assert s != 1.0
    torch.manual_seed(3)  # the KL posterior is sampled: redraw the same latents
    z, _ = model.get_input(data, "image")
    assert z.flatten().std().item() == pytest.approx(1.0, rel=1e-4)
    model.on_train_batch_start(data, 1)  # only the very first batch
    assert float(model.scale_factor) == s

    path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    restored = make("uncond", scale_by_std=True, ckpt_path=str(path))
    assert restored.restarted_from_ckpt and float(restored.scale_factor) == s
    restored.on_train_batch_start(data, 0)  # a restart must not re-estimate it
    assert float(restored.scale_factor) == s
    assert "scale_factor" not in make("uncond").state_dict()  # a plain float without scale_by_std


def test_save_load_round_trip_reproduces_outputs():
    model = randomize_output(make("class"))
    torch.manual_seed(11)
    other = make("class")
    other.load_state_dict(copy.deepcopy(model.state_dict()))
    model.eval(), other.eval()
    data = batch()
    for m in (model, other):
        torch.manual_seed(4)
        m._out = m.shared_step(data)[0]
    assert torch.equal(model._out, other._out)
    x, t = torch.randn(4, 4, 8, 8), torch.tensor([0, 5, 20, 49])
    c = model.get_learned_conditioning(data)
    assert torch.equal(model.apply_model(x, t, c), other.apply_model(x, t, other.get_learned_conditioning(data)))


def test_ckpt_path_ignore_keys_and_errors(tmp_path, monkeypatch):
    model = randomize_output(make("class"))
    path = tmp_path / "class.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    torch.manual_seed(5)
    loaded = make("class", ckpt_path=str(path), ignore_keys=["cond_stage_model"])
    assert torch.equal(loaded.model.diffusion_model.out[2].weight, model.model.diffusion_model.out[2].weight)
    assert not torch.equal(loaded.cond_stage_model.embedding.weight, model.cond_stage_model.embedding.weight)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("model_ema.")}
    torch.save({"state_dict": sd}, path)
    no_ema = make("class", ckpt_path=str(path))  # the EMA restarts from the loaded weights
    assert torch.equal(no_ema.model_ema.diffusion_modelout2weight, model.model.diffusion_model.out[2].weight)
    torch.save({"state_dict": make("uncond").state_dict()}, path)
    with pytest.raises(RuntimeError, match="does not match"):
        make("class", ckpt_path=str(path))
    monkeypatch.delenv("LDM_ALLOW_MISSING_CKPT", raising=False)
    with pytest.raises(FileNotFoundError, match="LDM_ALLOW_MISSING_CKPT"):
        make("class", ckpt_path=str(tmp_path / "absent.ckpt"))


def test_load_only_unet_warm_starts_the_denoiser_of_another_model(tmp_path):
    """load_only_unet takes the UNet from a full checkpoint of another model (a class model warm-
    starting one with another conditioning encoder and schedule); the rest keeps its own state."""
    source = randomize_output(make("class", scale_by_std=True))
    source.scale_factor.fill_(0.25)
    path = tmp_path / "class.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    other_encoder = {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                     "params": {"embed_dim": 16, "n_classes": 5, "key": "class_label", "null_class": True}}
    kwargs = dict(scale_by_std=True, linear_end=0.012, cond_stage_config=other_encoder, ckpt_path=str(path))
    with pytest.raises(RuntimeError, match="does not match"):  # the whole checkpoint: the encoders differ
        make("class", **kwargs)
    torch.manual_seed(6)
    target = make("class", load_only_unet=True, **kwargs)
    src, dst = source.model.state_dict(), target.model.state_dict()
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    assert target.cond_stage_model.embedding.weight.shape[0] == 6  # its own encoder, 5 classes + null
    assert target.alphas_cumprod[-1] > source.alphas_cumprod[-1]  # its own (less noisy) schedule
    assert float(target.scale_factor) == 1.0 and not target.restarted_from_ckpt
    target.on_train_batch_start(batch(8), 0)  # the latent scale is estimated as in a fresh run
    assert float(target.scale_factor) not in (1.0, 0.25)


def test_pixel_space_ddpm():
    model = instantiate_from_config({"target": "ldm.models.diffusion.ddpm.DDPM", "params": {
        "unet_config": {
            "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, num_res_blocks=1,
                           attention_resolutions=[], channel_mult=[1], num_heads=2)},
        "timesteps": 20, "image_size": 8, "channels": 3, "log_every_t": 10}})
    data = {"image": torch.rand(2, 8, 8, 3) * 2 - 1}
    loss, logs = model.shared_step(data)
    assert torch.isfinite(loss) and logs["train/loss"] == loss
    images = model.log_images(data, N=2)
    assert images["inputs"].shape == images["samples"].shape == (2, 3, 8, 8)
    assert images["samples"].abs().max() <= 1.0  # clip_denoised keeps x̂_0 in the data range


def test_ema_scope_swaps_and_restores_weights():
    model = randomize_output(make("uncond"))
    model.learning_rate = 1e-2
    opt = model.configure_optimizers()
    for i in range(3):
        loss, _ = model.shared_step(batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_train_batch_end(None, None, i)
    trained = {k: v.clone() for k, v in model.model.state_dict().items()}
    shadow = dict(model.model_ema.named_buffers())
    name = "diffusion_model.out.2.weight"
    assert not torch.equal(trained[name], shadow[name.replace(".", "")])
    with model.ema_scope():
        assert torch.equal(model.model.state_dict()[name], shadow[name.replace(".", "")])
    assert all(torch.equal(v, trained[k]) for k, v in model.model.state_dict().items())


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_cfg_dropout_rate(rate):
    model = make("class", ucg_rate=rate)
    n = 4000
    labels = torch.randint(0, 10, (n,))
    raw = {"class_label": labels.clone()}
    dropped = model.drop_condition(raw, rate)["class_label"]
    null = dropped == 10  # ClassEmbedder(null_class=True) reserves index n_classes
    assert torch.equal(dropped[~null], labels[~null])
    frac = null.float().mean().item()
    assert abs(frac - rate) < 4 * (rate * (1 - rate) / n) ** 0.5 + 1e-9, frac
    assert torch.equal(raw["class_label"], labels)  # the batch itself is not modified


def test_cfg_dropout_in_training_batches_only():
    data = batch(6)
    model = make("class", ucg_rate=1.0)
    _, c = model.get_input(data, "image")  # training mode: every label dropped
    assert (c["class_label"] == 10).all() and not (data["class_label"] == 10).any()
    model.eval()
    _, c = model.get_input(data, "image")
    assert torch.equal(c["class_label"], data["class_label"])
    uc = model.get_unconditional_conditioning(data, 2)
    assert torch.equal(uc, model.cond_stage_model.embedding.weight[10].expand(2, 1, 16))
    assert torch.equal(make("class").get_input(data, "image")[1]["class_label"], data["class_label"])  # rate 0


def test_drop_conditioning_null_values():
    torch.manual_seed(0)
    prompts, mask = drop_conditioning(["a cat", "a dog", "a cow"], 1.0)
    assert prompts == ["", "", ""] and mask.all()
    images = torch.randn(5, 3, 4, 4)
    out, mask = drop_conditioning(images, 0.5)
    assert torch.equal(out[mask], torch.zeros_like(images[mask])) and torch.equal(out[~mask], images[~mask])
    labels, _ = drop_conditioning(torch.tensor([1, 2, 3]), 1.0, null_class=7)
    assert labels.tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="ucg_null_class"):
        drop_conditioning({"y": torch.tensor([1])}, 0.5, class_key="y")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        drop_conditioning(images, 1.5)


def test_conditioning_routes():
    wrapper = DiffusionWrapper(unet(num_classes=10), "adm")
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([3, 4])
    assert wrapper(x, t, c_crossattn=[y]).shape == x.shape
    with pytest.raises(ValueError, match="needs `c_concat`"):
        DiffusionWrapper(unet(in_channels=8), "concat")(x, t)
    with pytest.raises(ValueError, match="conditioning_key 'film'"):
        DiffusionWrapper(unet(), "film")
    with pytest.raises(ValueError, match="ucg_rate"):
        make("class", ucg_rate=2.0)
    with pytest.raises(ValueError, match="parameterization.*'mu'"):
        make("uncond", parameterization="mu")


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_other_parameterisations_train(parameterization):
    model = make("uncond", parameterization=parameterization, use_ema=False)
    data = batch()
    z, _ = model.get_input(data, "image")
    t, noise = torch.tensor([1, 10, 30, 49]), torch.randn_like(z)
    loss, _ = model.p_losses(z, None, t, noise=noise)
    expected = {"x0": z, "v": model.get_v(z, noise, t)}[parameterization]
    # the UNet output starts at zero, so the loss is the mean square of the target
    assert loss.item() == pytest.approx((expected ** 2).mean().item(), rel=1e-5)


def test_ancestral_sampling_and_image_logs():
    model = make("concat", log_every_t=25)
    data = batch(2)
    logs = model.log_images(data, N=2, n_row=2, ddim_steps=None, inpaint=True, quantize_denoised=True,
                            plot_progressive_rows=True, plot_diffusion_rows=True)
    assert logs["inputs"].shape == logs["reconstruction"].shape == logs["samples"].shape == (2, 3, 16, 16)
    assert logs["conditioning"].shape == (2, 3, 16, 16)  # the first stage decodes its own encoding
    assert "samples_x0_quantized" not in logs  # KL first stage: nothing to quantise
    assert logs["samples_inpainting"].shape == (2, 3, 16, 16) and logs["mask"].shape == (2, 1, 8, 8)
    assert logs["diffusion_row"].shape[0] == 3 and logs["progressive_row"].shape[0] == 3
    z, c = model.get_input(data, "image")
    samples, inter = model.sample(c, batch_size=2, return_intermediates=True, verbose=False)
    assert samples.shape == (2, 4, 8, 8) and len(inter) == 1 + 2 + 1  # x_T, t=25, t=0, t=T-1


def test_class_model_logs_guided_ddim_samples():
    model = make("class")
    logs = model.log_images(batch(2), N=2, ddim_steps=5, inpaint=False, plot_progressive_rows=False,
                            plot_diffusion_rows=False, unconditional_guidance_scale=3.0)
    assert logs["samples"].shape == logs["samples_cfg_scale_3.00"].shape == (2, 3, 16, 16)
    assert logs["conditioning"].shape == (2, 3, 16, 16)  # labels rendered as text


def test_lightning_fit_with_scheduler_and_scale_by_std(tmp_path):
    model = make("uncond", scale_by_std=True, scheduler_config={
        "target": "ldm.lr_scheduler.LambdaLinearScheduler",
        "params": {"warm_up_steps": [10], "cycle_lengths": [10 ** 13], "f_start": [1e-6], "f_max": [1.0],
                   "f_min": [1.0]}})
    model.learning_rate = 1e-4
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in batch(4).items()} for i in range(4)], batch_size=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)
    assert float(model.scale_factor) != 1.0
    assert int(model.model_ema.num_updates) == 2
    assert {"val/loss_simple", "val/loss_simple_ema", "train/loss_simple_step", "lr_abs"} <= set(trainer.callback_metrics)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4 * (1e-6 + (1 - 1e-6) / 10 * 2))


# ---- inpainting conditioning (paper Sec. 4.5) ----

def test_inpainting_condition_layout():
    """[E(masked image), mask↓] in the channel order of the original inference script: the masked image
    through the first stage, then the pixel mask mapped to {-1, 1} and resized (nearest) to the latents."""
    model = make("inpaint").eval()
    data = batch(2)
    data["mask"] = torch.zeros(2, 16, 16, 1)
    data["mask"][0, :, :8] = 1.0  # sample 0: fill the left half; sample 1: keep everything
    data["masked_image"] = data["image"] * (1 - data["mask"])
    z, c = model.get_input(data, "image")
    assert z.shape == (2, 4, 8, 8) and c.shape == (2, 4 + 1, 8, 8)
    masked = data["masked_image"].permute(0, 3, 1, 2).contiguous()
    latent = model.first_stage_model.encode(masked).mode()  # τ_θ = E for __is_first_stage__
    mask = data["mask"].permute(0, 3, 1, 2)
    torch.testing.assert_close(c[:, :4], latent)
    expected_mask = torch.full((2, 1, 8, 8), -1.0)
    expected_mask[0, :, :, :4] = 1.0
    assert torch.equal(c[:, 4:], expected_mask)
    assert torch.equal(c[:, 4:], F.interpolate(mask * 2 - 1, size=(8, 8)))
    # the public helper builds the same condition from pixels, and splits it back
    torch.testing.assert_close(inpainting_condition(model, masked, mask), c)
    c_img, c_mask = split_inpainting_condition(c)
    assert torch.equal(c_mask, expected_mask) and torch.equal(c_img, c[:, :4])
    # the UNet sees [z_t, E(masked image), mask]: 4 + 4 + 1 input channels
    assert model.apply_model(z, torch.tensor([3, 7]), c).shape == z.shape


def test_inpainting_trains_with_finite_loss_and_uses_the_mask():
    model = randomize_output(make("inpaint", use_ema=False))  # a zero output conv would stop every gradient
    model.learning_rate = 1e-3
    opt = model.configure_optimizers()
    for step in range(3):
        loss, logs = model.shared_step(batch(4, seed=step))
        assert torch.isfinite(loss) and logs["train/loss"] == loss
        opt.zero_grad()
        loss.backward()
        first_conv = model.model.diffusion_model.input_blocks[0][0].weight
        assert first_conv.shape[1] == 9 and first_conv.grad[:, 8].abs().sum() > 0  # the mask channel is used
        opt.step()
    assert all(p.grad is None for p in model.first_stage_model.parameters())


def test_inpainting_logs_and_guidance_keep_the_mask():
    model = make("inpaint", ucg_rate=0.5)
    data = batch(3)
    logs = model.log_images(data, N=2, ddim_steps=3, inpaint=False, plot_progressive_rows=False,
                            plot_diffusion_rows=False, unconditional_guidance_scale=2.0)
    assert logs["samples"].shape == logs["samples_cfg_scale_2.00"].shape == (2, 3, 16, 16)
    assert logs["conditioning"].shape == (2, 3, 16, 16)  # the first stage decodes E(masked image)
    assert torch.equal(logs["conditioning_mask"],
                       F.interpolate(data["mask"][:2].permute(0, 3, 1, 2) * 2 - 1, size=(8, 8)))
    mask, masked = (DDPM.get_input(model, data, k) for k in ("mask", "masked_image"))  # (B, C, H, W)
    uc = model.get_unconditional_conditioning(masked, mask=mask)  # the masked image dropped, the mask kept
    torch.testing.assert_close(uc, inpainting_condition(model, torch.zeros(3, 3, 16, 16), mask))
    with pytest.raises(ValueError, match="pass the pixel mask"):
        model.get_unconditional_conditioning(masked)


def test_inpainting_condition_errors():
    with pytest.raises(ValueError, match="conditioning_key 'concat'"):
        make("class", concat_mask_key="mask", cond_stage_trainable=False)
    with pytest.raises(ValueError, match="cond_stage_trainable=False"):
        make("inpaint", cond_stage_trainable=True)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        mask_at_latent_size(torch.full((1, 1, 4, 4), -1.0), (2, 2))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        mask_at_latent_size(torch.zeros(1, 4, 4), (2, 2))
    model = make("inpaint")
    with pytest.raises(ValueError, match="batch size 1 differs"):
        inpainting_condition(model, torch.zeros(2, 3, 16, 16), torch.zeros(1, 1, 16, 16))
    data = batch(2)
    del data["mask"]
    with pytest.raises(KeyError, match="'mask'"):
        model.get_input(data, "image")


# ---- original names and messages ----

def test_extract_into_tensor_is_the_original_name_of_extract():
    from ldm.models.diffusion.parameterization import extract
    from ldm.modules.diffusionmodules.util import extract_into_tensor
    assert extract_into_tensor is extract
    a = torch.tensor([10.0, 20.0, 30.0])
    out = extract_into_tensor(a, torch.tensor([2, 0]), (2, 3, 4, 4))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [30.0, 10.0]


@pytest.mark.parametrize("path,command", [
    ("models/first_stage_models/vq-f4-noattn/model.ckpt", "bash scripts/download_first_stages.sh vq-f4-noattn"),
    ("/data/repo/models/ldm/inpainting_big/model.ckpt", "bash scripts/download_models.sh inpainting_big"),
    ("logs/run/checkpoints/last.ckpt", None),
])
def test_missing_checkpoint_message_says_how_to_get_it(path, command, monkeypatch):
    monkeypatch.delenv("LDM_ALLOW_MISSING_CKPT", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        ckpt_io.init_from_ckpt(torch.nn.Linear(1, 1), path)
    msg = str(err.value)
    assert msg.startswith(f"ckpt_path {path!r} does not exist.")
    assert "LDM_ALLOW_MISSING_CKPT=1" in msg and "--allow-missing-ckpt" in msg
    assert ckpt_io.download_command(path) == command
    if command is None:
        assert "scripts/download" not in msg
    else:
        assert f"`{command}`" in msg
