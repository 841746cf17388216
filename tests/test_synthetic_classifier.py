"""The synthetic-shapes classifier: training script, safe save/load, refusal of mismatched
classifiers, and that a briefly trained one clearly beats chance (tiny images, few steps)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.eval.classifier import (CONFIG_FILE, WEIGHTS_FILE, ClassifierMismatch, ShapesClassifier,
                                 classifier_features, data_fingerprint, load_classifier, save_classifier,
                                 train_classifier)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(size=16, width=4, batch_size=16, train_images=64, val_images=32, progress=False)


def _script_main():
    spec = importlib.util.spec_from_file_location("script_train_classifier", REPO / "scripts" / "train_classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained for a few steps at 16 px, saved."""
    model, config = train_classifier(steps=4, seed=3, **TINY)
    out = save_classifier(model, config, tmp_path_factory.mktemp("clf"))
    return model, config, out


def test_script_writes_a_loadable_classifier(tmp_path, capsys):
    main = _script_main()
    acc = main(["--out", str(tmp_path / "c"), "--size", "16", "--steps", "3", "--seed", "5", "--width", "4",
                "--batch-size", "8", "--train-images", "32", "--val-images", "16", "--no-progress"])
    printed = capsys.readouterr().out
    assert f"validation accuracy {acc:.2%} on 16 images (8 classes, chance 12.5%); 3 steps, seed 5" in printed
    assert (tmp_path / "c" / WEIGHTS_FILE).is_file() and (tmp_path / "c" / CONFIG_FILE).is_file()
    saved = json.loads((tmp_path / "c" / CONFIG_FILE).read_text())
    assert {k: saved[k] for k in ("size", "n_classes", "width", "feature_dims", "seed", "steps", "val_images")} == \
        dict(size=16, n_classes=8, width=4, feature_dims=32, seed=5, steps=3, val_images=16)
    assert saved["val_accuracy"] == acc
    assert saved["class_names"] == ["circle", "square", "triangle", "diamond", "hexagon", "star", "cross", "ring"]
    assert saved["data_fingerprint"] == data_fingerprint(16)
    model, config = load_classifier(tmp_path / "c" / WEIGHTS_FILE, size=16)  # either file names the classifier
    assert config.val_accuracy == acc and not model.training


def test_script_rejects_bad_flags(tmp_path, capsys):
    main = _script_main()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--steps", "0"])
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


def test_loaded_classifier_gives_the_same_outputs(trained):
    model, config, out = trained
    loaded, loaded_config = load_classifier(out, size=16)
    assert loaded_config == config
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    model.eval()
    with torch.no_grad():
        f0, l0 = model(x)
        f1, l1 = loaded(x)
    assert f1.shape == (5, config.feature_dims) == (5, 32) and l1.shape == (5, 8)
    assert torch.equal(f0, f1) and torch.equal(l0, l1)


def test_other_sizes_are_resized():
    torch.manual_seed(0)
    model = ShapesClassifier(size=16, width=4).eval()
    big = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        direct = model(big)
        resized = model(F.interpolate(big, size=(16, 16), mode="bilinear", align_corners=False, antialias=True))
    assert torch.equal(direct[0], resized[0]) and torch.equal(direct[1], resized[1])
    with pytest.raises(ValueError, match=r"expects RGB images \(B, 3, H, W\).*\(2, 1, 16, 16\)"):
        model(torch.zeros(2, 1, 16, 16))


def test_mismatched_classifier_is_refused(trained, tmp_path):
    _, config, out = trained
    with pytest.raises(ClassifierMismatch, match="trained on 16px synthetic images, the data to judge is 32px"):
        load_classifier(out, size=32)
    # The data changed since training (here: a fingerprint that is not the current one).
    bad = tmp_path / "stale"
    bad.mkdir()
    (bad / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes())
    raw = json.loads((out / CONFIG_FILE).read_text())
    (bad / CONFIG_FILE).write_text(json.dumps({**raw, "data_fingerprint": "0123456789abcdef"}))
    with pytest.raises(ClassifierMismatch, match="fingerprint 0123456789abcdef, the data now has .*retrain it"):
        load_classifier(bad)
    assert load_classifier(bad, check_data=False)[1].data_fingerprint == "0123456789abcdef"
    # Weights of another architecture than the config says.
    (bad / CONFIG_FILE).write_text(json.dumps({**raw, "width": 8}))
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}: weights do not match .*{CONFIG_FILE}"):
        load_classifier(bad)
    (bad / CONFIG_FILE).write_text(json.dumps({"size": 16}))
    with pytest.raises(ValueError, match="not a classifier config of ldm.eval.classifier"):
        load_classifier(bad)
    with pytest.raises(FileNotFoundError, match=f"{CONFIG_FILE}.*scripts/train_classifier.py --out"):
        load_classifier(tmp_path / "nowhere")



def test_usable_classifier_says_when_to_train(trained, tmp_path):
    from ldm.eval.classifier import usable_classifier

    _, _, out = trained
    assert usable_classifier(out, size=16)
    assert not usable_classifier(out, size=32)                   # trained at another size
    assert not usable_classifier(tmp_path / "nowhere", size=16)  # nothing there
    bad = tmp_path / "damaged"
    bad.mkdir()
    (bad / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes())
    (bad / CONFIG_FILE).write_text("{}")
    assert not usable_classifier(bad, size=16)


def test_feature_extractor_is_labelled_and_takes_uint8(trained):
    _, config, out = trained
    extractor = classifier_features(out, size=16)
    assert extractor.name.endswith("(not Inception)") and "synthetic-shapes classifier 16px" in extractor.name
    assert extractor.dims == config.feature_dims and extractor.is_inception is False
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8))
    features, logits = extractor(images)
    assert features.shape == (3, 32) and logits.shape == (3, 8)


def test_short_training_beats_chance_and_is_deterministic():
    kw = dict(TINY, width=8, batch_size=32, train_images=1024, val_images=256, lr=3e-3)
    _, config = train_classifier(steps=200, seed=0, **kw)
    # Chance is 1/8; seconds of training on 16 px images (far from the demo's 800 steps at 32 px)
    # already recognise the dominant shape more than twice as often.
    assert config.val_accuracy >= 0.25, config.val_accuracy
    a, _ = train_classifier(steps=3, seed=1, **TINY)
    b, _ = train_classifier(steps=3, seed=1, **TINY)
    c, _ = train_classifier(steps=3, seed=2, **TINY)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x


class _Grey(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_reconstruction_scores_judge_the_reconstructions(trained):
    """With a classifier, reconstruction_scores reports how often it recognises D(E(x)) against
    the originals: equal for a perfect first stage, the grey image's prediction rate for one that
    outputs grey."""
    from ldm.data.synthetic import SyntheticShapesValidation
    from ldm.eval.synthetic_scores import reconstruction_scores

    model, config, folder = trained
    perfect = reconstruction_scores(_Identity(), 20, size=16, classifier_folder=folder)
    assert perfect.accuracy == perfect.real_accuracy and perfect.relative_accuracy == 1.0
    assert perfect.ssim == 1.0

    grey = reconstruction_scores(_Grey(), 20, size=16, classifier_folder=folder)
    with torch.no_grad():
        grey_class = int(model(torch.zeros(1, 3, 16, 16))[1].argmax())
    labels = np.array([SyntheticShapesValidation(size=16, length=20)[i]["class_label"] for i in range(20)])
    assert grey.accuracy == pytest.approx(float((labels == grey_class).mean()), abs=1e-12)
    assert grey.real_accuracy == perfect.real_accuracy
    assert reconstruction_scores(_Identity(), 4, size=16).accuracy is None


def test_colour_coverage_counts_pixels_nearest_to_each_palette_colour():
    from ldm.data.synthetic import COLOURS
    from ldm.eval.synthetic_scores import colour_coverage, shows_colours

    img = np.zeros((2, 10, 10, 3), dtype=np.uint8)
    img[0, :5] = COLOURS["red"]
    img[0, 5:] = COLOURS["blue"]
    img[0, 9, :] = (220 + 35, 40 + 35, 40)       # 49.5 from red: still red
    img[1] = COLOURS["gray"]
    img[1, 0, :3] = np.clip(np.array(COLOURS["red"]) + 70, 0, 255)  # 121 from red: too far, counts as nothing
    cov = colour_coverage(img, ["red", "blue", "gray"])
    assert cov.tolist() == [[0.6, 0.4, 0.0], [0.0, 0.0, 0.97]]
    assert shows_colours(img, ["red", "blue"]).tolist() == [True, False]
    assert shows_colours(img, ["red", "blue"], min_coverage=0.5).tolist() == [False, False]
    with pytest.raises(ValueError, match="unknown colour.*'teal'"):
        colour_coverage(img, ["teal"])


def test_text_sample_scores(trained):
    """Colours and the dominant shape of one prompt's samples: exact shares, and the chance rate of
    the colours measured on real scenes."""
    from ldm.data.synthetic import COLOURS, SyntheticShapesValidation
    from ldm.eval.synthetic_scores import shows_colours, text_sample_scores
    from ldm.inference import to_uint8

    model, config, folder = trained
    samples = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    samples[:, :8] = COLOURS["red"]
    samples[:, 8:] = COLOURS["blue"]
    samples[3] = COLOURS["green"]
    scores = text_sample_scores(samples, ["red", "blue"], "circle", folder, n_real=30, size=16)
    assert scores.shows_colours == 0.75 and scores.n == 4 and scores.n_real == 30
    data = SyntheticShapesValidation(size=16, length=30)
    real = to_uint8(torch.from_numpy(np.stack([data[i]["image"] for i in range(30)])).permute(0, 3, 1, 2))
    assert scores.real_shows_colours == float(shows_colours(real, ["red", "blue"]).mean())
    with torch.no_grad():
        pred = model(torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 127.5 - 1)[1].argmax(1)
    assert scores.shape_accuracy == float((pred == 0).float().mean())
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        text_sample_scores(samples, ["red"], "blob", folder, n_real=30, size=16)


def test_script_trains_on_colour_and_shape_pairs(tmp_path, capsys):
    main = _script_main()
    main(["--out", str(tmp_path / "c"), "--size", "16", "--steps", "2", "--width", "4", "--n-classes", "88",
          "--batch-size", "8", "--train-images", "32", "--val-images", "16", "--no-progress"])
    assert "(88 classes, chance 1.1%)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "c" / CONFIG_FILE).read_text())
    assert saved["n_classes"] == 88 and len(saved["class_names"]) == 88
    assert saved["data_fingerprint"] == data_fingerprint(16, 88)
    model, _ = load_classifier(tmp_path / "c", size=16)
    assert model.head.out_features == 88


@pytest.mark.parametrize("value, message", [("1", "--n-classes must be >= 2, got 1"),
                                            ("89", "--n-classes must be <= 88 (8 shapes x 11 colours), got 89")])
def test_script_rejects_bad_class_counts(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit):
        _script_main()(["--out", str(tmp_path), "--n-classes", value])
    assert message in capsys.readouterr().err
