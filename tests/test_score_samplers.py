"""scripts/score_samplers.py: one checkpoint scored under every sampler and step count of a grid,
resumable, with the fewest steps matching the reference; figures equal class_sample_scores."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ldm.eval.classifier import save_classifier, train_classifier
from tests.conftest import load_script
from tests.test_inference import lightning_checkpoint, make_model, write_run
from tests.test_synthetic_classifier import TINY


def _script():
    return load_script("score_samplers")


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    """A tiny class run (last.ckpt) and a tiny classifier of the synthetic data at its image size."""
    run, _ = write_run(tmp_path_factory.mktemp("runs"), "class")
    other = run / "other.ckpt"  # other weights, for --ckpt
    torch.save(lightning_checkpoint(make_model("class", 5)), other)
    model, config = train_classifier(steps=2, seed=3, **TINY)
    return run, save_classifier(model, config, tmp_path_factory.mktemp("clf")), other


def _argv(run, clf, out, *extra):
    return ["-r", str(run), "--classifier", str(clf), "-n", "4", "--n-real", "8", "--out", str(out),
            "--grid", "ddim:1,3", "dpm:1,2", *extra]


def test_every_setting_scored_like_class_sample_scores(class_run, tmp_path, capsys):
    from ldm.eval.reproduction import samplers_matching
    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import load_run

    run, clf, _ = class_run
    result = _script().main(_argv(run, clf, tmp_path))
    points = result["points"]
    assert [(p["sampler"], p["steps"]) for p in points] == [("ddim", 1), ("ddim", 3), ("dpm", 1), ("dpm", 2)]
    expected = class_sample_scores(load_run(run / "checkpoints" / "last.ckpt"), clf, 4, sampler="dpm", steps=2,
                                   scale=3.0, seed=0, n_real=8, size=16, progress=False)
    got = points[3]
    assert (got["accuracy"], got["relative_accuracy"], got["fid_like"], got["real_accuracy"]) == (
        expected.accuracy, expected.relative_accuracy, expected.fid_like, expected.real_accuracy)
    assert result["reference"] == ("ddim", 3)                       # DDIM's most steps by default
    assert result["matching"] == samplers_matching(points[1], {"dpm": {1: points[2], 2: points[3]}}, 0.05, 0.10)
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["points"] == points and saved["settings"]["scale"] == 3.0
    for name in ("fid_like_vs_sampler_steps.png", "accuracy_vs_sampler_steps.png"):
        assert Image.open(tmp_path / name).size == (640, 420)
    out = capsys.readouterr().out
    assert "| ddim (reference) | 3 |" in out and "- dpm matches ddim-3" in out


def test_reference_and_checkpoint_choice(class_run, tmp_path):
    run, clf, other = class_run
    script = _script()
    result = script.main(_argv(run, clf, tmp_path / "a", "--reference", "dpm:2"))
    assert result["reference"] == ("dpm", 2) and set(result["matching"]) == {"ddim"}
    # With every tolerance open, the fewest steps of each other sampler match.
    loose = script.main(_argv(run, clf, tmp_path / "b", "--acc-tol", "1", "--fid-tol", "1e9"))
    assert loose["matching"] == {"dpm": 1}
    mine = script.main(_argv(run, clf, tmp_path / "c", "--ckpt", str(other)))
    assert [p["fid_like"] for p in mine["points"]] != [p["fid_like"] for p in loose["points"]]


def test_rerun_scores_only_what_is_missing(class_run, tmp_path, monkeypatch):
    run, clf, _ = class_run
    script = _script()
    first = script.main(_argv(run, clf, tmp_path))["points"]
    import ldm.eval.synthetic_scores as scores

    calls = []
    real = scores.class_sample_scores

    def counting(*args, **kwargs):
        calls.append((kwargs["sampler"], kwargs["steps"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(scores, "class_sample_scores", counting)
    assert script.main(_argv(run, clf, tmp_path))["points"] == first and calls == []   # all scored
    again = script.main(_argv(run, clf, tmp_path, "unipc:2"))["points"]
    assert calls == [("unipc", 2)] and again[:4] == first                              # one new setting
    calls.clear()
    script.main(_argv(run, clf, tmp_path, "--scale", "5"))                              # other settings: again
    assert calls == [("ddim", 1), ("ddim", 3), ("dpm", 1), ("dpm", 2)]


def test_bad_arguments_are_named(class_run, tmp_path):
    run, clf, _ = class_run
    script = _script()
    with pytest.raises(SystemExit, match="not a run directory"):
        script.main(_argv(tmp_path, clf, tmp_path / "out"))
    with pytest.raises(SystemExit, match="--ckpt .*nope.ckpt: no such checkpoint"):
        script.main(_argv(run, clf, tmp_path / "out", "--ckpt", str(tmp_path / "nope.ckpt")))
    with pytest.raises(SystemExit, match="--grid 'euler:5'"):
        script.main(_argv(run, clf, tmp_path / "out", "euler:5"))
    with pytest.raises(SystemExit, match="step counts must be whole numbers >= 1, got '0'"):
        script.main(_argv(run, clf, tmp_path / "out", "unipc:0"))
    with pytest.raises(SystemExit, match="no ddim setting"):
        script.main(["-r", str(run), "--classifier", str(clf), "--grid", "dpm:5"])
    with pytest.raises(SystemExit, match="--reference ddim:50: not one of the --grid settings"):
        script.main(_argv(run, clf, tmp_path / "out", "--reference", "ddim:50"))
    with pytest.raises(SystemExit, match="not a classifier of the synthetic data at 16 px"):
        script.main(_argv(run, run, tmp_path / "out"))
