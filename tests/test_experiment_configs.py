"""Every experiment config (configs/**, models/**) builds and trains one step on fake data.

Each config is shrunk (tiny channel counts, one res block, 32-128 px images, batch 2), pointed at
fake data trees in the documented layouts (LDM_DATA_ROOT), and run through the project's own
trainer entry point (``ldm.trainer.run.run``) for one training batch and one validation batch.
Full-size checks build on the meta device: first-stage state-dict layouts equal the original
manifests, and the LDM-f sweep has the UNet sizes its comments state.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from ldm.config import ConfigError, check_config_tree, set_trust_all_targets
from ldm.util import instantiate_from_config
from tests import fake_data_trees
from tests.reference_data import load_config, manifest_for, state_dict_shapes

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(REPO)) for root in ("configs", "models") for p in (REPO / root).rglob("*.yaml"))
LDM_TARGET = "ldm.models.diffusion.ddpm.LatentDiffusion"

# our config -> the original it corresponds to (below tests/reference/compvis-configs)
ORIGINALS = {
    "configs/ldm/celebahq-ldm-vq-4.yaml": "latent-diffusion/configs/latent-diffusion/celebahq-ldm-vq-4.yaml",
    "configs/ldm/ffhq-ldm-vq-4.yaml": "latent-diffusion/configs/latent-diffusion/ffhq-ldm-vq-4.yaml",
    "configs/ldm/lsun_bedrooms-ldm-vq-4.yaml": "latent-diffusion/configs/latent-diffusion/lsun_bedrooms-ldm-vq-4.yaml",
    "configs/ldm/lsun_churches-ldm-kl-8.yaml": "latent-diffusion/configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml",
    "configs/ldm/cin-ldm-vq-f8.yaml": "latent-diffusion/configs/latent-diffusion/cin-ldm-vq-f8.yaml",
    "configs/ldm/cin256-v2.yaml": "latent-diffusion/configs/latent-diffusion/cin256-v2.yaml",
    "configs/ldm/txt2img-1p4B.yaml": "latent-diffusion/configs/latent-diffusion/txt2img-1p4B-eval.yaml",
    "configs/ldm/layout2img-openimages.yaml": "latent-diffusion/models/ldm/layout2img-openimages256/config.yaml",
    "configs/ldm/semantic-synthesis-landscapes.yaml": "latent-diffusion/models/ldm/semantic_synthesis256/config.yaml",
    "configs/ldm/bsr-sr-ldm-vq-4.yaml": "latent-diffusion/models/ldm/bsr_sr/config.yaml",
    "configs/ldm/inpainting-places-ldm-vq-4-big.yaml": "latent-diffusion/models/ldm/inpainting_big/config.yaml",
    **{f"models/{p}": f"latent-diffusion/models/{p}" for p in (
        *(f"first_stage_models/{n}/config.yaml" for n in (
            "kl-f4", "kl-f8", "kl-f16", "kl-f32", "vq-f4", "vq-f4-noattn", "vq-f8", "vq-f8-n256", "vq-f16")),
        *(f"ldm/{n}/config.yaml" for n in (
            "celeba256", "ffhq256", "lsun_churches256", "lsun_beds256", "cin256", "text2img256",
            "layout2img-openimages256", "semantic_synthesis256", "semantic_synthesis512", "bsr_sr",
            "inpainting_big")))},
}
INPAINTING = ("configs/ldm/inpainting-places-ldm-vq-4.yaml", "configs/ldm/inpainting-places-ldm-vq-4-noattn.yaml",
              "configs/ldm/inpainting-places-ldm-vq-4-big.yaml", "models/ldm/inpainting_big/config.yaml")


def _plain(rel: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / rel), resolve=True)


def _nodes(tree, suffix: str):
    """Every target/params node whose target ends with ``suffix``."""
    if isinstance(tree, dict):
        if isinstance(tree.get("target"), str) and tree["target"].endswith(suffix):
            yield tree
        for v in tree.values():
            yield from _nodes(v, suffix)
    elif isinstance(tree, list):
        for v in tree:
            yield from _nodes(v, suffix)


# ------------------------------------------------------------------------------ shrinking

def _downsampling(first_stage: dict) -> int:
    if first_stage["target"].endswith("IdentityFirstStage"):
        return 1
    return 2 ** (len(first_stage["params"]["ddconfig"]["ch_mult"]) - 1)


def _shrink_ddconfig(dd: dict, px: int) -> None:
    scale = px / dd.get("resolution", 256)
    dd.update(ch=32, num_res_blocks=1, resolution=px, ch_mult=[min(m, 2) for m in dd["ch_mult"]],
              attn_resolutions=[max(int(r * scale), 1) for r in dd.get("attn_resolutions", [])])


def _shrink_first_stage_params(p: dict, px: int) -> None:
    _shrink_ddconfig(p["ddconfig"], px)
    if "n_embed" in p:
        p["n_embed"] = 32
    p["ckpt_path"] = None


def _shrink_unet(p: dict, latent: int) -> None:
    p.update(image_size=latent, model_channels=32, num_res_blocks=1, use_checkpoint=False,
             channel_mult=[min(m, 2) for m in p["channel_mult"]])
    if p.get("num_head_channels", -1) != -1:
        p["num_head_channels"] = 16
    else:
        p["num_heads"] = 2
    if p.get("context_dim") is not None:
        p.update(context_dim=32, transformer_depth=1)


def shrink(cfg: dict, vocab: Path) -> int:
    """Shrink ``cfg`` in place to CPU size; return the image size (px) its data must deliver."""
    model = cfg["model"]
    p = model["params"]
    if model["target"] == LDM_TARGET:
        f = _downsampling(p["first_stage_config"])
        levels = len(p["unet_config"]["params"]["channel_mult"])
        latent = max(2 ** (levels - 1), 8 if f <= 4 else 4)
        px = f * latent
        p["image_size"] = latent
        _shrink_unet(p["unet_config"]["params"], latent)
        if f > 1:
            _shrink_first_stage_params(p["first_stage_config"]["params"], px)
        p.pop("ckpt_path", None)
        cond = p["cond_stage_config"]
        if isinstance(cond, dict):
            cp = cond.setdefault("params", {}) or {}
            if cond["target"].endswith("ClassEmbedder"):
                cp["embed_dim"] = 32
            if cond["target"].endswith("BERTEmbedder"):
                cp.update(n_embed=32, n_layer=1)
                if cp.get("use_tokenizer", True) and cp.get("word_vocab") is None:
                    cp["tokenizer_vocab"] = str(vocab)
    else:  # a first-stage training config
        px = 32
        _shrink_first_stage_params(p, px)
        for loss in _nodes(p["lossconfig"], "WithDiscriminator"):
            loss.setdefault("params", {}).update(perceptual_weight=0.0, disc_start=0, disc_num_layers=2)
    data = cfg["data"]["params"]
    data.update(batch_size=2, num_workers=0)
    for split in ("train", "validation", "test"):
        if split in data:
            dp = data[split].setdefault("params", {})
            dp["size"] = px
            if "crop_size" in dp:
                dp["crop_size"] = px
            for key in ("length",):
                if key in dp:
                    dp[key] = 4
    data.pop("test", None)
    return px


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return fake_data_trees.build_all(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def env(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("LDM_DATA_ROOT", str(data_root))
    monkeypatch.setenv("LDM_ALLOW_MISSING_CKPT", "1")
    monkeypatch.chdir(tmp_path)  # relative ckpt paths and data/ defaults must not leak into the repo
    yield tmp_path
    set_trust_all_targets(False)


def _small_config(rel: str, tmp_path: Path) -> Path:
    cfg = _plain(rel)
    px = shrink(cfg, fake_data_trees.write_wordpiece_vocab(tmp_path / "vocab.txt"))
    alignment = cfg["model"]["params"].get("representation_alignment")
    if alignment:  # a REPA teacher at the shrunk size, barely trained (the demo trains a real one)
        from ldm.eval.classifier import save_classifier, train_classifier

        teacher = save_classifier(*train_classifier(size=px, width=4, steps=1, batch_size=2, train_images=4,
                                                    val_images=2, progress=False), tmp_path / "teacher")
        alignment["teacher_config"]["params"].update(width=4, size=px, ckpt_path=str(teacher))
    trainable = cfg["model"]["params"].get("unet_trainable")
    if trainable:  # a UNet trained in part starts from a checkpoint these runs lack: its zero-initialised
        trainable.append("out.")  # output layer would stay zero and pass no gradient; train it too here
    lightning = cfg.setdefault("lightning", {})
    lightning.setdefault("trainer", {}).update(accumulate_grad_batches=1, fast_dev_run=1)
    lightning.setdefault("callbacks", {})
    lightning["callbacks"]["image_logger"] = None  # sampling for the image grid is not the point here
    lightning["callbacks"]["learning_rate_logger"] = None  # needs a logger; runs here have none
    lightning["callbacks"]["probe"] = {"target": "tests.fake_data_trees.StepProbe"}
    out = tmp_path / Path(rel).name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _one_step(cfg_path: Path, tmp_path: Path) -> dict:
    from ldm.trainer.run import run
    fake_data_trees.StepProbe.records.clear()
    rc = run(["--base", str(cfg_path), "-t", "--no-test", "--accelerator", "cpu", "--logdir", str(tmp_path / "logs"),
              "--logger", "none", "--seed", "0", "--trust-config-targets"])
    assert rc == 0
    (record,) = fake_data_trees.StepProbe.records
    return record


@pytest.mark.parametrize("rel", CONFIGS)
def test_config_trains_one_step_on_fake_data(rel, env):
    record = _one_step(_small_config(rel, env), env)
    assert record["train_batches"] == 1
    assert record["optimizer_steps"] >= 1
    assert record["grads_finite"] and record["nonzero_grad"]
    assert all(torch.isfinite(torch.tensor(record["losses"])))


# ------------------------------------------------------------------------------ static checks

@pytest.mark.parametrize("rel", CONFIGS)
def test_config_validates_unchanged(rel):
    cfg = OmegaConf.load(REPO / rel)
    assert set(cfg) <= {"model", "data", "lightning"}
    check_config_tree(OmegaConf.masked_copy(cfg, [k for k in ("model", "data") if k in cfg]))
    assert "data" in cfg, f"{rel} has no data section: it cannot train"
    for split in ("train", "validation"):
        fake_data_trees.layout_of(cfg.data.params[split].target)  # every dataset has a documented layout


def _ldm_first_stage_configs():
    return [r for r in CONFIGS if _plain(r)["model"]["target"] == LDM_TARGET]


@pytest.mark.parametrize("rel", [r for r in _ldm_first_stage_configs() if r.startswith("configs/ldm/")])
def test_first_stage_points_at_the_downloaded_checkpoint(rel):
    """configs/ldm/* load models/first_stage_models/<name>/model.ckpt, and <name> is the right model."""
    fs = _plain(rel)["model"]["params"]["first_stage_config"]
    if fs["target"].endswith("IdentityFirstStage"):
        return
    m = re.fullmatch(r"models/first_stage_models/([\w-]+)/model\.ckpt", fs["params"]["ckpt_path"])
    assert m, fs["params"]["ckpt_path"]
    name = m.group(1)
    released = REPO / "models" / "first_stage_models" / name / "config.yaml"
    trained = {"vq-f2": "configs/autoencoder/autoencoder_vq_f2.yaml",
               "vq-f32": "configs/autoencoder/autoencoder_vq_f32.yaml"}
    source = _plain(str(released.relative_to(REPO))) if released.is_file() else _plain(trained[name])
    sp = source["model"]["params"]
    assert fs["params"]["ddconfig"] == sp["ddconfig"]
    assert fs["params"]["embed_dim"] == sp["embed_dim"]
    assert fs["params"].get("n_embed") == sp.get("n_embed")


@pytest.mark.parametrize("rel", sorted(ORIGINALS))
def test_first_stage_layout_equals_the_original(rel):
    """Built at full size on the meta device, the first stage has the original's keys and shapes."""
    manifest = manifest_for(ORIGINALS[rel])["state_dict"]
    params = _plain(rel)["model"]
    if params["target"] == LDM_TARGET:
        fs = copy.deepcopy(params["params"]["first_stage_config"])
        expected = {k[len("first_stage_model."):]: v for k, v in manifest.items() if k.startswith("first_stage_model.")}
    else:
        fs = copy.deepcopy(params)
        fs.pop("base_learning_rate", None)
        fs["params"]["lossconfig"] = {"target": "torch.nn.Identity"}
        expected = {k: v for k, v in manifest.items() if not k.startswith("loss.")}
    fs["params"]["ckpt_path"] = None
    with torch.device("meta"):
        model = instantiate_from_config(fs)
    assert state_dict_shapes(model) == expected


def test_training_configs_match_the_released_first_stages():
    """configs/autoencoder/* train exactly the architecture of the released checkpoints."""
    pairs = {"autoencoder_kl_64x64x3": "kl-f4", "autoencoder_kl_32x32x4": "kl-f8",
             "autoencoder_kl_16x16x16": "kl-f16", "autoencoder_kl_8x8x64": "kl-f32", "autoencoder_vq_f4": "vq-f4",
             "autoencoder_vq_f4_noattn": "vq-f4-noattn", "autoencoder_vq_f8": "vq-f8",
             "autoencoder_vq_f8_n256": "vq-f8-n256", "autoencoder_vq_f16": "vq-f16"}
    for ours, released in pairs.items():
        a = _plain(f"configs/autoencoder/{ours}.yaml")["model"]
        b = _plain(f"models/first_stage_models/{released}/config.yaml")["model"]
        assert a["target"] == b["target"]
        for key in ("ddconfig", "embed_dim", "n_embed"):
            assert a["params"].get(key) == b["params"].get(key), (ours, key)
        la, lb = a["params"]["lossconfig"]["params"], b["params"]["lossconfig"]["params"]
        assert la == lb, ours


def test_ldm_f_sweep_has_the_stated_equal_unet_sizes():
    """Sec. 4.1: the six LDM-f models differ in f only; each config states the UNet sizes of all six."""
    sizes = {}
    for f in (1, 2, 4, 8, 16, 32):
        rel = f"configs/ldm/ldm-f-sweep/cin-ldm-f{f}.yaml"
        text = (REPO / rel).read_text()
        stated = {int(k): float(v) for k, v in re.findall(r"#\s+LDM-(\d+)\s.*?([\d.]+)M\n", text)}
        assert sorted(stated) == [1, 2, 4, 8, 16, 32], rel
        cfg = _plain(rel)["model"]["params"]
        with torch.device("meta"):
            unet = instantiate_from_config(cfg["unet_config"])
        sizes[f] = sum(p.numel() for p in unet.parameters()) / 1e6
        assert abs(sizes[f] - stated[f]) < 0.05, (f, sizes[f], stated[f])
        assert cfg["image_size"] * f == 256 and cfg["unet_config"]["params"]["image_size"] * f == 256
        if f > 1:
            assert _downsampling(cfg["first_stage_config"]) == f
            assert cfg["channels"] == cfg["first_stage_config"]["params"]["embed_dim"]
    assert max(sizes.values()) / min(sizes.values()) < 1.03


def test_cfg_configs_drop_to_a_null_class():
    cfg = _plain("configs/ldm/cin256-v2.yaml")["model"]["params"]
    assert cfg["ucg_rate"] > 0 and cfg["cond_stage_config"]["params"]["null_class"] is True
    assert cfg["ucg_null_class"] == cfg["cond_stage_config"]["params"]["n_classes"] == 1000
    assert _plain("configs/ldm/txt2img-1p4B.yaml")["model"]["params"]["ucg_rate"] > 0


def test_cfg_dropout_is_set_on_the_model_only():
    """Classifier-free-guidance dropout has one place: model.params.ucg_rate (the embedders drop nothing)."""
    for rel in CONFIGS:
        cfg = _plain(rel)["model"]
        for node in _nodes(cfg.get("params", {}), ""):
            assert "ucg_rate" not in (node.get("params") or {}), (rel, node["target"])


@pytest.mark.parametrize("rel", INPAINTING)
def test_inpainting_configs_append_the_mask(rel):
    """Sec. 4.5: UNet input = z_t (3) + E(masked image) (3) + the mask at latent size (1)."""
    p = _plain(rel)["model"]["params"]
    assert (p["cond_stage_key"], p["concat_mask_key"], p["cond_stage_config"]) == (
        "masked_image", "mask", "__is_first_stage__")
    embed = p["first_stage_config"]["params"]["embed_dim"]
    assert p["unet_config"]["params"]["in_channels"] == p["channels"] + embed + 1 == 7


# ------------------------------------------------------------------------------ entry points

def test_dry_run_prints_the_resolved_config(env, capsys):
    from ldm.trainer.run import main
    small = _small_config("configs/ldm/celebahq-ldm-vq-4.yaml", env)
    rc = main(["--base", str(REPO / "configs/ldm/celebahq-ldm-vq-4.yaml"), str(small), "--dry-run",
               "--accelerator", "cpu", "--logdir", str(env / "logs"), "--trust-config-targets"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Resolved config:" in out and "target: ldm.models.diffusion.ddpm.LatentDiffusion" in out
    assert "model_channels: 32" in out  # the second --base overrides the first
    assert "Data train: CelebAHQTrain, 3 examples" in out
    assert not (env / "logs").exists()


def test_missing_data_names_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path))
    data = instantiate_from_config(_plain("configs/ldm/celebahq-ldm-vq-4.yaml")["data"])
    with pytest.raises(FileNotFoundError) as err:
        data.setup("fit")
    msg = str(err.value)
    assert msg.startswith(f"CelebAHQTrain: expected {str(tmp_path / 'celebahq')!r}, which does not exist")
    assert "celebahqtrain.txt" in msg and "Expected layout" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA: checks the no-GPU message")
def test_headline_command_without_gpus_suggests_cpu(tmp_path, capsys):
    from ldm.trainer.run import main, run
    argv = ["--base", str(REPO / "configs/ldm/celebahq-ldm-vq-4.yaml"), "-t", "--gpus", "0,1",
            "--logdir", str(tmp_path)]
    with pytest.raises(ConfigError, match="--accelerator cpu"):
        run(argv)
    assert main(argv) == 2
    assert "--accelerator cpu" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------ download scripts

def _release_names(script: str) -> list[str]:
    text = (REPO / "scripts" / script).read_text()
    block = re.search(r"NAMES=\(([^)]*)\)", text).group(1)
    return block.split()


def test_download_scripts_cover_every_released_config():
    assert sorted(_release_names("download_first_stages.sh")) == sorted(
        p.name for p in (REPO / "models" / "first_stage_models").iterdir())
    assert sorted(_release_names("download_models.sh")) == sorted(p.name for p in (REPO / "models" / "ldm").iterdir())
    text = (REPO / "scripts" / "download_models.sh").read_text()
    for zipname in ("celeba", "ffhq", "lsun_churches", "lsun_bedrooms", "text2img", "cin", "semantic_synthesis",
                    "semantic_synthesis256", "sr_bsr", "layout2img_model", "inpainting_big"):
        assert re.search(rf"\) echo {zipname} ;;", text), zipname
    sourced = re.findall(r"^source .*/([\w.-]+\.sh)\"?$", text, flags=re.M)  # shared helpers, if split out
    text += "".join((REPO / "scripts" / name).read_text() for name in sourced)
    assert "https://ommer-lab.com/files/latent-diffusion" in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("script,name,dest", [("download_first_stages.sh", "vq-f4", "models/first_stage_models/vq-f4"),
                                              ("download_models.sh", "bsr_sr", "models/ldm/bsr_sr")])
def test_download_scripts_fail_clearly_offline(script, name, dest, tmp_path):
    """A failing download (here: a curl that cannot connect) stops the script with the URL named."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text("#!/bin/sh\necho 'curl: (6) Could not resolve host' >&2\nexit 6\n")
    (bin_dir / "curl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(REPO / "scripts" / script), name], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "could not download https://ommer-lab.com/files/latent-diffusion/" in res.stderr
    assert not (tmp_path / dest / "model.zip").exists()
    bad = subprocess.run(["bash", str(REPO / "scripts" / script), "no-such-model"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown" in bad.stderr
