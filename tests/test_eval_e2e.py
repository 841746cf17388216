"""scripts/evaluate.py end to end on tiny models saved as the trainer saves them: sampling in
shards and scoring, resuming an interrupted evaluation (same images as an uninterrupted run),
the reference-statistics cache, paired metrics, and the autoencoder, super-resolution and
inpainting protocols. A tiny feature network stands in for Inception (the Inception path itself
is tested in test_eval_inception.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_inference import first_stage, write_run
from tests.test_scripts import script

import ldm.eval as E
import ldm.eval.protocols as P
from ldm.config import extra_targets

FAST = ["--steps", "2", "--no-progress", "--device", "cpu", "--no-stats-cache"]
TINY = "tests.test_eval_e2e.TinyFeatures"


class TinyFeatures(torch.nn.Module):
    """4x4 average-pooled pixels as features, a fixed linear map of them as 5-class logits."""

    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.head = torch.nn.Linear(48, n_classes)

    def forward(self, x):
        f = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return f, self.head(f)


@pytest.fixture(scope="module")
def evaluate():
    return script("evaluate")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    return {kind: write_run(root, kind)[0] for kind in ("class", "text", "superres", "inpainting")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-files")
    torch.manual_seed(0)
    torch.save({"state_dict": TinyFeatures().state_dict()}, root / "tiny.ckpt")
    (root / "features.yaml").write_text(f"target: {TINY}\nname: tiny\nckpt: {root / 'tiny.ckpt'}\n")
    rng = np.random.default_rng(0)
    np.savez(root / "real.npz", arr_0=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    for split, extra in (("ae", ""), ("sr", "      lr_factor: 2\n"), ("inpaint", "      inpainting_masks: true\n")):
        (root / f"data-{split}.yaml").write_text(
            "data:\n  params:\n    validation:\n      target: ldm.data.synthetic.SyntheticShapesValidation\n"
            f"      params:\n        size: 16\n        length: 5\n{extra.replace('      ', '        ')}")
    return root


def run(evaluate, *argv):
    with extra_targets(TINY):
        return evaluate.main([str(a) for a in argv])


def shards(outdir: Path) -> list[dict]:
    out = []
    for f in sorted((outdir / "shards").glob("shard-*.npz")):
        with np.load(f) as z:
            out.append({k: z[k] for k in z.files})
    return out


def test_sample_score_and_resume_an_interrupted_evaluation(evaluate, runs, files, tmp_path, monkeypatch, capsys):
    args = ["-r", runs["class"], "-n", 10, "--batch_size", 2, "--shard-size", 4, *FAST, "--real", files / "real.npz",
            "--metrics", "fid,kid,prc,isc,acc", "--feature-extractor", files / "features.yaml",
            "--eval-batch-size", 3]
    full = tmp_path / "full"
    results = run(evaluate, *args, "--outdir", full, "--json", tmp_path / "full.json")
    written = json.loads((tmp_path / "full.json").read_text())
    assert set(written) == {"fid", "kid_mean", "kid_std", "precision", "recall", "isc_mean", "isc_std", "accuracy",
                            "feature_extractor"}
    assert written["feature_extractor"] == "tiny (not Inception)"
    assert written == results
    assert "tiny (not Inception)" in capsys.readouterr().out
    parts = shards(full)
    assert [len(p["indices"]) for p in parts] == [4, 4, 2]
    labels = np.concatenate([p["labels"] for p in parts])
    np.testing.assert_array_equal(labels, np.arange(10) % 5)  # class-balanced: class of sample i is i mod 5
    images = np.concatenate([p["images"] for p in parts])
    assert images.shape == (10, 16, 16, 3) and images.dtype == np.uint8
    # the figures are those of the library on the same arrays
    ext = E.ModuleFeatures(TinyFeatures(), "tiny")
    ext.module.load_state_dict(torch.load(files / "tiny.ckpt")["state_dict"])
    fake_f = E.extract_features(ext, [images], progress=False)
    real_f = E.extract_features(ext, [np.load(files / "real.npz")["arr_0"]], progress=False)
    assert results["fid"] == pytest.approx(E.fid(E.Statistics.from_features(real_f.features),
                                                 E.Statistics.from_features(fake_f.features)), rel=1e-6)
    assert results["accuracy"] == pytest.approx(float((fake_f.logits.argmax(1) == labels).mean()))

    # interrupted in the second shard: the first shard is on disk, nothing half-written
    interrupted = tmp_path / "interrupted"
    real_generate, calls = P.generate, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate(*a, **kw)

    monkeypatch.setattr(P, "generate", failing)
    with pytest.raises(KeyboardInterrupt):
        run(evaluate, *args, "--outdir", interrupted)
    assert sorted(p.name for p in (interrupted / "shards").iterdir()) == ["manifest.json", "shard-00000.npz"]
    monkeypatch.setattr(P, "generate", real_generate)
    resumed = run(evaluate, *args, "--outdir", interrupted)
    assert "6 drawn now, 4 found from an earlier run" in capsys.readouterr().out
    for a, b in zip(shards(full), shards(interrupted), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert resumed == results
    # a finished evaluation reruns without sampling; other settings are refused, not mixed
    run(evaluate, *args, "--outdir", interrupted)
    assert "0 drawn now, 10 found" in capsys.readouterr().out
    # more samples later: the first 10 are kept, the partial last shard is completed
    more = list(args)
    more[more.index("-n") + 1] = 12
    run(evaluate, *more, "--outdir", interrupted)
    assert "4 drawn now, 8 found" in capsys.readouterr().out
    extended = np.concatenate([p["images"] for p in shards(interrupted)])
    np.testing.assert_array_equal(extended[:10], images)
    np.testing.assert_array_equal(np.concatenate([p["labels"] for p in shards(interrupted)]), np.arange(12) % 5)
    other = list(args)
    other[other.index("--steps") + 1] = "3"
    with pytest.raises(SystemExit, match="other settings .*steps: 2 -> 3"):
        run(evaluate, *other, "--outdir", interrupted)


def test_text_models_sample_one_caption_per_line(evaluate, runs, files, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\n\na blue square\n")
    feat = ["--real", files / "real.npz", "--metrics", "fid", "--feature-extractor", files / "features.yaml"]
    run(evaluate, "-r", runs["text"], "--captions", captions, *FAST, *feat, "--outdir", tmp_path / "t")
    (part,) = shards(tmp_path / "t")
    assert len(part["images"]) == 2 and "labels" not in part  # N defaults to one sample per caption
    run(evaluate, "-r", runs["text"], "--captions", captions, "-n", 3, "--scale", 2.0, *FAST, *feat,
        "--outdir", tmp_path / "t3")
    assert len(shards(tmp_path / "t3")[0]["images"]) == 3
    with pytest.raises(SystemExit, match="text-conditioned model needs --captions FILE"):
        run(evaluate, "-r", runs["text"], *FAST, *feat, "--outdir", tmp_path / "t4")
    with pytest.raises(SystemExit, match="--captions is for text-conditioned models; this one is 'class'"):
        run(evaluate, "-r", runs["class"], "--captions", captions, *FAST, *feat, "--outdir", tmp_path / "t5")


def test_a_first_stage_checkpoint_alone(evaluate, files, tmp_path):
    """Tab. 8 evaluates autoencoders themselves: --config/--ckpt of a first stage."""
    from omegaconf import OmegaConf

    from ldm.data.synthetic import SyntheticShapesValidation
    from ldm.inference import to_uint8
    from ldm.util import instantiate_from_config

    cfg = first_stage("kl")
    cfg["params"].pop("ckpt_path")
    torch.manual_seed(0)
    ae = instantiate_from_config(cfg)
    torch.save({"state_dict": ae.state_dict()}, tmp_path / "ae.ckpt")
    OmegaConf.save(OmegaConf.create({"model": cfg}), tmp_path / "ae.yaml")
    out = run(evaluate, "--config", tmp_path / "ae.yaml", "--ckpt", tmp_path / "ae.ckpt", "--task", "autoencoder",
              "--data", files / "data-ae.yaml", "--data-param", "length=3", *FAST, "--metrics", "psnr,ssim",
              "--outdir", tmp_path / "ae-eval")
    (part,) = shards(tmp_path / "ae-eval")
    data = SyntheticShapesValidation(size=16, length=3)
    x = torch.from_numpy(np.stack([data[i]["image"] for i in range(3)])).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = ae.eval()(x, sample_posterior=False)[0].clamp(-1, 1)  # D(E(x)) with the posterior mode
    diff = np.abs(part["images"].astype(int) - to_uint8(expected).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float noise at rounding boundaries only
    assert out["psnr"] == pytest.approx(E.psnr_values(part["reference"], part["images"]).mean())
    with pytest.raises(SystemExit, match="--task samples samples a diffusion model; .* AutoencoderKL"):
        run(evaluate, "--config", tmp_path / "ae.yaml", "--ckpt", tmp_path / "ae.ckpt", *FAST, "--metrics", "isc",
            "--outdir", tmp_path / "ae-samples")


def test_scoring_paired_metrics_and_the_statistics_cache(evaluate, files, tmp_path, capsys):
    rng = np.random.default_rng(1)
    real = np.load(files / "real.npz")["arr_0"]
    fake = np.clip(real.astype(int) + rng.integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    folder = tmp_path / "fake"
    folder.mkdir()
    for i, arr in enumerate(fake):
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    out = run(evaluate, "--real", files / "real.npz", "--fake", folder, "--metrics", "psnr,ssim", "--no-progress",
              "--json", tmp_path / "m.json")
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"psnr", "psnr_std", "ssim", "ssim_std"}
    assert out["psnr"] == pytest.approx(E.psnr_values(real, fake).mean())
    assert out["ssim"] == pytest.approx(E.ssim_values(real, fake).mean())
    assert "PSNR [dB]" in capsys.readouterr().out
    (folder / "011.png").unlink()
    with pytest.raises(SystemExit, match="same size: --real .* has 12 images, --fake .* has 11"):
        run(evaluate, "--real", files / "real.npz", "--fake", folder, "--metrics", "ssim", "--no-progress")

    # reference statistics: computed once, cached, invalidated when the images change
    cache = tmp_path / "cache"
    feat = ["--feature-extractor", files / "features.yaml", "--no-progress", "--stats-cache", cache]
    first = run(evaluate, "--real", folder, "--fake", files / "real.npz", "--metrics", "fid", *feat)
    (stats_file,) = cache.glob("*.npz")
    stats = E.Statistics.load(stats_file)
    assert stats.count == 11 and stats.extractor == "tiny (not Inception)" and stats.fingerprint.startswith("folder:")
    # the second run reads the cached file (a tampered mean shows in its FID)
    poisoned = E.Statistics(stats.mu + 1.0, stats.sigma, stats.count, stats.fingerprint, stats.extractor, stats.dims)
    poisoned.save(stats_file)
    again = run(evaluate, "--real", folder, "--fake", files / "real.npz", "--metrics", "fid", *feat)
    assert again["fid"] != pytest.approx(first["fid"])
    Image.fromarray(fake[0]).save(folder / "zzz.png")  # the set changed: recomputed
    third = run(evaluate, "--real", folder, "--fake", files / "real.npz", "--metrics", "fid", *feat)
    assert len(list(cache.glob("*.npz"))) == 2 and third["fid"] != pytest.approx(again["fid"])

    # saved statistics stand in for --real (FID only)
    run(evaluate, "--real", folder, "--save-stats", tmp_path / "ref.npz", *feat)
    from_stats = run(evaluate, "--real", tmp_path / "ref.npz", "--fake", files / "real.npz", "--metrics", "fid", *feat)
    assert from_stats["fid"] == pytest.approx(third["fid"], rel=1e-9)
    with pytest.raises(SystemExit, match="statistics file, which has FID statistics only; kid"):
        run(evaluate, "--real", tmp_path / "ref.npz", "--fake", files / "real.npz", "--metrics", "fid,kid", *feat)
    with pytest.raises(SystemExit, match="unknown metric\\(s\\) fidd"):
        run(evaluate, "--fake", folder, "--metrics", "fidd")


def test_a_dataset_split_as_the_reference(evaluate, files):
    from ldm.data.image_io import to_uint8
    from ldm.data.synthetic import SyntheticShapesValidation

    out = run(evaluate, "--real-data", "--data", files / "data-ae.yaml", "--data-param", "length=4", "--fake",
              files / "real.npz", "--metrics", "fid", "--feature-extractor", files / "features.yaml", "--no-progress",
              "--no-stats-cache")
    data = SyntheticShapesValidation(size=16, length=4)
    real = np.stack([to_uint8(data[i]["image"]) for i in range(4)])
    np.testing.assert_array_equal(np.concatenate(list(E.DatasetImages(data, "split").batches(3))), real)
    ext = E.ModuleFeatures(TinyFeatures(), "tiny")
    ext.module.load_state_dict(torch.load(files / "tiny.ckpt")["state_dict"])
    stats = [E.Statistics.from_features(E.extract_features(ext, [x], progress=False).features)
             for x in (real, np.load(files / "real.npz")["arr_0"])]
    # 4 feature vectors in 48 dimensions: singular covariances, so agreement to rounding only
    assert out["fid"] == pytest.approx(E.fid(*stats), rel=1e-4)


def test_missing_inception_weights_is_a_clear_error(evaluate, files, tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)  # torch-fidelity's fallback
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(E.INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(SystemExit, match=f"{E.INCEPTION_FILENAME}.*\n.*\n.*{E.INCEPTION_URL}"):
        run(evaluate, "--real", files / "real.npz", "--fake", files / "real.npz", "--metrics", "fid", "--no-progress")


def test_autoencoder_superres_and_inpainting_protocols(evaluate, runs, files, tmp_path):
    ae = run(evaluate, "-r", runs["class"], "--task", "autoencoder", "--data", files / "data-ae.yaml", *FAST,
             "--metrics", "psnr,ssim,fid", "--feature-extractor", files / "features.yaml", "--outdir", tmp_path / "ae")
    (part,) = shards(tmp_path / "ae")
    assert len(part["images"]) == 5 and part["reference"].shape == part["images"].shape
    assert ae["psnr"] == pytest.approx(E.psnr_values(part["reference"], part["images"]).mean())
    from ldm.data.synthetic import SyntheticShapesValidation

    data = SyntheticShapesValidation(size=16, length=5)
    expected = np.stack([np.round((data[i]["image"] + 1) * 127.5) for i in range(5)]).astype(np.uint8)
    np.testing.assert_array_equal(part["reference"], expected)

    sr = run(evaluate, "-r", runs["superres"], "--task", "superres", "--data", files / "data-sr.yaml", *FAST,
             "-n", 3, "--metrics", "psnr,ssim", "--outdir", tmp_path / "sr")
    (part,) = shards(tmp_path / "sr")
    assert part["images"].shape == (3, 16, 16, 3) and sr["ssim"] == pytest.approx(
        E.ssim_values(part["reference"], part["images"]).mean())

    run(evaluate, "-r", runs["inpainting"], "--task", "inpainting", "--data", files / "data-inpaint.yaml", *FAST,
        "-n", 2, "--metrics", "psnr", "--outdir", tmp_path / "inpaint")
    (part,) = shards(tmp_path / "inpaint")
    masks = np.stack([SyntheticShapesValidation(size=16, length=5, inpainting_masks=True)[i]["mask"]
                      for i in range(2)])
    keep = np.broadcast_to(masks < 0.5, part["images"].shape)
    np.testing.assert_array_equal(part["images"][keep], part["reference"][keep])  # known pixels kept

    with pytest.raises(SystemExit, match="--task superres needs a super-resolution model; this one is 'class'"):
        run(evaluate, "-r", runs["class"], "--task", "superres", "--data", files / "data-sr.yaml", *FAST,
            "--metrics", "psnr", "--outdir", tmp_path / "x")
    with pytest.raises(SystemExit, match="SyntheticShapesValidation|no data.params.validation"):
        run(evaluate, "-r", runs["class"], "--task", "autoencoder", *FAST, "--metrics", "psnr",
            "--outdir", tmp_path / "y")
