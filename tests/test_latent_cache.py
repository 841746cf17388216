"""The latent cache: training from cached first-stage latents is training on the fly, minus the encoder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from ldm.config.errors import ConfigError
from ldm.config.loading import load_experiment
from ldm.data import latent_cache as lc
from ldm.data.base import collate_examples
from ldm.util import instantiate_from_config

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo" / "ldm_class.yaml")

# The demo class config shrunk: 16 px images, an f = 4 first stage (the demo's is f = 2) -> 4x4x3 latents.
TINY = [
    "data.params.batch_size=4", "data.params.train.params.size=16", "data.params.train.params.length=8",
    "data.params.validation.params.size=16", "data.params.validation.params.length=4",
    "model.params.first_stage_config.params.ddconfig.resolution=16",
    "model.params.first_stage_config.params.ddconfig.ch_mult=[1,1,2]",
    "model.params.image_size=4", "model.params.unet_config.params.image_size=4",
    "model.params.unet_config.params.model_channels=32", "model.params.unet_config.params.num_head_channels=16",
    "model.params.unet_config.params.context_dim=16", "model.params.cond_stage_config.params.embed_dim=16",
    "model.params.representation_alignment=null",  # its teacher sees images; a cached batch has latents only
]
VQ_FIRST_STAGE = [  # a VQ first stage (4x4x3 latents from 8 codes) and a frozen class embedder
    "model.params.first_stage_config.target=ldm.models.autoencoder.VQModelInterface",
    "model.params.first_stage_config.params.n_embed=8",
    "model.params.first_stage_config.params.ddconfig.double_z=false",
    "model.params.cond_stage_trainable=false", "model.params.ucg_rate=0.0", "model.params.scale_by_std=false",
]


def setup_model(overrides=()):
    config = load_experiment([DEMO], [*TINY, *overrides])
    if config.model.params.first_stage_config.target.endswith("VQModelInterface"):
        config.model.params.first_stage_config.params.pop("residual_shortcut")  # the demo's KL first stage's
    pl.seed_everything(0)
    model = instantiate_from_config(config.model, path="model")
    with torch.no_grad():  # the UNet's output conv starts at zero: perturb it so the loss sees every weight
        for p in model.model.diffusion_model.out.parameters():
            p.normal_(0, 0.05)
    return config, model


def first_batch(dataset, n=4):
    return collate_examples([dataset[i] for i in range(n)])


@pytest.mark.parametrize("variant", ["kl", "vq"])
def test_cached_training_loss_equals_on_the_fly_encoding(tmp_path, variant):
    """Same batch, same seed: the loss from the cache equals the loss from encoding the images, to
    float32 rounding (atol 1e-6; the same encoder ran on the same batch, so in practice it is exact).
    KL: z is still drawn from the cached posterior, with the same draw; VQ: the cached encoder output
    and the frozen embedder's cached τ(y)."""
    config, model = setup_model(VQ_FIRST_STAGE if variant == "vq" else ())
    model.train()
    lc.build_cache(model, config, tmp_path, batch_size=4)
    manifest = json.loads((tmp_path / lc.MANIFEST).read_text())
    assert manifest["splits"]["train"]["length"] == 8 and manifest["splits"]["train"]["kind"] == variant
    images = first_batch(instantiate_from_config(config.data.params.train))
    cached = first_batch(lc.CachedLatents(str(tmp_path), "train"))
    assert "image" not in cached and cached["class_label"].tolist() == images["class_label"].tolist()
    if variant == "vq":
        assert lc.COND_KEY in cached and lc.MEAN_KEY not in cached
    else:  # the trainable embedder cannot be cached; ucg_rate 0.1 drops labels with the same draws
        assert lc.MEAN_KEY in cached and lc.COND_KEY not in cached
    losses = []
    for batch in (images, cached):
        torch.manual_seed(1)
        loss, logs = model.shared_step(batch)
        losses.append((loss, logs))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(losses[1][1]["train/loss_simple"], losses[0][1]["train/loss_simple"], rtol=0,
                               atol=1e-6)
    # The latent is a fresh draw each step, not a frozen sample: two steps see different z.
    torch.manual_seed(2)
    z1 = model.get_input(cached, "image")[0]
    z2 = model.get_input(cached, "image")[0]
    assert (variant == "vq") == torch.equal(z1, z2)


def test_scale_by_std_from_the_cache_matches_encoding(tmp_path):
    config, model = setup_model()
    lc.build_cache(model, config, tmp_path, splits=["train"], batch_size=4)
    images = first_batch(instantiate_from_config(config.data.params.train))
    cached = first_batch(lc.CachedLatents(str(tmp_path), "train"))
    scales = []
    for batch in (images, cached):
        model.scale_factor.fill_(1.0)
        torch.manual_seed(3)
        model.on_train_batch_start(batch, 0)
        scales.append(model.scale_factor.clone())
    assert scales[0] != 1.0
    torch.testing.assert_close(scales[1], scales[0], rtol=1e-6, atol=0)


def test_a_changed_first_stage_or_data_config_is_named(tmp_path):
    config, model = setup_model()
    lc.build_cache(model, config, tmp_path, batch_size=4)
    data = lc.cached_data_config(config, model, tmp_path)
    assert data.params.train.target == "ldm.data.latent_cache.CachedLatents"
    config.data.params.train.params.size = 32
    with pytest.raises(ConfigError, match=r"out of date.*the data config"):
        lc.cached_data_config(config, model, tmp_path)
    config.data.params.train.params.size = 16
    with torch.no_grad():
        model.first_stage_model.decoder.conv_out.bias.add_(1.0)
    with pytest.raises(ConfigError, match=r"first stage's weights") as err:
        lc.cached_data_config(config, model, tmp_path)
    assert "data config" not in str(err.value)
    with pytest.raises(ConfigError, match="no manifest.json"):
        lc.cached_data_config(config, model, tmp_path / "missing")


def test_missing_split_is_refused(tmp_path):
    config, model = setup_model()
    lc.build_cache(model, config, tmp_path, splits=["train"], batch_size=4)
    with pytest.raises(ConfigError, match=r"data\.params\.validation.*no validation split"):
        lc.cached_data_config(config, model, tmp_path)


class FlippingImages(Dataset):
    """Random horizontal flips, as an augmenting dataset would do."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        image = torch.arange(16 * 16 * 3, dtype=torch.float32).reshape(16, 16, 3) / 768
        return {"image": image.flip(1) if torch.rand(()) < 0.5 else image, "class_label": 0}


def test_random_augmentation_is_refused():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"data\.params\.train.*augments at random"):
        lc.check_deterministic(FlippingImages(), "image", "data.params.train", probes=4)


def test_cache_script_then_main_trains_from_it(tmp_path):
    """scripts/cache_latents.py and main.py --latent-cache, end to end (two training steps)."""
    import importlib.util

    from ldm.trainer.run import run

    spec = importlib.util.spec_from_file_location("cache_latents", REPO / "scripts" / "cache_latents.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "cache"
    assert script.main(["--base", DEMO, *TINY, "--out", str(out), "--batch-size", "4"]) == 0
    quick = ["lightning.trainer.val_check_interval=2", "lightning.trainer.limit_val_batches=1",
             "lightning.callbacks.image_logger.params.batch_frequency=2",
             "lightning.callbacks.image_logger.params.log_images_kwargs.N=2",
             "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2",
             "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false"]
    args = ["--base", DEMO, "-t", "--accelerator", "cpu", "--logger", "csv", "-l", str(tmp_path / "logs"),
            "--max_steps", "2", "--no-test", *TINY, *quick]
    assert run([*args, "--latent-cache", str(out)]) == 0
    logged = list((tmp_path / "logs").rglob("images/train/*.png"))
    assert logged, "the image logger decodes cached latents for its input rows"
    # Another seed builds another random first stage: the cache no longer matches it.
    with pytest.raises(ConfigError, match="first stage's weights"):
        run([*args, "--seed", "5", "--latent-cache", str(out)])
