"""scripts/score_class_run.py: every snapshot of a class run scored with the synthetic judge,
resumable, with plots; the figures equal class_sample_scores on the same checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.eval.classifier import save_classifier, train_classifier
from tests.conftest import load_script
from tests.test_inference import lightning_checkpoint, make_model, write_snapshot, write_run
from tests.test_synthetic_classifier import TINY


def _script():
    return load_script("score_class_run")


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    """A tiny class run: snapshots at steps 40 and 80 (other weights), last.ckpt at step 120."""
    run, _ = write_run(tmp_path_factory.mktemp("runs"), "class")
    snaps = run / "checkpoints" / "trainstep_checkpoints"
    snaps.mkdir()
    for step, seed in ((40, 1), (80, 2)):
        ckpt = lightning_checkpoint(make_model("class", seed))
        torch.save({**ckpt, "global_step": step}, snaps / f"epoch=000000-step={step:09d}.ckpt")
    model, config = train_classifier(steps=2, seed=3, **TINY)
    return run, save_classifier(model, config, tmp_path_factory.mktemp("clf"))


def _argv(run, clf, out, *extra):
    return ["-r", str(run), "--classifier", str(clf), "-n", "4", "--steps", "2", "--n-real", "8",
            "--out", str(out), *extra]


def test_every_snapshot_and_scale_scored_like_class_sample_scores(class_run, tmp_path, capsys):
    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import load_run

    run, clf = class_run
    points = _script().main(_argv(run, clf, tmp_path, "--scales", "1", "3"))
    assert sorted((p["step"], p["scale"]) for p in points) == [(s, k) for s in (40, 80, 120) for k in (1.0, 3.0)]
    expected = class_sample_scores(load_run(run / "checkpoints" / "trainstep_checkpoints" /
                                            "epoch=000000-step=000000080.ckpt"),
                                   clf, 4, sampler="ddim", steps=2, scale=3.0, seed=0, n_real=8, size=16,
                                   progress=False)
    (got,) = [p for p in points if p["step"] == 80 and p["scale"] == 3.0]
    assert (got["accuracy"], got["fid_like"], got["real_accuracy"]) == (
        expected.accuracy, expected.fid_like, expected.real_accuracy)
    assert got["relative_accuracy"] == expected.relative_accuracy
    last = [p for p in points if p["step"] == 120]
    assert {p["checkpoint"] for p in last} == {"last.ckpt"}
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["points"] == points and saved["settings"]["n_samples"] == 4
    for name in ("accuracy_vs_steps.png", "fid_like_vs_steps.png"):
        assert Image.open(tmp_path / name).size == (640, 420)
    out = capsys.readouterr().out
    assert "| 80 | 3 |" in out and "step 120, scale 1:" in out


def test_rerun_scores_only_what_is_missing(class_run, tmp_path, monkeypatch):
    run, clf = class_run
    script = _script()
    first = script.main(_argv(run, clf, tmp_path))
    import ldm.eval.synthetic_scores as scores

    calls = []
    real = scores.class_sample_scores

    def counting(*args, **kwargs):
        calls.append(kwargs["scale"])
        return real(*args, **kwargs)

    monkeypatch.setattr(scores, "class_sample_scores", counting)
    assert script.main(_argv(run, clf, tmp_path)) == first and calls == []        # all scored: nothing to do
    again = script.main(_argv(run, clf, tmp_path, "--scales", "3", "5"))
    assert calls == [5.0, 5.0, 5.0] and again[:len(first)] == first               # one new scale, 3 checkpoints
    calls.clear()
    other = script.main(_argv(run, clf, tmp_path, "--seed", "1"))                 # other settings: start again
    assert calls == [3.0, 3.0, 3.0] and len(other) == 3


def test_eta_samples_ddim_stochastically_and_is_a_setting(class_run, tmp_path):
    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import load_run

    run, clf = class_run
    script = _script()
    plain = script.main(_argv(run, clf, tmp_path / "plain"))
    assert "eta" not in json.loads((tmp_path / "plain" / "scores.json").read_text())["settings"]
    noisy = script.main(_argv(run, clf, tmp_path / "eta", "--eta", "1"))
    assert json.loads((tmp_path / "eta" / "scores.json").read_text())["settings"]["eta"] == 1.0
    expected = class_sample_scores(load_run(run), clf, 4, sampler="ddim", steps=2, scale=3.0, seed=0, n_real=8,
                                   size=16, progress=False, eta=1.0)
    assert (noisy[-1]["accuracy"], noisy[-1]["fid_like"]) == (expected.accuracy, expected.fid_like)
    assert noisy[-1]["fid_like"] != plain[-1]["fid_like"]  # fresh noise at every step
    with pytest.raises(SystemExit, match="--eta 1 is DDIM's stochasticity; --sampler dpm has none"):
        script.main(_argv(run, clf, tmp_path / "o", "--eta", "1", "--sampler", "dpm"))
    with pytest.raises(SystemExit, match=r"--eta 2: must lie in \[0, 1\]"):
        script.main(_argv(run, clf, tmp_path / "o", "--eta", "2"))


def test_precision_samples_under_autocast_and_is_a_setting(class_run, tmp_path):
    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import load_run

    run, clf = class_run
    script = _script()
    script.main(_argv(run, clf, tmp_path / "plain"))
    assert "precision" not in json.loads((tmp_path / "plain" / "scores.json").read_text())["settings"]
    bf16 = script.main(_argv(run, clf, tmp_path / "bf16", "--precision", "bf16"))
    assert json.loads((tmp_path / "bf16" / "scores.json").read_text())["settings"]["precision"] == "bf16"
    kwargs = dict(sampler="ddim", steps=2, scale=3.0, seed=0, n_real=8, size=16, progress=False)
    expected = class_sample_scores(load_run(run), clf, 4, precision="bf16", **kwargs)
    assert (bf16[-1]["accuracy"], bf16[-1]["fid_like"]) == (expected.accuracy, expected.fid_like)
    fp32 = class_sample_scores(load_run(run), clf, 4, **kwargs)
    assert fp32.samples.shape == expected.samples.shape and not np.array_equal(fp32.samples, expected.samples)


def test_bad_arguments_are_named(class_run, tmp_path):
    run, clf = class_run
    script = _script()
    with pytest.raises(SystemExit, match="not a run directory"):
        script.main(_argv(tmp_path, clf, tmp_path / "out"))
    empty = tmp_path / "empty_run"
    (empty / "configs").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no checkpoints"):
        script.main(_argv(empty, clf, tmp_path / "out"))
    with pytest.raises(SystemExit, match="not a classifier of the synthetic data at 16 px"):
        script.main(_argv(run, run, tmp_path / "out"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scores.json").write_text("{oops")
    with pytest.raises(SystemExit, match="not a scores file"):
        script.main(_argv(run, clf, tmp_path / "bad"))


def test_autoguided_scores_start_after_the_guide(class_run, tmp_path):
    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import GuideModel, load_run

    _, clf = class_run
    run, _ = write_run(tmp_path / "runs", "class")
    guide = write_snapshot(run, 40)  # other denoiser, the same first stage
    points = _script().main(_argv(run, clf, tmp_path / "s", "--guide-model", str(guide), "--guide-weight", "2"))
    assert [(p["step"], p["checkpoint"]) for p in points] == [(120, "last.ckpt")]  # not the guide itself
    expected = class_sample_scores(load_run(run), clf, 4, sampler="ddim", steps=2, scale=3.0, seed=0, n_real=8,
                                   size=16, progress=False, guide=GuideModel(load_run(guide), 2.0))
    assert (points[0]["accuracy"], points[0]["fid_like"]) == (expected.accuracy, expected.fid_like)
    saved = json.loads((tmp_path / "s" / "scores.json").read_text())["settings"]
    assert (saved["guide_model"], saved["guide_weight"]) == (str(guide.resolve()), 2.0) and "ema" not in saved

    # --no-ema: the trained weights of the model and of its guide (make_model's EMA weights differ)
    raw = _script().main(_argv(run, clf, tmp_path / "raw", "--guide-model", str(guide), "--guide-weight", "2",
                               "--no-ema"))
    expected = class_sample_scores(load_run(run, prefer_ema=False), clf, 4, sampler="ddim", steps=2, scale=3.0,
                                   seed=0, n_real=8, size=16, progress=False,
                                   guide=GuideModel(load_run(guide, prefer_ema=False), 2.0))
    assert (raw[0]["accuracy"], raw[0]["fid_like"]) == (expected.accuracy, expected.fid_like)
    assert raw[0]["fid_like"] != points[0]["fid_like"]
    assert json.loads((tmp_path / "raw" / "scores.json").read_text())["settings"]["ema"] is False

    other_first_stage = class_run[0] / "checkpoints" / "trainstep_checkpoints" / "epoch=000000-step=000000040.ckpt"
    with pytest.raises(SystemExit, match="the model and its guide have different first stages"):
        _script().main(_argv(run, clf, tmp_path / "o", "--guide-model", str(other_first_stage)))
    with pytest.raises(SystemExit, match="--guide-weight -1.0: must be a finite number >= 0"):
        _script().main(_argv(run, clf, tmp_path / "o", "--guide-model", str(guide), "--guide-weight", "-1"))
