"""Export to diffusers, judged by diffusers itself: for every supported kind of model, a tiny model
made here is exported, loaded with ``DiffusionPipeline.from_pretrained`` (or the component
classes), and sampled from the same initial noise as our DDIM sampler; the images agree to 2e-3
in [0, 1]. Importing the folder back gives our weights bit for bit (ours -> diffusers -> ours).
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

diffusers = pytest.importorskip("diffusers")

import ldm.inference as I  # noqa: E402
from ldm.interop import ConversionError, export_checkpoint, import_folder  # noqa: E402
from ldm.modules.encoders.tokenizers import read_openai_bpe  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402
from tests.test_clip_equivalence import TINY_MERGES, write_openai_bpe  # noqa: E402
from tests.test_inference import first_stage, lightning_checkpoint, model_config, unet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ATOL = 2e-3   # on images in [0, 1]
STEPS = 3
SEED = 7


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(root: Path, name: str, cfg: dict, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A trainer-style run (configs/, checkpoints/last.ckpt) of ``cfg`` with random, non-degenerate
    weights and EMA weights that differ from them."""
    torch.manual_seed(seed)
    build = copy.deepcopy(cfg)
    if "first_stage_config" in build.get("params", {}):
        build["params"]["first_stage_config"]["params"].pop("ckpt_path", None)
    model = instantiate_from_config(build)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output convs/projections: make every input count
            if not p.any():
                p.normal_(0, 0.1)
        if hasattr(model, "model_ema"):
            for n, buf in model.model_ema.named_buffers():
                if n in model.model_ema.m_name2s_name.values():
                    buf.add_(0.01 * torch.randn_like(buf))
    run = root / name
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    data = {"target": "main.DataModuleFromConfig",
            "params": {"train": {"target": "ldm.data.synthetic.SyntheticShapesTrain", "params": {"size": 16}}}}
    OmegaConf.save(OmegaConf.create({"model": cfg, "data": data}), run / "configs" / "project.yaml")
    torch.save(lightning_checkpoint(model), run / "checkpoints" / "last.ckpt")
    return run, model.eval()


def export(tmp_path: Path, name: str, cfg: dict, **kw):
    run, _ = make_run(tmp_path, name, cfg)
    files = I.find_run(run)
    result = export_checkpoint(files.configs, files.ckpt, tmp_path / f"{name}-diffusers", **kw)
    ours = I.load_run(run, device="cpu")  # EMA weights, as exported
    return result, ours, files


def assert_round_trip(result, ours, files) -> None:
    back = import_folder(result.out, files.configs)
    expected = ours.state_dict()
    assert set(back) == set(expected)
    for key, value in expected.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def ddim(**kw) -> I.SamplingOptions:
    return I.SamplingOptions(sampler="ddim", steps=STEPS, progress=False, **kw)


def to01(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    err = float((ours - theirs).abs().max())
    assert err <= ATOL, err
    assert float(ours.std()) > 1e-3  # not a constant image
    return err


def vq_first_stage() -> dict:
    fs = first_stage("vq")
    fs["params"]["ddconfig"].pop("attn_type")  # diffusers' VQModel attends in its middle block
    return fs


# -- unconditional: LDMPipeline -----------------------------------------------------------------------
@pytest.mark.parametrize("first", ["kl", "vq"])
def test_unconditional_ldm_pipeline_matches_our_sampler(tmp_path, first):
    cfg = model_config("uncond")
    if first == "vq":
        cfg["params"]["first_stage_config"] = vq_first_stage()
        cfg["params"]["scale_factor"] = 0.7
    result, ours, files = export(tmp_path, "uncond", cfg)
    assert result.pipeline == "LDMPipeline" and result.ema
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(result.out))
    assert type(pipe).__name__ == "LDMPipeline"
    assert type(pipe.vqvae).__name__ == ("VQModel" if first == "vq" else "AutoencoderKL")
    assert pipe.vqvae.config.scaling_factor == pytest.approx(float(ours.scale_factor))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(SEED), num_inference_steps=STEPS,
                  output_type="np").images
    expected = I.generate(ours, 2, ddim(), generator=torch.Generator().manual_seed(SEED))
    close(to01(expected), torch.from_numpy(theirs).permute(0, 3, 1, 2))
    assert_round_trip(result, ours, files)


def test_scheduler_follows_the_model_schedule_and_parameterisation(tmp_path):
    cfg = model_config("uncond")
    cfg["params"].update(beta_schedule="cosine", parameterization="v")
    result, ours, _ = export(tmp_path, "cosine", cfg)
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(result.out / "scheduler"))
    assert scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(scheduler.alphas_cumprod, ours.alphas_cumprod.float(), atol=1e-6, rtol=1e-5)


# -- text-to-image: StableDiffusionPipeline (CLIP) and LDMTextToImagePipeline (BERT) ---------------------
def clip_config(bpe: Path) -> dict:
    vocab, _ = read_openai_bpe(bpe)
    cfg = model_config("class")
    cfg["params"].update(unet_config=unet(context_dim=32), cond_stage_key="caption", cond_stage_trainable=False,
                         cond_stage_config={"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                            "params": {"max_length": 16, "tokenizer_path": str(bpe),
                                                       "text_config": {"width": 32, "layers": 2, "heads": 4,
                                                                       "mlp_width": 64, "max_length": 16,
                                                                       "vocab_size": len(vocab)}}})
    cfg["params"].pop("ucg_rate")
    return cfg


def test_clip_text_model_runs_as_stable_diffusion_pipeline(tmp_path):
    bpe = write_openai_bpe(tmp_path / "bpe.txt.gz", TINY_MERGES)
    result, ours, files = export(tmp_path, "clip", clip_config(bpe))
    assert result.pipeline == "StableDiffusionPipeline"
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(result.out))
    pipe.set_progress_bar_config(disable=True)
    # the tokenizer came back with our vocabulary, not as an empty offline fallback
    vocab, _ = read_openai_bpe(bpe)
    assert len(pipe.tokenizer) == len(vocab) and pipe.tokenizer.model_max_length == 16
    assert pipe.tokenizer(["a cat"], padding="max_length", max_length=16).input_ids[0] == \
        ours.cond_stage_model.tokenize(["a cat"])[0].tolist()
    assert pipe.safety_checker is None
    # vocab.json + merges.txt too: our tokenizer_path (and older transformers) read the folder's tokenizer
    from ldm.modules.encoders.tokenizers import load_clip_tokenizer
    from_files = load_clip_tokenizer(str(result.out / "tokenizer"))
    assert from_files.get_vocab() == pipe.tokenizer.get_vocab()
    assert from_files(["a cat dog"]).input_ids == pipe.tokenizer(["a cat dog"]).input_ids
    prompts = ["a cat", "dog"]
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(SEED))
    c, uc = I.prompt_conditioning(ours, prompts)
    expected = I.generate(ours, 2, ddim(scale=3.0), cond=c, uncond=uc, x_T=x_T)
    theirs = pipe(prompts, height=16, width=16, num_inference_steps=STEPS, guidance_scale=3.0, latents=x_T.clone(),
                  output_type="pt").images
    close(to01(expected), theirs)
    assert_round_trip(result, ours, files)


def bert_config(max_seq_len: int) -> dict:
    cfg = model_config("text")
    cfg["params"]["cond_stage_config"]["params"]["max_seq_len"] = max_seq_len
    return cfg


def test_bert_text_model_runs_as_ldm_text_to_image_pipeline(tmp_path):
    result, ours, files = export(tmp_path, "bert", bert_config(77))
    assert result.pipeline == "LDMTextToImagePipeline"
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(result.out))
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue square on a green background"]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids, ours.cond_stage_model.tokenize(prompts))
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(SEED))
    c, uc = I.prompt_conditioning(ours, prompts)
    expected = I.generate(ours, 2, ddim(scale=2.0), cond=c, uncond=uc, x_T=x_T)
    # LDMTextToImagePipeline sizes latents as height // 8
    theirs = pipe(prompts, height=64, width=64, num_inference_steps=STEPS, guidance_scale=2.0, latents=x_T.clone(),
                  output_type="pt").images
    close(to01(expected), theirs)
    assert_round_trip(result, ours, files)


def test_bert_model_with_short_context_exports_components(tmp_path):
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
    from transformers import AutoTokenizer

    result, ours, files = export(tmp_path, "bert12", bert_config(12))
    assert result.pipeline is None and not (result.out / "model_index.json").exists()
    assert "max_seq_len=12" in (result.out / "README.md").read_text()
    bert = LDMBertModel.from_pretrained(str(result.out / "bert")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(result.out / "tokenizer"))
    ids = tokenizer(["a red circle"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(bert(ids)[0], ours.cond_stage_model.encode(["a red circle"]), atol=1e-5, rtol=0)
    assert_round_trip(result, ours, files)


# -- super-resolution: LDMSuperResolutionPipeline ---------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_superres_model_runs_as_ldm_superresolution_pipeline(tmp_path, scale):
    cfg = model_config("superres")
    cfg["params"]["scale_factor"] = scale
    result, ours, files = export(tmp_path, "sr", cfg)
    assert result.pipeline == "LDMSuperResolutionPipeline"
    # the pipeline decodes without unscaling: a scale other than 1 is folded into a copy of the autoencoder
    assert (result.out / "first_stage").is_dir() == (scale != 1.0)
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(result.out))
    pipe.set_progress_bar_config(disable=True)
    low = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = I.superres(ours, low, ddim(), generator=torch.Generator().manual_seed(SEED))
    theirs = pipe(low, generator=torch.Generator().manual_seed(SEED), num_inference_steps=STEPS,
                  output_type="pt").images
    close(to01(expected), theirs)
    assert_round_trip(result, ours, files)


def test_vq_superres_with_a_latent_scale_exports_components(tmp_path):
    cfg = model_config("superres")
    cfg["params"].update(scale_factor=0.5, first_stage_config=vq_first_stage())
    result, ours, files = export(tmp_path, "sr-scaled", cfg)
    assert result.pipeline is None
    assert "scale_factor=0.5 cannot be folded" in (result.out / "README_components.md").read_text()
    assert_round_trip(result, ours, files)


# -- autoencoders alone ----------------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["kl", "vq"])
def test_autoencoder_exports_as_diffusers_model(tmp_path, first):
    cfg = first_stage("kl") if first == "kl" else vq_first_stage()
    cfg["params"].pop("ckpt_path", None)
    result, ours, files = export(tmp_path, f"ae-{first}", cfg)
    assert result.kind == "autoencoder" and (result.out / "config.json").is_file()
    cls = diffusers.AutoencoderKL if first == "kl" else diffusers.VQModel
    theirs = cls.from_pretrained(str(result.out)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        if first == "kl":
            torch.testing.assert_close(theirs.encode(x).latent_dist.mean, ours.encode(x).mean, atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(theirs.encode(x).latents, ours.encode(x), atol=1e-4, rtol=0)
        close(to01(ours.decode(z)), to01(theirs.decode(z).sample))
    assert_round_trip(result, ours, files)


# -- no diffusers pipeline: components + README ----------------------------------------------------------
def run_components(folder: Path, cond_input, concat: bool, x_T: torch.Tensor) -> torch.Tensor:
    """The loop README_components.md shows."""
    unet_cls = diffusers.UNet2DModel if concat else diffusers.UNet2DConditionModel
    unet_ = unet_cls.from_pretrained(str(folder), subfolder="unet").eval()
    vae_cls = json.loads((folder / "vae" / "config.json").read_text())["_class_name"]  # AutoencoderKL or VQModel
    vae = getattr(diffusers, vae_cls).from_pretrained(str(folder), subfolder="vae").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    scheduler.set_timesteps(STEPS)
    latents = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            if concat:
                eps = unet_(torch.cat([latents, cond_input], dim=1), t).sample
            else:
                eps = unet_(latents, t, encoder_hidden_states=cond_input).sample
            latents = scheduler.step(eps, t, latents).prev_sample
        return (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


def test_class_model_components_sample_as_ours(tmp_path):
    from safetensors.torch import load_file

    result, ours, files = export(tmp_path, "class", model_config("class"))
    assert result.pipeline is None and result.kind == "class"
    readme = (result.out / "README_components.md").read_text()
    assert "UNet2DConditionModel" in readme and "embedding.weight" in readme
    table = load_file(str(result.out / "cond_stage" / "model.safetensors"))["embedding.weight"]
    labels = torch.tensor([1, 4])
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(SEED))
    c, _ = I.class_conditioning(ours, labels.tolist())
    expected = I.generate(ours, 2, ddim(), cond=c, x_T=x_T)
    close(to01(expected), run_components(result.out, table[labels][:, None], concat=False, x_T=x_T))
    assert_round_trip(result, ours, files)

    # the README's snippet runs as written and samples what our sampler does
    snippet = readme.split("```python\n")[1].split("```")[0].replace('"<this folder>"', repr(str(result.out)))
    torch.manual_seed(SEED)
    namespace: dict = {}
    exec(compile(snippet, "README_components.md", "exec"), namespace)
    torch.manual_seed(SEED)
    x_T = torch.randn(1, 3, 8, 8)
    c, _ = I.class_conditioning(ours, [0])
    close(to01(I.generate(ours, 1, I.SamplingOptions(steps=50, progress=False), cond=c, x_T=x_T)),
          namespace["images"].detach())


def component_condition(ours, kind: str) -> torch.Tensor:
    """The conditioning our conditioner gives for a batch of two (what README_components.md asks for)."""
    g = torch.Generator().manual_seed(2)
    if kind == "semantic":
        return ours.get_learned_conditioning(I.semantic_onehot(torch.randint(0, 5, (2, 16, 16), generator=g), 5))
    if kind == "inpainting_data":  # E(masked image), scaled, concatenated to z_t
        return ours.get_learned_conditioning(torch.rand(2, 3, 16, 16, generator=g) * 2 - 1)
    return ours.get_learned_conditioning(torch.randint(0, 128, (2, 14), generator=g))  # layout: box tokens


@pytest.mark.parametrize("kind", ["semantic", "inpainting_data", "layout"])
def test_spatial_and_layout_components_sample_as_ours(tmp_path, kind):
    cfg = model_config(kind)
    if kind.startswith("inpainting"):
        cfg["params"]["first_stage_config"] = vq_first_stage()
    result, ours, files = export(tmp_path, kind, cfg)
    assert result.pipeline is None and result.kind == kind.split("_")[0]
    concat = kind != "layout"
    info = json.loads((result.out / "cond_stage" / "config.json").read_text())
    assert info["conditioning_key"] == ("concat" if concat else "crossattn")
    c = component_condition(ours, kind)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(SEED))
    expected = I.generate(ours, 2, ddim(), cond=c, x_T=x_T)
    close(to01(expected), run_components(result.out, c, concat=concat, x_T=x_T))
    assert_round_trip(result, ours, files)


# -- options and errors ----------------------------------------------------------------------------------
def test_no_ema_dtype_and_model_card(tmp_path):
    run, trained = make_run(tmp_path, "uncond", model_config("uncond"))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"fid": 12.5}))
    convert = load_script("convert_to_diffusers")
    out = tmp_path / "fp16"
    assert convert.main(["-r", str(run), "--out", str(out), "--no-ema", "--dtype", "fp16",
                         "--metrics", str(metrics)]) == 0
    from safetensors.torch import load_file

    stored = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    raw = trained.model.diffusion_model.state_dict()["out.2.weight"]
    assert torch.equal(stored["conv_out.weight"], raw.half())  # the trained weights, not their EMA
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\nlibrary_name: diffusers")
    for text in ("training steps: 120", "| fid | 12.5 |", "ldm.data.synthetic.SyntheticShapesTrain",
                 "trained (no EMA copy, or --no-ema)", "stored as fp16", "LDMPipeline"):
        assert text in card, text
    assert convert.main(["-r", str(run), "--out", str(out)]) == 2  # an existing folder is never overwritten


def test_unsupported_models_are_clear_errors(tmp_path):
    cfg = model_config("uncond")
    cfg["params"]["first_stage_config"]["params"]["ddconfig"]["attn_resolutions"] = [8]
    with pytest.raises(ConversionError, match=r"first_stage_config\.params\.ddconfig\.attn_resolutions=\[8\]"):
        export(tmp_path, "attn", cfg)
    cfg = model_config("uncond")
    cfg["params"]["first_stage_config"]["params"]["residual_shortcut"] = True
    with pytest.raises(ConversionError, match=r"first_stage_config\.params\.residual_shortcut: diffusers' autoencoders "
                                              "have no pixel-latent shortcut"):
        export(tmp_path, "shortcut", cfg)
    cfg = model_config("uncond")
    cfg["params"]["unet_config"]["params"]["resblock_updown"] = True
    with pytest.raises(ConversionError, match=r"unet_config\.params\.resblock_updown=True"):
        export(tmp_path, "updown", cfg)
    assert not list(tmp_path.glob(".*"))  # no half-written folders left behind

    pixel = {"target": "ldm.models.diffusion.ddpm.DDPM",
             "params": {"timesteps": 100, "image_size": 8, "channels": 3, "unet_config": unet()}}
    with pytest.raises(ConversionError, match="DDPM: only latent diffusion models and autoencoders export"):
        export(tmp_path, "pixel", pixel)
    concat = model_config("superres")
    concat["params"]["cond_stage_key"] = "depth"  # a concat condition no task of ours names
    with pytest.raises(ConversionError, match=r"a 'concat' model \(conditioning_key='concat', "
                                              r"cond_stage_key='depth'\)"):
        export(tmp_path, "depth", concat)
