"""scripts/reproduce_small.py and ldm.eval.reproduction: config derivation, width matching, the
results file, the verdicts and the markdown writer (pure parts); one smoke run of the runner."""
import math
import sys

import pytest
from omegaconf import OmegaConf

from ldm.eval import reproduction as rp
from tests.conftest import REPO

AE = REPO / "configs" / "demo" / "autoencoder_kl.yaml"
LDM = REPO / "configs" / "demo" / "ldm_class.yaml"


@pytest.mark.parametrize("f, mult, c", [(2, [1, 1], 3), (4, [1, 1, 2], 3), (8, [1, 1, 2, 2], 4),
                                        (16, [1, 1, 2, 2, 2], 8)])
def test_autoencoder_config_per_f(f, mult, c):
    cfg = rp.autoencoder_config(OmegaConf.load(AE), f)
    dd = cfg.model.params.ddconfig
    assert list(dd.ch_mult) == mult and 2 ** (len(dd.ch_mult) - 1) == f
    assert cfg.model.params.embed_dim == c and dd.z_channels == c
    assert cfg.model.target == "ldm.models.autoencoder.AutoencoderKL"


def test_autoencoder_config_stretches_the_decay_to_the_run():
    base = OmegaConf.load(AE)
    assert base.model.params.scheduler_config.params.max_decay_steps == 600  # the demo's own length
    for make in (lambda b: rp.autoencoder_config(base, 4, b), lambda b: rp.vq_autoencoder_config(base, f=4, batches=b)):
        assert make(2600).model.params.scheduler_config.params.max_decay_steps == 2600
        assert make(None).model.params.scheduler_config.params.max_decay_steps == 600
        short = make(4).model.params.scheduler_config.params  # shorter than the 50-batch warm-up
        assert (short.warm_up_steps, short.max_decay_steps) == (3, 4)
        with pytest.raises(ValueError, match="batches must be positive"):
            make(0)
    assert base.model.params.scheduler_config.params.max_decay_steps == 600  # the base is not modified


def test_sweep_autoencoders_are_the_papers():
    # the demo's residual shortcut and squared error are ours; the sweep keeps the paper's L1 and plain E/D
    base = OmegaConf.load(AE)
    assert base.model.params.residual_shortcut and base.model.params.lossconfig.params.pixel_loss == "l2"
    for cfg in (rp.autoencoder_config(base, 2), rp.vq_autoencoder_config(base, f=4)):
        assert "residual_shortcut" not in cfg.model.params and "pixel_loss" not in cfg.model.params.lossconfig.params
    ldm = rp.ldm_config(OmegaConf.load(REPO / "configs/demo/ldm_class.yaml"), 2, 64, rp.autoencoder_config(base, 2))
    assert "residual_shortcut" not in ldm.model.params.first_stage_config.params


def test_autoencoder_config_refuses_pixel_space_and_unknown_f():
    with pytest.raises(ValueError, match="pixel space"):
        rp.autoencoder_config(OmegaConf.load(AE), 1)
    with pytest.raises(ValueError, match="f=3"):
        rp.autoencoder_config(OmegaConf.load(AE), 3)


def test_ldm_config_pixel_space_and_latent():
    base = OmegaConf.load(LDM)
    px = rp.ldm_config(base, 1, 96)
    assert px.model.params.first_stage_config == {"target": "ldm.models.autoencoder.IdentityFirstStage"}
    assert px.model.params.scale_by_std is False
    u = px.model.params.unet_config.params
    assert (u.image_size, u.in_channels, u.out_channels, u.model_channels) == (32, 3, 3, 96)

    ae = rp.autoencoder_config(OmegaConf.load(AE), 16)
    lat = rp.ldm_config(base, 16, 64, ae, "a/last.ckpt")
    fs = lat.model.params.first_stage_config
    assert fs.target == "ldm.models.autoencoder.AutoencoderKL" and fs.params.ckpt_path == "a/last.ckpt"
    assert list(fs.params.ddconfig.ch_mult) == [1, 1, 2, 2, 2] and fs.params.lossconfig.target == "torch.nn.Identity"
    u = lat.model.params.unet_config.params
    assert (lat.model.params.image_size, lat.model.params.channels) == (2, 8)
    assert (u.image_size, u.in_channels, u.out_channels) == (2, 8, 8)
    assert base.model.params.unet_config.params.model_channels == 64  # the base is not modified
    # the paper's uniform loss weights, although the demo config trains with Min-SNR
    assert base.model.params.snr_gamma == 5.0 and "snr_gamma" not in lat.model.params and "snr_gamma" not in px.model.params
    # ... and a constant learning rate, although the demo config decays it over its 1000 steps
    assert "scheduler_config" in base.model.params
    assert "scheduler_config" not in lat.model.params and "scheduler_config" not in px.model.params
    assert "scheduler_config" not in fs.params  # the autoencoder's training schedule is not a first-stage parameter
    # ... and eps-prediction on the paper's schedule, although the demo config predicts v on a less noisy one
    assert (base.model.params.parameterization, base.model.params.linear_start) == ("v", 0.00085)
    for cfg in (lat, px):
        assert cfg.model.params.parameterization == "eps"
        assert (cfg.model.params.linear_start, cfg.model.params.linear_end) == (0.0015, 0.0195)

    vq = rp.ldm_config(base, 4, 64, rp.vq_autoencoder_config(OmegaConf.load(AE)), "v.ckpt")
    assert vq.model.params.first_stage_config.target == "ldm.models.autoencoder.VQModelInterface"
    assert vq.model.params.scale_by_std is False and vq.model.params.first_stage_config.params.n_embed == 256


def test_vq_config():
    cfg = rp.vq_autoencoder_config(OmegaConf.load(AE), n_embed=128)
    p = cfg.model.params
    assert cfg.model.target == "ldm.models.autoencoder.VQModel" and p.n_embed == 128
    assert p.ddconfig.double_z is False
    assert p.lossconfig.target == "ldm.modules.losses.VQLPIPSWithDiscriminator"
    assert p.lossconfig.params.perceptual_weight == 0.0 and p.lossconfig.params.disc_start == 100000


def test_closest_width_picks_nearest_count_and_smaller_on_ties():
    count = {32: 100, 64: 400, 96: 900, 128: 1600}.__getitem__
    assert rp.closest_width(count, 420, (32, 64, 96, 128)) == (64, 400)
    assert rp.closest_width(count, 1300, (128, 96, 32)) == (128, 1600)
    assert rp.closest_width(count, 250, (32, 64)) == (32, 100)  # |100-250| == |400-250|: the smaller
    with pytest.raises(ValueError):
        rp.closest_width(count, 1, ())


def test_unet_width_matching_on_real_unets():
    base = OmegaConf.load(LDM)
    ae4 = rp.autoencoder_config(OmegaConf.load(AE), 4)
    ref = rp.unet_params(rp.ldm_config(base, 4, 64, ae4).model.params.unet_config)
    width, n = rp.closest_width(lambda w: rp.unet_params(rp.ldm_config(base, 1, w).model.params.unet_config), ref,
                                (32, 64, 96))
    assert width == 64 and n == ref  # pixel space has the f=4 latent's 3 channels: the same UNet size


def test_checkpoint_step():
    assert rp.checkpoint_step("x/epoch=000000-step=000000200.ckpt") == 200
    with pytest.raises(ValueError, match="no step"):
        rp.checkpoint_step("last.ckpt")


def test_results_round_trip(tmp_path):
    path = tmp_path / "r" / "results.json"
    assert rp.load_results(path) == {}
    data = {"guidance": {"scales": {"1": {"accuracy": 0.5, "fid_like": 3.25}}}, "commands": ["python a.py"],
            "meta": {"cpus": 2}}
    rp.save_results(path, data)
    assert rp.load_results(path) == data
    path.write_text('{"version": 99}')
    with pytest.raises(ValueError, match="version 99"):
        rp.load_results(path)


def _pts(*triples):
    return [{"step": i, "wall_s": w, "fid_like": fid, "accuracy": acc} for i, (w, fid, acc) in enumerate(triples)]


def test_fsweep_verdict_at_equal_compute():
    curves = {1: _pts((100, 50.0, 0.2), (200, 30.0, 0.5)),    # pixel space: the budget is its 200 s
              4: _pts((40, 40.0, 0.3), (80, 20.0, 0.6)),      # stopped at 80 s: scored there
              8: _pts((30, 60.0, 0.1), (90, 55.0, 0.1))}
    v = rp.fsweep_verdict(curves)
    assert v["budget_s"] == 200
    assert v["at_budget"][1]["wall_s"] == 200 and v["at_budget"][4]["wall_s"] == 80
    assert v["beats_f1"] == {4: True, 8: False}
    assert "Not reproduced: f=8 did not beat pixel space" in v["lines"][-1]
    curves[1] = _pts((50, 45.0, 0.25), (60, 35.0, 0.3))     # f=1 trained for 60 s only
    v = rp.fsweep_verdict(curves)
    assert v["budget_s"] == 60 and v["at_budget"][4]["wall_s"] == 40 and v["at_budget"][8]["wall_s"] == 30
    assert v["beats_f1"] == {4: False, 8: False}
    curves[8] = _pts((70, 10.0, 0.9))                        # first checkpoint after f=1's time
    v = rp.fsweep_verdict(curves)
    assert v["beats_f1"] == {4: False} and "f=8: no checkpoint within f=1's training time of 60 s" in v["lines"][1]
    curves[4] = _pts((40, 30.0, 0.3))
    assert rp.fsweep_verdict(curves)["lines"][-1].startswith("Reproduced: f=4 all beat")
    assert rp.fsweep_verdict({4: _pts((1, 1.0, 1.0))})["lines"][0].startswith("Not enough runs")


def test_fsweep_verdict_ignores_accuracy_differences_within_sampling_noise():
    assert rp.accuracy_noise(0.5, 0.5, 100) == pytest.approx(2 * math.sqrt(0.5 / 100))
    curves = {1: _pts((700, 92.25, 0.148)), 8: _pts((690, 61.56, 0.141)), 16: _pts((650, 62.65, 0.040))}
    exact = rp.fsweep_verdict(curves)
    assert exact["beats_f1"] == {8: False, 16: False}  # without a sample count every point counts
    v = rp.fsweep_verdict(curves, n_samples=128)
    # 0.7 points lower is noise at 128 samples (±8.8); 10.8 points lower is not (±7.2)
    assert v["beats_f1"] == {8: True, 16: False}
    assert "accuracy 14.1 % vs 14.8 % (lower by 0.7 points, within the sampling noise of ±8.8)." in v["lines"][0]
    assert v["lines"][1].endswith("accuracy 4.0 % vs 14.8 %.")


def test_samplers_matching_tolerances():
    ref = {"accuracy": 0.80, "fid_like": 10.0}
    runs = {"dpm": {5: {"accuracy": 0.70, "fid_like": 10.5}, 10: {"accuracy": 0.76, "fid_like": 10.9},
                    15: {"accuracy": 0.80, "fid_like": 9.0}},
            "unipc": {5: {"accuracy": 0.9, "fid_like": 11.5}}}
    assert rp.samplers_matching(ref, runs, acc_tol=0.05, fid_tol=0.10) == {"dpm": 10, "unipc": None}
    assert rp.samplers_matching(ref, runs, acc_tol=0.0, fid_tol=0.0) == {"dpm": 15, "unipc": None}


def test_guidance_verdict():
    lines = rp.guidance_verdict({1.0: {"accuracy": 0.3, "fid_like": 20.0}, 2.0: {"accuracy": 0.6, "fid_like": 12.0},
                                 8.0: {"accuracy": 0.7, "fid_like": 25.0}})
    assert lines[0] == "Best FID-like score at scale 2 (12.00); best accuracy at scale 8 (70.0 %)."
    assert lines[1].startswith("Reproduced: guidance improves the FID-like score over scale 1 (20.00 -> 12.00)")
    assert lines[2].startswith("Trade-off seen")
    lines = rp.guidance_verdict({1.0: {"accuracy": 0.3, "fid_like": 10.0}, 3.0: {"accuracy": 0.2, "fid_like": 15.0}})
    assert lines[1].startswith("Not reproduced") and len(lines) == 2
    # within the 5 % margin: no claim
    lines = rp.guidance_verdict({1.0: {"accuracy": 0.3, "fid_like": 10.0}, 3.0: {"accuracy": 0.3, "fid_like": 9.6}})
    assert lines[1].startswith("Not reproduced")


def test_markdown_writer_keeps_the_analysis_block(tmp_path):
    doc = tmp_path / "reproduction.md"

    def render(analysis):
        return f"# T\n\nnumbers {render.n}\n\n{rp.ANALYSIS_BEGIN}\n{analysis}\n{rp.ANALYSIS_END}\n"

    render.n = 1
    rp.write_markdown(doc, render)
    assert rp.extract_analysis(doc.read_text()) == rp.DEFAULT_ANALYSIS
    text = doc.read_text().replace(rp.DEFAULT_ANALYSIS, "f=4 wins.\n\nHand-written, two paragraphs.")
    doc.write_text(text)
    render.n = 2
    rp.write_markdown(doc, render)
    out = doc.read_text()
    assert "numbers 2" in out and "numbers 1" not in out
    assert rp.extract_analysis(out) == "f=4 wins.\n\nHand-written, two paragraphs."
    with pytest.raises(ValueError, match="analysis block"):
        rp.write_markdown(doc, lambda analysis: "# no block\n")
    assert rp.extract_analysis(doc.read_text()) == "f=4 wins.\n\nHand-written, two paragraphs."  # untouched


def test_markdown_table():
    assert rp.markdown_table(["a", "b"], [[1, 0.123456], [None, math.nan]]) == \
        "| a | b |\n|---|---|\n| 1 | 0.1235 |\n| — | — |"


def _runner_module():
    import importlib.util

    if "reproduce_small" in sys.modules:
        return sys.modules["reproduce_small"]
    spec = importlib.util.spec_from_file_location("reproduce_small", REPO / "scripts" / "reproduce_small.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_small"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("minutes, text", [(6.0, "00:00:06:00"), (0.5, "00:00:00:30"), (1500.0, "01:01:00:00")])
def test_wall_time_limit_in_lightning_format(minutes, text):
    assert _runner_module()._dhms(minutes) == text


def test_step_checkpoints_reads_the_true_step_of_a_stopped_run(tmp_path):
    """A run stopped by its wall-time limit ends before max_steps: last.ckpt is scored at its
    own global_step, after the step checkpoints, and not twice when it equals the last one."""
    import torch

    ckdir = tmp_path / "checkpoints"
    (ckdir / "trainstep_checkpoints").mkdir(parents=True)
    for step in (150, 300):
        torch.save({"global_step": step}, ckdir / "trainstep_checkpoints" / f"epoch=000000-step={step:09d}.ckpt")
    torch.save({"global_step": 377}, ckdir / "last.ckpt")
    assert [s for s, _ in rp.step_checkpoints(tmp_path, 1200)] == [150, 300, 377]
    torch.save({"global_step": 300}, ckdir / "last.ckpt")
    assert [s for s, _ in rp.step_checkpoints(tmp_path, 1200)] == [150, 300]


def test_runner_trains_a_shared_run_once_per_invocation(tmp_path, monkeypatch):
    """The sampling, guidance and KL/VQ experiments all use the f=4 model: one invocation trains
    it once, even without --reuse; a new invocation without --reuse trains it again."""
    mod = _runner_module()
    calls = []

    def fake_run(self, cmd, what):
        calls.append(what)
        (self.logdir / f"2026-01-01T00-00-0{len(calls)}_{what}").mkdir()

    monkeypatch.setattr(mod.Runner, "run", fake_run)
    runner = mod.Runner(tmp_path, mod.BUDGETS["smoke"], reuse=False)
    cfg = OmegaConf.create({"model": {}})
    first = runner.train("ldm_f4", cfg, [])
    assert runner.train("ldm_f4", cfg, []) == first and calls == ["ldm_f4"]
    assert (tmp_path / "ldm_f4.done").is_file() and (tmp_path / "configs" / "ldm_f4.yaml").is_file()
    again = mod.Runner(tmp_path, mod.BUDGETS["smoke"], reuse=False).train("ldm_f4", cfg, [])
    assert calls == ["ldm_f4", "ldm_f4"] and again != first
    reused = mod.Runner(tmp_path, mod.BUDGETS["smoke"], reuse=True).train("ldm_f4", cfg, [])
    assert calls == ["ldm_f4", "ldm_f4"] and reused == again


@pytest.mark.slow
def test_smoke_run_of_the_runner(tmp_path):
    """The whole runner on the smoke budget, guidance only: trains, scores, plots, writes the document."""
    mod = _runner_module()
    doc = tmp_path / "doc" / "reproduction.md"
    results = mod.main(["--budget", "smoke", "--experiments", "guidance", "--out", str(tmp_path / "out"),
                        "--logdir", str(tmp_path / "logs"), "--doc", str(doc)])
    assert set(results["guidance"]["scales"]) == {"1", "3"}
    assert rp.load_results(tmp_path / "out" / "results.json")["guidance"] == results["guidance"]
    assert (tmp_path / "out" / "guidance_fid_like.png").is_file()
    text = doc.read_text()
    assert "## 3. Classifier-free guidance" in text and "Smoke budget" in text
    # the document names the command that regenerates it, with its non-default settings
    assert (f"python scripts/reproduce_small.py --budget smoke --experiments guidance --out {tmp_path / 'out'} "
            f"--doc {doc}\n") in text
    assert any(c.startswith("python main.py --base") for c in results["commands"])
    # --reuse: nothing is trained or sampled again
    again = mod.main(["--budget", "smoke", "--experiments", "guidance", "--out", str(tmp_path / "out"),
                      "--logdir", str(tmp_path / "logs"), "--doc", str(doc), "--reuse"])
    assert again["guidance"] == results["guidance"]
