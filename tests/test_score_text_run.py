"""scripts/score_text_run.py and ldm.eval.synthetic_scores.text_prompt_scores: text samples of
each prompt judged for the colours it names and its first shape, per snapshot, resumable."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.eval.classifier import save_classifier, train_classifier
from ldm.eval.synthetic_scores import prompt_targets, shows_colours, text_prompt_scores
from tests.conftest import load_script
from tests.test_inference import lightning_checkpoint, make_model, write_run, write_snapshot
from tests.test_synthetic_classifier import TINY

PROMPTS = ["a red circle on a blue background", "an orange star and a small red ring"]


def _script():
    return load_script("score_text_run")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny text run: a snapshot at step 50 (other weights), last.ckpt at step 120; a 16-px judge."""
    run, _ = write_run(tmp_path_factory.mktemp("runs"), "text")
    snaps = run / "checkpoints" / "trainstep_checkpoints"
    snaps.mkdir()
    torch.save({**lightning_checkpoint(make_model("text", 1)), "global_step": 50},
               snaps / "epoch=000000-step=000000050.ckpt")
    model, config = train_classifier(steps=2, seed=3, **TINY)
    return run, save_classifier(model, config, tmp_path_factory.mktemp("clf"))


def _argv(run, clf, out, *extra):
    return ["-r", str(run), "--classifier", str(clf), "-n", "3", "--steps", "2", "--n-real", "8",
            "--out", str(out), "--prompts", *PROMPTS, *extra]


def test_prompt_targets_read_the_captions_words():
    t = prompt_targets("a Red circle and a blue square")
    assert (t.colours, t.shape) == (("red", "blue"), "circle")
    t = prompt_targets("an orange triangle and a small orange star on a purple gradient background")
    assert (t.colours, t.shape) == (("orange", "purple"), "triangle")  # each colour once, in order
    with pytest.raises(ValueError, match="names no shape"):
        prompt_targets("a red blob")
    with pytest.raises(ValueError, match="names no colour"):
        prompt_targets("a large circle")


def test_prompt_scores_judge_the_returned_samples(text_run):
    from ldm.inference import load_run

    run, clf = text_run
    model = load_run(run)
    scores, samples = text_prompt_scores(model, clf, PROMPTS[0], 3, steps=2, n_real=8, size=16)
    assert samples.shape == (3, 16, 16, 3) and samples.dtype == np.uint8
    assert scores.shows_colours == shows_colours(samples, ("red", "blue")).mean()
    assert (scores.colours, scores.shape, scores.n, scores.n_real) == (("red", "blue"), "circle", 3, 8)
    again, same = text_prompt_scores(model, clf, PROMPTS[0], 3, steps=2, n_real=8, size=16)
    np.testing.assert_array_equal(same, samples)  # seeded per sample
    _, other = text_prompt_scores(model, clf, PROMPTS[1], 3, steps=2, n_real=8, size=16)
    assert not np.array_equal(other, samples)     # the prompt reaches the model


def test_every_snapshot_and_prompt_scored(text_run, tmp_path, capsys):
    from ldm.inference import load_run

    run, clf = text_run
    points = _script().main(_argv(run, clf, tmp_path))
    assert sorted((p["step"], p["prompt"]) for p in points) == [(s, q) for s in (50, 120) for q in sorted(PROMPTS)]
    expected, _ = text_prompt_scores(load_run(run / "checkpoints" / "last.ckpt"), clf, PROMPTS[1], 3,
                                     sampler="unipc", steps=2, n_real=8, size=16)
    (got,) = [p for p in points if p["step"] == 120 and p["prompt"] == PROMPTS[1]]
    assert (got["shows_colours"], got["real_shows_colours"], got["shape_accuracy"]) == (
        expected.shows_colours, expected.real_shows_colours, expected.shape_accuracy)
    assert (got["colours"], got["shape"], got["checkpoint"]) == (["orange", "red"], "star", "last.ckpt")
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["points"] == points and saved["settings"]["scale"] == 3.0
    for step in (50, 120):  # one row of 3 samples per prompt (16 px, 2 px padding)
        assert Image.open(tmp_path / f"grid_step{step}.png").size == (3 * 18 + 2, 2 * 18 + 2)
    assert Image.open(tmp_path / "text_scores_vs_steps.png").size == (640, 420)
    out = capsys.readouterr().out
    assert f"| 50 | {PROMPTS[0]} |" in out and "| 120 | mean over prompts |" in out


def test_rerun_scores_only_what_is_missing(text_run, tmp_path, monkeypatch):
    import ldm.eval.synthetic_scores as scores

    run, clf = text_run
    script = _script()
    first = script.main(_argv(run, clf, tmp_path))
    calls = []
    real = scores.text_prompt_scores

    def counting(model, classifier, prompt, *args, **kwargs):
        calls.append(prompt)
        return real(model, classifier, prompt, *args, **kwargs)

    monkeypatch.setattr(scores, "text_prompt_scores", counting)
    assert script.main(_argv(run, clf, tmp_path)) == first and calls == []
    again = script.main(_argv(run, clf, tmp_path, "a gray hexagon"))  # one more prompt, two checkpoints
    assert calls == ["a gray hexagon"] * 2 and again[:len(first)] == first
    calls.clear()
    script.main(_argv(run, clf, tmp_path, "--scale", "5"))           # other settings: start again
    assert len(calls) == 2 * len(PROMPTS)


def test_autoguided_scores_start_after_the_guide(text_run, tmp_path):
    from ldm.inference import GuideModel, load_run

    _, clf = text_run
    run, _ = write_run(tmp_path / "runs", "text")
    guide = write_snapshot(run, 40, "text")  # other denoiser and text encoder, the same first stage
    script = _script()
    for extra, prefer_ema in (((), True), (("--no-ema",), False)):
        out = tmp_path / f"ema{prefer_ema}"
        points = script.main(_argv(run, clf, out, "--guide-model", str(guide), "--guide-weight", "2", *extra))
        assert sorted((p["step"], p["checkpoint"]) for p in points) == [(120, "last.ckpt")] * len(PROMPTS)
        expected, samples = text_prompt_scores(load_run(run, prefer_ema=prefer_ema), clf, PROMPTS[1], 3, steps=2,
                                               n_real=8, size=16,
                                               guide=GuideModel(load_run(guide, prefer_ema=prefer_ema), 2.0))
        (got,) = [p for p in points if p["prompt"] == PROMPTS[1]]
        assert (got["shows_colours"], got["shape_accuracy"]) == (expected.shows_colours, expected.shape_accuracy)
        saved = json.loads((out / "scores.json").read_text())["settings"]
        assert (saved["guide_model"], saved["guide_weight"]) == (str(guide.resolve()), 2.0)
        assert saved.get("ema", True) is prefer_ema
    _, unguided = text_prompt_scores(load_run(run, prefer_ema=False), clf, PROMPTS[1], 3, steps=2, n_real=8, size=16)
    assert not np.array_equal(unguided, samples)  # the guide reaches the samples
    other_first_stage = text_run[0] / "checkpoints" / "trainstep_checkpoints" / "epoch=000000-step=000000050.ckpt"
    with pytest.raises(SystemExit, match="the model and its guide have different first stages"):
        script.main(_argv(run, clf, tmp_path / "o", "--guide-model", str(other_first_stage)))
    with pytest.raises(SystemExit, match="--guide-weight -1.0: must be a finite number >= 0"):
        script.main(_argv(run, clf, tmp_path / "o", "--guide-model", str(guide), "--guide-weight", "-1"))
    class_run, _ = write_run(tmp_path / "class", "class")
    with pytest.raises(SystemExit, match="a class model cannot guide a text one"):  # checked as the samplers check
        script.main(_argv(run, clf, tmp_path / "o", "--guide-model", str(class_run)))


def test_bad_arguments_are_named(text_run, tmp_path):
    run, clf = text_run
    script = _script()
    with pytest.raises(SystemExit, match="not a run directory"):
        script.main(_argv(tmp_path, clf, tmp_path / "out"))
    with pytest.raises(SystemExit, match="--prompts: prompt 'a purple blob' names no shape"):
        script.main(_argv(run, clf, tmp_path / "out", "a purple blob"))
    class_run, _ = write_run(tmp_path / "class", "class")
    with pytest.raises(SystemExit, match="not a text-conditioned model"):
        script.main(_argv(class_run, clf, tmp_path / "out"))
    with pytest.raises(SystemExit, match="not a classifier of the synthetic data at 16 px"):
        script.main(_argv(run, run, tmp_path / "out"))


def test_mean_latent_response_measures_the_x0_estimate(text_run):
    from ldm.data.synthetic import SyntheticShapesValidation
    from ldm.eval.synthetic_scores import mean_latent_response
    from ldm.inference import load_run
    from ldm.models.diffusion.parameterization import model_output_to_x0

    run, _ = text_run
    model = load_run(run)
    t = model.num_timesteps - 2
    got = mean_latent_response(model, PROMPTS[0], PROMPTS[1], [t, 3], n=4, seed=5, size=16)
    assert mean_latent_response(model, PROMPTS[0], PROMPTS[0], [t], n=4, seed=5, size=16) == {t: 0.0}
    # Recomputed by hand: the same images, noise and estimates.
    data = SyntheticShapesValidation(size=16, length=4)
    images = torch.from_numpy(np.stack([data[i]["image"] for i in range(4)])).permute(0, 3, 1, 2)
    with torch.no_grad():
        z0 = model.scale_factor * model.encode_first_stage(images).mode()
        means = z0.mean(dim=(2, 3))
        spread = (means - means.mean(0)).pow(2).sum(1).mean().sqrt()
        gen = torch.Generator().manual_seed(5)
        tt = torch.full((4,), t)
        zt = model.q_sample(z0, tt, torch.randn(z0.shape, generator=gen))
        c = model.get_learned_conditioning(PROMPTS)
        est = [model_output_to_x0(model, "eps", zt, tt, model.apply_model(zt, tt, c[i:i + 1].expand(4, -1, -1)))
               for i in (0, 1)]
    expected = (est[0].mean(dim=(2, 3)) - est[1].mean(dim=(2, 3))).norm(dim=1).mean() / spread
    assert list(got) == [t, 3] and got[t] == pytest.approx(float(expected), rel=1e-5) and got[t] > 0
    with pytest.raises(ValueError, match=r"timesteps \[1000\] outside"):
        mean_latent_response(model, PROMPTS[0], PROMPTS[1], [1000], n=4, size=16)


def test_response_pairs_are_measured_per_checkpoint(text_run, tmp_path, capsys):
    run, clf = text_run
    pair = ["a red circle on a blue background", "a red circle on a yellow background"]
    _script().main(_argv(run, clf, tmp_path, "--response", *pair))
    saved = json.loads((tmp_path / "responses.json").read_text())["responses"]
    assert [(r["step"], r["prompts"]) for r in saved] == [(50, pair), (120, pair)]
    from ldm.eval.synthetic_scores import mean_latent_response
    from ldm.inference import load_run

    T = load_run(run).num_timesteps
    timesteps = [round(f * T) for f in (0.9, 0.7, 0.5, 0.3)]
    expected = mean_latent_response(load_run(run / "checkpoints" / "last.ckpt"), *pair, timesteps, size=16)
    assert saved[1]["response"] == {str(t): v for t, v in expected.items()}
    assert f"| 120 | {pair[0]} / {pair[1]} | {timesteps[0]}: " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--response: prompt 'a blob' names no shape"):
        _script().main(_argv(run, clf, tmp_path, "--response", "a blob", pair[0]))
