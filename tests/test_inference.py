"""ldm.inference: loading runs and checkpoints, devices, precision, seeding, safe output paths,
tiled decoding, sampling with guidance and masks, input checks. Tiny real models on CPU.

The builders at the top (``make_model``, ``write_run``) are shared with tests/test_scripts.py.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import ldm.inference as I
from ldm.checkpoint import save_state_dict
from ldm.util import instantiate_from_config

T = 100  # training chain length of the tiny models (sampling cost depends on --steps only)


def first_stage(kind: str = "kl") -> dict:
    dd = {"double_z": kind == "kl", "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
          "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}  # f = 2
    if kind == "kl":
        return {"target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {"embed_dim": 3, "ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"},
                           "ckpt_path": "/nonexistent/autoencoder/last.ckpt"}}
    dd["attn_type"] = "none"  # like the released inpainting_big first stage
    return {"target": "ldm.models.autoencoder.VQModelInterface",
            "params": {"embed_dim": 3, "n_embed": 16, "ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"}}}


def unet(in_channels: int = 3, context_dim: int | None = None) -> dict:
    params = {"image_size": 8, "in_channels": in_channels, "out_channels": 3, "model_channels": 32,
              "num_res_blocks": 1, "attention_resolutions": [2], "channel_mult": [1, 2], "num_heads": 2}
    if context_dim:
        params.update(use_spatial_transformer=True, context_dim=context_dim, legacy=False)
    return {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": params}


def model_config(kind: str) -> dict:
    """A tiny LatentDiffusion for each task: f = 2, 16 px images, 8x8x3 latents."""
    p = {"timesteps": T, "linear_start": 0.0015, "linear_end": 0.0195, "first_stage_key": "image", "image_size": 8,
         "channels": 3, "log_every_t": 10, "first_stage_config": first_stage("kl"), "use_ema": True}
    if kind == "uncond":
        p.update(unet_config=unet(), cond_stage_config="__is_unconditional__")
    elif kind == "class":
        p.update(unet_config=unet(context_dim=16), conditioning_key="crossattn", cond_stage_key="class_label",
                 cond_stage_trainable=True, ucg_rate=0.1,
                 cond_stage_config={"target": "ldm.modules.encoders.modules.ClassEmbedder",
                                    "params": {"embed_dim": 16, "n_classes": 5, "key": "class_label",
                                               "null_class": True}})
    elif kind == "text":
        p.update(unet_config=unet(context_dim=16), conditioning_key="crossattn", cond_stage_key="caption",
                 cond_stage_trainable=True,
                 cond_stage_config={"target": "ldm.modules.encoders.modules.BERTEmbedder",
                                    "params": {"n_embed": 16, "n_layer": 1, "vocab_size": 64, "max_seq_len": 12,
                                               "word_vocab": "ldm.data.synthetic.caption_vocabulary"}})
    elif kind == "layout":
        p.update(unet_config=unet(context_dim=16), conditioning_key="crossattn", cond_stage_key="coordinates_bbox",
                 cond_stage_trainable=True,
                 cond_stage_config={"target": "ldm.modules.encoders.modules.BERTEmbedder",
                                    "params": {"n_embed": 16, "n_layer": 1, "vocab_size": 128, "max_seq_len": 14,
                                               "use_tokenizer": False}})  # 4 objects + crop, grid 8
    elif kind == "inpainting":  # as the released inpainting_big: [z_t, E(masked image), mask]
        p.update(first_stage_config=first_stage("vq"), unet_config=unet(in_channels=7),
                 cond_stage_config="__is_first_stage__", cond_stage_key="masked_image", concat_mode=True)
    elif kind == "inpainting_data":  # trained on ldm.data's masked_image alone: [z_t, E(masked image)]
        p.update(first_stage_config=first_stage("vq"), unet_config=unet(in_channels=6),
                 cond_stage_config="__is_first_stage__", cond_stage_key="masked_image", concat_mode=True)
    elif kind == "superres":  # as bsr_sr: the low-res image itself is concatenated
        p.update(unet_config=unet(in_channels=6), cond_stage_config={"target": "torch.nn.Identity"},
                 cond_stage_key="LR_image", concat_mode=True)
    elif kind == "semantic":  # as semantic_synthesis256: one-hot maps through a SpatialRescaler
        p.update(unet_config=unet(in_channels=6), cond_stage_key="segmentation", concat_mode=True,
                 cond_stage_trainable=True,
                 cond_stage_config={"target": "ldm.modules.encoders.modules.SpatialRescaler",
                                    "params": {"n_stages": 1, "in_channels": 5, "out_channels": 3}})
    else:
        raise ValueError(kind)
    return {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": p}


def make_model(kind: str, seed: int = 0):
    """The model with random, non-degenerate weights and distinct EMA weights."""
    torch.manual_seed(seed)
    cfg = copy.deepcopy(model_config(kind))
    cfg["params"]["first_stage_config"]["params"].pop("ckpt_path", None)
    model = instantiate_from_config(cfg)
    with torch.no_grad():
        for p in model.model.diffusion_model.parameters():  # zero-initialised output and attention
            if not p.any():                                  # projections: make every input count
                p.normal_(0, 0.1)
        if hasattr(model.first_stage_model, "quant_conv") and not kind.startswith("inpainting"):
            model.first_stage_model.quant_conv.bias[3:].fill_(-20.0)  # near-deterministic KL latents
        for name, buf in model.model_ema.named_buffers():  # EMA differs from the raw weights
            if name in model.model_ema.m_name2s_name.values():
                buf.add_(0.01 * torch.randn_like(buf))
    return model.eval()


def lightning_checkpoint(model) -> dict:
    """The dict Lightning's trainer writes (the parts a loader may meet)."""
    return {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.0",
            "state_dict": model.state_dict(), "loops": {}, "callbacks": {}, "optimizer_states": [],
            "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": {}}


def write_run(root: Path, kind: str, seed: int = 0) -> tuple[Path, object]:
    """<root>/<time>_<kind>/{configs/<now>-project.yaml, configs/<now>-lightning.yaml,
    checkpoints/last.ckpt} as the trainer writes them, plus model.safetensors beside the run."""
    model = make_model(kind, seed)
    run = root / f"2024-01-01T00-00-00_{kind}"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create({"model": model_config(kind), "data": {"target": "main.DataModuleFromConfig"}}),
                   run / "configs" / "2024-01-01T00-00-00-project.yaml")
    OmegaConf.save(OmegaConf.create({"lightning": {"trainer": {"max_steps": 1}}}),
                   run / "configs" / "2024-01-01T00-00-00-lightning.yaml")
    torch.save(lightning_checkpoint(model), run / "checkpoints" / "last.ckpt")
    save_state_dict(root / f"{kind}.safetensors", model.state_dict())
    return run, model


def write_snapshot(run: Path, step: int, kind: str = "class") -> Path:
    """A step snapshot of ``run`` (made by write_run(..., kind)), named as main.py names them: other
    denoiser and conditioning encoder (seed 1), the same first stage and scale factor."""
    state = lightning_checkpoint(make_model(kind, 0))
    for k, v in lightning_checkpoint(make_model(kind, 1))["state_dict"].items():
        if not (k.startswith("first_stage_model.") or k == "scale_factor"):
            state["state_dict"][k] = v
    path = run / "checkpoints" / "trainstep_checkpoints" / f"epoch=000000-step={step:09d}.ckpt"
    path.parent.mkdir(exist_ok=True)
    torch.save({**state, "global_step": step}, path)
    return path

def ema_model(model):
    """A copy of ``model`` with its EMA weights swapped in: what sampling should use."""
    m = copy.deepcopy(model)
    m.model_ema.copy_to(m.model)
    return m


# ---------------------------------------------------------------------------------------------
# loading

@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs"), "text")


def test_load_run_uses_saved_configs_last_ckpt_and_ema(text_run):
    run, trained = text_run
    files = I.find_run(run)
    assert files.ckpt == run / "checkpoints" / "last.ckpt" and len(files.configs) == 2
    model = I.load_run(run, device="cpu")  # the config's autoencoder ckpt_path does not exist: stripped
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "model_ema")  # EMA copied in, not kept
    expected = ema_model(trained).model.state_dict()
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    raw = I.load_run(run / "checkpoints" / "last.ckpt", device="cpu", prefer_ema=False)
    assert torch.equal(raw.model.diffusion_model.out[2].weight, trained.model.diffusion_model.out[2].weight)
    assert not torch.equal(raw.model.diffusion_model.out[2].weight, model.model.diffusion_model.out[2].weight)


def test_find_run_from_a_periodic_snapshot(text_run, tmp_path):
    # main.py writes weights-only snapshots to <run>/checkpoints/trainstep_checkpoints/: they
    # belong to the same run and its saved configs.
    run, _ = text_run
    snapdir = run / "checkpoints" / "trainstep_checkpoints"
    snapdir.mkdir(exist_ok=True)
    snap = snapdir / "epoch=000000-step=000000010.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", snap)
    files = I.find_run(snap)
    assert files.logdir == run and files.ckpt == snap and files.configs == I.find_run(run).configs
    a, b = I.load_run(snap, device="cpu"), I.load_run(run, device="cpu")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    loose = tmp_path / "elsewhere" / "x.ckpt"  # a file outside any checkpoints/ folder: its own folder
    loose.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", loose)
    assert I.find_run(loose).logdir == loose.parent and I.find_run(loose).configs == []


def test_safetensors_and_ckpt_load_identically(text_run):
    run, _ = text_run
    a = I.load_model(I.find_run(run).configs, run / "checkpoints" / "last.ckpt", device="cpu")
    b = I.load_model(run / "configs" / "2024-01-01T00-00-00-project.yaml", run.parent / "text.safetensors")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_strict_loading_reports_mismatch(text_run, tmp_path):
    run, trained = text_run
    sd = {k: v for k, v in trained.state_dict().items() if not k.startswith("cond_stage_model.")}
    torch.save({"state_dict": sd}, tmp_path / "partial.ckpt")
    configs = I.find_run(run).configs
    with pytest.raises(RuntimeError, match="missing in checkpoint: cond_stage_model"):
        I.load_model(configs, tmp_path / "partial.ckpt")
    with pytest.warns(UserWarning, match="missing in checkpoint"):
        I.load_model(configs, tmp_path / "partial.ckpt", strict=False)


def test_missing_checkpoint_and_run_errors(tmp_path, text_run):
    run, _ = text_run
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.ckpt"):
        I.load_model(I.find_run(run).configs, tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="no such run directory or checkpoint"):
        I.find_run(tmp_path / "missing_run")
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="last.ckpt: checkpoint not found"):
        I.find_run(tmp_path / "empty_run")


def test_pickled_code_in_a_checkpoint_is_not_executed(tmp_path, text_run):
    run, trained = text_run
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": trained.state_dict(), "callbacks": {"x": Evil()}}, tmp_path / "evil.ckpt")
    I.load_model(I.find_run(run).configs, tmp_path / "evil.ckpt")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# device, precision, seeding

def test_device_selection_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert I.select_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        I.select_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert I.select_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert I.select_device() == torch.device("cuda")
    assert I.select_device("cpu") == torch.device("cpu")


def test_autocast_precisions():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with I.autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with I.autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        I.autocast("cpu", "fp8")


def test_seed_everything_reproduces_noise():
    g1 = I.seed_everything(7)
    x1, r1 = torch.randn(3, generator=g1), torch.rand(2)
    g2 = I.seed_everything(7)
    assert torch.equal(x1, torch.randn(3, generator=g2)) and torch.equal(r1, torch.rand(2))
    assert not torch.equal(x1, torch.randn(3, generator=I.seed_everything(8)))


# ---------------------------------------------------------------------------------------------
# safe output paths

@pytest.mark.parametrize("prompt", ["../../etc/passwd", "/etc/passwd", "..", ".", "a/../../b", "~/x",
                                    "C:\\Windows\\system32", "con", "\x00nul\nbyte", "ünïcödé prompt"])
def test_prompt_names_stay_inside_outdir(tmp_path, prompt):
    name = I.safe_name(prompt)
    assert name and "/" not in name and "\\" not in name and not name.startswith(".") and name not in ("..", ".")
    target = I.safe_join(tmp_path, name)
    assert target.parent == tmp_path.resolve()


def test_safe_name_examples():
    assert I.safe_name("../../etc/passwd") == "etc-passwd"
    assert I.safe_name("a red circle on a blue background") == "a_red_circle_on_a_blue_background"
    long = I.safe_name("word " * 100)
    assert len(long) <= 80 and long != I.safe_name("word " * 99)  # hashed, still distinct


def test_safe_join_rejects_escapes(tmp_path):
    with pytest.raises(I.UnsafePathError):
        I.safe_join(tmp_path, "..", "x.png")
    with pytest.raises(I.UnsafePathError):
        I.safe_join(tmp_path, "/etc/passwd")
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(I.UnsafePathError):
        I.safe_join(tmp_path, "link", "x.png")


def test_save_images_numbering_and_uint8(tmp_path):
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    first = I.save_images(x, tmp_path)
    second = I.save_images(x, tmp_path)
    assert [p.name for p in first + second] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    arr = I.to_uint8(x)
    assert arr.dtype == np.uint8 and arr.shape == (2, 4, 5, 3) and arr.min() == 0 and arr.max() == 255
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(first[1])), arr[1])


# ---------------------------------------------------------------------------------------------
# tiled decoding

class LocalDecoder(torch.nn.Module):
    """A decoder without spatial context (1x1 conv, nearest x4 upsampling): tiling must be exact."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, z):
        return torch.nn.functional.interpolate(self.conv(z), scale_factor=4, mode="nearest")


def test_decode_tiled_blending_is_exact_for_a_local_decoder():
    dec = LocalDecoder()
    z = torch.randn(2, 3, 10, 13)
    full = dec(z)
    for tile, overlap in [(4, 2), (5, 1), (6, 0), (3, 2)]:
        tiled = I.decode_tiled(None, z, tile, overlap, decode_fn=dec)
        assert tiled.shape == full.shape
        torch.testing.assert_close(tiled, full, rtol=0, atol=1e-6)


def test_decode_tiled_single_tile_equals_untiled_and_memory_is_bounded():
    model = make_model("uncond")
    z = torch.randn(1, 3, 8, 8)
    full = model.decode_first_stage(z)
    torch.testing.assert_close(I.decode_tiled(model, z, tile=8, overlap=2), full, rtol=0, atol=1e-6)
    seen = []

    def recording(zt):
        seen.append(tuple(zt.shape[-2:]))
        return model.decode_first_stage(zt)

    big = torch.randn(1, 3, 40, 40)  # an 80x80 image from an f=2 model trained at 16x16
    out = I.decode_tiled(model, big, tile=8, overlap=2, decode_fn=recording)
    assert out.shape == (1, 3, 80, 80) and torch.isfinite(out).all()
    assert max(h * w for h, w in seen) == 64 and len(seen) == 49  # never more than one 8x8 tile at once
    assert I.tiling.tile_starts(40, 8, 2) == [0, 6, 12, 18, 24, 30, 32]


def test_decode_tiled_rejects_bad_tiles():
    with pytest.raises(ValueError, match="overlap < tile"):
        I.decode_tiled(None, torch.zeros(1, 3, 4, 4), tile=4, overlap=4, decode_fn=lambda z: z)


# ---------------------------------------------------------------------------------------------
# sampling

@pytest.mark.parametrize("sampler", list(I.SAMPLER_NAMES))
def test_every_sampler_runs_and_is_reproducible(sampler):
    model = make_model("uncond")
    a = I.sample_latents(model, (2, 3, 8, 8), sampler=sampler, steps=3, generator=I.make_generator(1), progress=False)
    b = I.sample_latents(model, (2, 3, 8, 8), sampler=sampler, steps=3, generator=I.make_generator(1), progress=False)
    assert a.shape == (2, 3, 8, 8) and torch.isfinite(a).all() and torch.equal(a, b)
    assert len(I.noise_levels(model, sampler, 3)) == 4
    if sampler == "ddpm":  # steps >= T: the full ancestral chain, ending at sigma = 0
        levels = I.noise_levels(model, sampler, T)
        assert len(levels) == T + 1 and levels[-1] == 0


def test_guidance_scale_one_is_conditional_sampling():
    model = make_model("text")
    c, uc = I.prompt_conditioning(model, ["a red circle on a blue background"] * 2)
    run = lambda **kw: I.sample_latents(model, (2, 3, 8, 8), cond=c, steps=3,  # noqa: E731
                                        generator=I.make_generator(3), progress=False, **kw)
    plain = run()
    assert torch.equal(run(uncond=uc, scale=1.0), plain)
    assert not torch.allclose(run(uncond=uc, scale=4.0), plain, atol=1e-4)
    with pytest.raises(ValueError, match="needs an unconditional"):
        run(scale=4.0)


def test_sampler_argument_errors():
    model = make_model("uncond")
    with pytest.raises(ValueError, match="only defined for the ddim"):
        I.sample_latents(model, (1, 3, 8, 8), sampler="plms", eta=0.5, steps=2)
    with pytest.raises(ValueError, match="masked sampling"):
        I.sample_latents(model, (1, 3, 8, 8), sampler="dpm", steps=2, mask=torch.ones(1, 1, 8, 8),
                         x0=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="sampler must be one of"):
        I.sample_latents(model, (1, 3, 8, 8), sampler="euler", steps=2)


def test_convolutional_sampling_beyond_training_size():
    model = make_model("semantic")
    labels = torch.randint(0, 5, (1, 24, 40))
    opts = I.SamplingOptions(steps=2, progress=False)
    images = I.semantic2img(model, labels, 5, opts, generator=I.make_generator(0))
    assert images.shape == (1, 3, 24, 40) and images.abs().max() <= 1.0  # 12x20 latent, trained on 8x8


# ---------------------------------------------------------------------------------------------
# inpainting

def test_mask_guided_inpainting_keeps_known_latents_exactly():
    model = make_model("uncond")
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:9, 2:11] = 1.0  # fill in this block
    for sampler in ("ddim", "plms", "ddpm"):
        res = I.inpaint(model, image, mask, I.SamplingOptions(sampler=sampler, steps=3, progress=False),
                        generator=I.make_generator(0))
        known = res.known.bool().expand_as(res.latents)
        assert res.known[0, 0, 2:4, 1:5].eq(0).all() and res.known[0, 0, 5:, :].eq(1).all()
        assert torch.equal(res.latents[known], res.x0[known])  # exact, not approximately
        assert (res.latents[~known] - res.x0[~known]).abs().mean() > 0.1  # the hole was resampled
        keep = (mask == 0).expand_as(image)
        assert torch.equal(res.images[keep], image[keep])  # known pixels pasted back


@pytest.mark.parametrize("kind", ["inpainting", "inpainting_data"])
def test_concat_inpainting_model_conditioning(kind):
    model = make_model(kind)
    seen = {}
    apply, encode = model.apply_model, model.get_learned_conditioning

    def spy(x, t, cond):
        seen["cond"] = cond
        return apply(x, t, cond)

    def spy_encode(x):
        seen["masked"] = x
        return encode(x)

    model.apply_model, model.get_learned_conditioning = spy, spy_encode
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1.0
    res = I.inpaint(model, image, mask, I.SamplingOptions(steps=2, progress=False), generator=I.make_generator(0))
    cond, masked = seen["cond"], seen["masked"]
    if kind == "inpainting":  # released convention: hole black, mask channel in {-1, 1}
        assert cond.shape == (1, 4, 8, 8) and masked[..., :8, :].eq(-1).all()
        assert set(cond[0, 3].unique().tolist()) == {-1.0, 1.0} and cond[0, 3, :4].eq(1).all()
    else:  # a concat model without the mask channel: same black hole, no mask channel
        assert cond.shape == (1, 3, 8, 8) and masked[..., :8, :].eq(-1).all()
    assert torch.equal(masked[..., 8:, :], image[..., 8:, :])
    keep = (mask == 0).expand_as(image)
    assert torch.equal(res.images[keep], image[keep]) and res.known is None


def test_input_checks_name_the_problem():
    model = make_model("uncond")
    opts = I.SamplingOptions(steps=2, progress=False)
    with pytest.raises(ValueError, match="--mask is 8x8 but --image is 16x16"):
        I.inpaint(model, torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 8, 8), opts)
    with pytest.raises(ValueError, match="multiple of the first stage's downsampling factor f=2"):
        I.inpaint(model, torch.zeros(1, 3, 15, 16), torch.zeros(1, 1, 15, 16), opts)
    with pytest.raises(ValueError, match=r"--image: values must lie in \[-1.0, 1.0\]"):
        I.inpaint(model, torch.full((1, 3, 16, 16), 2.0), torch.zeros(1, 1, 16, 16), opts)
    with pytest.raises(ValueError, match="--H/--W"):
        I.latent_size(model, 17, 16)
    assert I.latent_size(model, None, None) == (8, 8) and I.latent_size(model, 32, 48) == (16, 24)


def test_long_prompts_warn_once_and_are_truncated():
    model = make_model("text")
    prompt = " ".join(["a red circle"] * 10)  # 30 words > 12 tokens
    with pytest.warns(UserWarning, match="keeps only the first 12") as record:
        c, _ = I.prompt_conditioning(model, [prompt])
    assert len([w for w in record if "truncated" in str(w.message) or "keeps only" in str(w.message)]) == 1
    assert c.shape == (1, 12, 16)


def test_model_kinds():
    kinds = {k: I.model_kind(make_model(k)) for k in
             ("uncond", "class", "text", "layout", "inpainting", "inpainting_data", "superres", "semantic")}
    assert kinds == {"uncond": "unconditional", "class": "class", "text": "text", "layout": "layout",
                     "inpainting": "inpainting", "inpainting_data": "inpainting", "superres": "superres",
                     "semantic": "semantic"}


def test_img2img_matches_the_original_ddim_encode_decode():
    from ldm.models.diffusion.ddim import DDIMSampler

    model = make_model("text")
    c, uc = I.prompt_conditioning(model, ["a red circle"] * 2)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    steps, t_enc = 5, 3
    ddim = DDIMSampler(model)
    ddim.make_schedule(steps, ddim_eta=0.0, verbose=False)
    z_enc_ref = ddim.stochastic_encode(z0, torch.full((2,), t_enc - 1), noise=noise)
    ref = ddim.decode(z_enc_ref, c, t_enc, unconditional_guidance_scale=3.0, unconditional_conditioning=uc)
    sigma = I.noise_levels(model, "ddim", steps)[steps - t_enc]
    z_enc = I.noise_to_level(z0, sigma, noise)
    torch.testing.assert_close(z_enc, z_enc_ref, rtol=1e-5, atol=1e-5)
    out = I.sample_latents(model, tuple(z0.shape), cond=c, uncond=uc, scale=3.0, steps=steps, x_T=z_enc,
                           first_step=steps - t_enc, progress=False)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
