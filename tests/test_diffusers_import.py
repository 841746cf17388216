"""Import of diffusers-format weights: folders diffusers itself wrote (not only our exports)
become checkpoints that sample here as diffusers samples them, that fine-tuning starts from
(``model.params.ckpt_path``), and that misfit configs reject naming the first bad tensor."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

diffusers = pytest.importorskip("diffusers")

import ldm.inference as I  # noqa: E402
from ldm.interop import ConversionError, import_folder  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402
from tests.test_diffusers_export import SEED, STEPS, close, ddim, load_script, make_run, to01  # noqa: E402
from tests.test_inference import model_config  # noqa: E402
from tests.unet_helpers import randomize  # noqa: E402


def diffusers_ldm_folder(path, beta_end: float = 0.0195, safe_serialization: bool = True):
    """An LDMPipeline built from diffusers' own classes with random weights, in the layout of
    tests/test_inference.py's tiny unconditional model (T = 100, 8x8x3 latents, f = 2)."""
    torch.manual_seed(3)
    unet = randomize(diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32, norm_eps=1e-5))
    vae = randomize(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=3, sample_size=16, scaling_factor=0.8))
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.0015,
                                        beta_end=beta_end, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.LDMPipeline(vqvae=vae, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(path), safe_serialization=safe_serialization)
    return pipe


def write_config(path, cfg: dict):
    OmegaConf.save(OmegaConf.create({"model": cfg}), path)
    return path


def test_diffusers_made_pipeline_imports_and_samples_the_same(tmp_path):
    pipe = diffusers_ldm_folder(tmp_path / "hub-model", safe_serialization=False)  # .bin, as older Hub repos
    assert (tmp_path / "hub-model" / "unet" / "diffusion_pytorch_model.bin").is_file()
    cfg = model_config("uncond")
    with pytest.raises(ConversionError, match=r"scaling_factor=0\.8, but the config's model\.params\.scale_factor "
                                              r"is 1"):
        import_folder(tmp_path / "hub-model", str(write_config(tmp_path / "unscaled.yaml", cfg)))
    cfg["params"]["scale_factor"] = 0.8
    config = write_config(tmp_path / "uncond.yaml", cfg)
    convert = load_script("convert_from_diffusers")
    assert convert.main([str(tmp_path / "hub-model"), "--config", str(config), "--out", str(tmp_path / "m.ckpt")]) == 0
    ours = I.load_model(str(config), tmp_path / "m.ckpt", device="cpu")  # strict: every key present
    assert float(ours.scale_factor) == pytest.approx(0.8)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(SEED), num_inference_steps=STEPS,
                  output_type="np").images
    expected = I.generate(ours, 2, ddim(), generator=torch.Generator().manual_seed(SEED))
    close(to01(expected), torch.from_numpy(theirs).permute(0, 3, 1, 2))


def test_imported_checkpoint_initialises_fine_tuning(tmp_path):
    run, trained = make_run(tmp_path, "uncond", model_config("uncond"))
    out = tmp_path / "export"
    assert load_script("convert_to_diffusers").main(["-r", str(run), "--out", str(out)]) == 0
    config = write_config(tmp_path / "uncond.yaml", model_config("uncond"))
    ckpt = tmp_path / "imported.safetensors"
    assert load_script("convert_from_diffusers").main([str(out), "--config", str(config), "--out", str(ckpt)]) == 0
    cfg = copy.deepcopy(model_config("uncond"))
    cfg["params"]["ckpt_path"] = str(ckpt)
    cfg["params"]["first_stage_config"]["params"].pop("ckpt_path")
    model = instantiate_from_config(cfg)  # what main.py does with model.params.ckpt_path
    trained.model_ema.copy_to(trained.model)  # the export carried the EMA weights
    for key, value in trained.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[key], value), key
    decoder = trained.first_stage_model.decoder
    assert torch.equal(model.first_stage_model.decoder.conv_out.weight, decoder.conv_out.weight)


def test_mismatched_config_names_the_first_bad_tensor(tmp_path, capsys):
    diffusers_ldm_folder(tmp_path / "hub-model")
    cfg = model_config("uncond")
    cfg["params"]["scale_factor"] = 0.8
    cfg["params"]["unet_config"]["params"]["model_channels"] = 64
    config = write_config(tmp_path / "wide.yaml", cfg)
    with pytest.raises(ConversionError, match=r"unet: tensor 'time_embedding\.linear_1\.weight' has shape \(128, 32\), "
                                              r"but the config's 'time_embed\.0\.weight' needs \(256, 64\)"):
        import_folder(tmp_path / "hub-model", str(config))
    convert = load_script("convert_from_diffusers")
    assert convert.main([str(tmp_path / "hub-model"), "--config", str(config), "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "time_embedding.linear_1.weight" in capsys.readouterr().err and not (tmp_path / "x.ckpt").exists()

    cfg = model_config("uncond")
    cfg["params"]["unet_config"]["params"]["num_res_blocks"] = 2
    with pytest.raises(ConversionError, match=r"unet: the config expects tensor .* which the folder lacks"):
        import_folder(tmp_path / "hub-model", str(write_config(tmp_path / "deep.yaml", cfg)))


def test_schedule_and_missing_components_are_errors(tmp_path):
    diffusers_ldm_folder(tmp_path / "other-schedule", beta_end=0.012)
    cfg = model_config("uncond")
    cfg["params"]["scale_factor"] = 0.8
    config = write_config(tmp_path / "uncond.yaml", cfg)
    with pytest.raises(ConversionError, match=r"scheduler_config\.json: its noise schedule .* differs"):
        import_folder(tmp_path / "other-schedule", str(config))

    run, _ = make_run(tmp_path, "class", model_config("class"))
    out = tmp_path / "class-export"
    assert load_script("convert_to_diffusers").main(["-r", str(run), "--out", str(out)]) == 0
    shutil.rmtree(out / "cond_stage")
    class_config = write_config(tmp_path / "class.yaml", model_config("class"))
    with pytest.raises(ConversionError, match="conditioner ClassEmbedder needs a text_encoder/, bert/ or cond_stage/"):
        import_folder(out, str(class_config))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"no unet/ folder"):
        import_folder(tmp_path / "empty", str(config))


def test_push_to_hub_offline_fails_clearly_and_keeps_the_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def offline(self, *args, **kwargs):
        calls.append(kwargs.get("repo_id", args[0] if args else None))
        raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", offline)
    run, _ = make_run(tmp_path, "uncond", model_config("uncond"))
    out = tmp_path / "export"
    code = load_script("convert_to_diffusers").main(["-r", str(run), "--out", str(out), "--push-to-hub", "me/tiny-ldm"])
    assert code == 1 and calls == ["me/tiny-ldm"]
    err = capsys.readouterr().err
    assert "--push-to-hub me/tiny-ldm: upload failed (ConnectionError" in err and f"complete at {out}" in err
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "LDMPipeline"
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_stable_diffusion_format_folder_imports_with_its_tokenizer(tmp_path):
    """Weights published as a StableDiffusionPipeline (CLIP text encoder, tokenizer) come in and
    sample as the pipeline does."""
    import transformers

    from ldm.modules.encoders.tokenizers import load_clip_tokenizer
    from tests.test_clip_equivalence import TINY_MERGES, write_openai_bpe

    torch.manual_seed(4)
    tokenizer = load_clip_tokenizer(str(write_openai_bpe(tmp_path / "bpe.txt.gz", TINY_MERGES)))
    tokenizer.model_max_length = 16
    text_encoder = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)))
    unet = randomize(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2))
    vae = randomize(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, sample_size=16))
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    folder = tmp_path / "sd-format"
    pipe.save_pretrained(str(folder))

    cfg = model_config("class")
    dd = dict(cfg["params"]["first_stage_config"]["params"]["ddconfig"], z_channels=4)
    cfg["params"].update(
        linear_start=0.00085, linear_end=0.012, channels=4, scale_factor=0.18215, cond_stage_key="caption",
        cond_stage_trainable=False,
        first_stage_config={"target": "ldm.models.autoencoder.AutoencoderKL",
                            "params": {"embed_dim": 4, "ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"}}},
        unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                     "params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                                "num_res_blocks": 1, "attention_resolutions": [1], "channel_mult": [1, 2],
                                "num_heads": 2, "use_spatial_transformer": True, "context_dim": 32, "legacy": False}},
        cond_stage_config={"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                           "params": {"max_length": 16, "tokenizer_path": str(tmp_path / "bpe.txt.gz"),
                                      "text_config": {"width": 32, "layers": 2, "heads": 4, "mlp_width": 64,
                                                      "max_length": 16, "vocab_size": len(tokenizer)}}})
    cfg["params"].pop("ucg_rate")
    config = write_config(tmp_path / "sd.yaml", cfg)
    assert load_script("convert_from_diffusers").main([str(folder), "--config", str(config),
                                                       "--out", str(tmp_path / "sd.ckpt")]) == 0
    ours = I.load_model(str(config), tmp_path / "sd.ckpt", device="cpu")
    prompts = ["a cat", "dog"]
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(SEED))
    c, uc = I.prompt_conditioning(ours, prompts)
    expected = I.generate(ours, 2, ddim(scale=4.0), cond=c, uncond=uc, x_T=x_T)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompts, height=16, width=16, num_inference_steps=STEPS, guidance_scale=4.0, latents=x_T.clone(),
                  output_type="pt").images
    close(to01(expected), theirs)
