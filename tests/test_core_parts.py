"""Composed model parts: the parameterisation table, typed options that fail at start-up with their
config path, the inpainting configs' learning rates and UNet sizes, split_input_params."""
import typing

import numpy as np
import pytest
import torch

from ldm.config.errors import ConfigError
from ldm.config.validate import check_config_tree
from ldm.models.diffusion import parameterization as P
from ldm.models.diffusion.schedule import make_beta_schedule, schedule_arrays
from ldm.models.diffusion.sampling import CompVisDenoiser
from tests.sampler_standins import AnalyticModel


class Buffers:
    def __init__(self, T=100):
        for k, v in schedule_arrays(make_beta_schedule("linear", T, 0.0015, 0.0195)).items():
            setattr(self, k, torch.tensor(v, dtype=torch.float64))


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_one_table_row_is_consistent(name):
    """Each row's four forms agree: the target of (x0, noise) maps back to x0 and eps, its
    sigma-space denoiser gives the same x0, and the VLB factor converts its error into an x0 error."""
    s, row = Buffers(), P.PREDICTIONS[name]
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                       dtype=torch.float64)
    t = torch.tensor([0, 40, 99])
    x_t = P.q_sample(s, x0, t, noise)
    out = row.target(s, x0, noise, t)
    torch.testing.assert_close(row.to_x0(s, x_t, t, out), x0)
    torch.testing.assert_close(row.to_eps(s, x_t, t, out), noise)
    sigma = ((1 - s.alphas_cumprod[t]) / s.alphas_cumprod[t]).sqrt().reshape(-1, 1, 1, 1)
    x_ve = x_t * (1 + sigma ** 2).sqrt()  # x0 + sigma * noise
    torch.testing.assert_close(row.denoised(x_ve, sigma, out), x0)
    # a unit error in the output moves x0 by sqrt(vlb_factor)
    ac = s.alphas_cumprod.numpy()
    shifted = row.to_x0(s, x_t, t, out + 1.0) - x0
    np.testing.assert_allclose(shifted.pow(2).flatten(1).mean(1).numpy(), row.vlb_factor(ac)[t.numpy()], rtol=1e-9)
    assert P.PARAMETERIZATIONS == typing.get_args(P.Parameterization) == ("eps", "x0", "v")


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_sampler_adapter_reads_the_table(name):
    model = AnalyticModel(parameterization=name)
    ref = CompVisDenoiser(AnalyticModel(parameterization="eps"))
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 3.0])
    torch.testing.assert_close(CompVisDenoiser(model)(x, sigma), ref(x, sigma), atol=1e-4, rtol=1e-4)


def ldm_config(**params):
    unet = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                       "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1], "num_heads": 1}}
    first = {"target": "ldm.models.autoencoder.IdentityFirstStage", "params": {}}
    base = {"unet_config": unet, "first_stage_config": first, "cond_stage_config": "__is_unconditional__"}
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {**base, **params}}}


@pytest.mark.parametrize("key, typo", [("parameterization", "epsilon"), ("loss_type", "mse"),
                                       ("beta_schedule", "scaled_linear"), ("conditioning_key", "cross_attn")])
def test_typed_options_fail_at_start_up_with_their_path(key, typo):
    check_config_tree(ldm_config())  # the base config is valid
    with pytest.raises(ConfigError) as err:
        check_config_tree(ldm_config(**{key: typo}))
    assert err.value.path == f"model.params.{key}" and repr(typo) in str(err.value)


def tiny_ldm(**params):
    from ldm.util import instantiate_from_config
    return instantiate_from_config(ldm_config(**params)["model"])


def test_first_stage_object_applies_the_scale_once():
    from ldm.models.diffusion.first_stage import FirstStage
    model = tiny_ldm(scale_factor=0.5)
    x = torch.randn(2, 4, 8, 8)  # the identity first stage: E(x) = x
    fs = model.first_stage
    assert isinstance(fs, FirstStage) and fs.autoencoder is model.first_stage_model and fs.scale_factor == 0.5
    torch.testing.assert_close(fs.encode(x), 0.5 * x)
    torch.testing.assert_close(model.get_first_stage_encoding(model.encode_first_stage(x)), 0.5 * x)
    torch.testing.assert_close(model.decode_first_stage(0.5 * x), x)
    torch.testing.assert_close(fs.unit_std_scale(x), 1.0 / x.flatten().std())


def test_scale_by_std_estimate_goes_through_the_first_stage():
    from ldm.models.diffusion import training
    model = tiny_ldm(scale_by_std=True)
    x = 3.0 * torch.randn(4, 4, 8, 8)
    training.rescale_latents_by_std(model.first_stage, model.scale_factor, x)
    assert model.scale_factor == pytest.approx(1.0 / x.flatten().std().item(), rel=1e-6)
    assert "scale_factor" in model.state_dict()  # still saved under its original name
    torch.testing.assert_close(model.first_stage.encode(x).std(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_split_input_params_is_refused_with_a_pointer_to_tiled_decoding():
    model = tiny_ldm()
    model.split_input_params = {"ks": (128, 128), "stride": (64, 64), "vqf": 4, "patch_distributed_vq": True,
                                "tie_braker": False, "clip_max_weight": 0.5, "clip_min_weight": 0.01,
                                "clip_max_tie_weight": 0.5, "clip_min_tie_weight": 0.01}  # the BSR notebook's
    z = torch.randn(1, 4, 8, 8)
    for call in (lambda: model.decode_first_stage(z), lambda: model.encode_first_stage(z)):
        with pytest.raises(NotImplementedError, match=r"split_input_params.*ldm\.inference\.tiling\.decode"):
            call()


INPAINTING = {"configs/ldm/inpainting-places-ldm-vq-4.yaml": 215,
              "configs/ldm/inpainting-places-ldm-vq-4-noattn.yaml": 215,
              "configs/ldm/inpainting-places-ldm-vq-4-big.yaml": 387}  # UNet size in M, paper Sec. 4.5


@pytest.mark.parametrize("rel", sorted(INPAINTING))
def test_inpainting_configs_learning_rate_and_unet_size(rel):
    from pathlib import Path

    from omegaconf import OmegaConf

    from ldm.lr_scheduler import LambdaWarmUpCosineScheduler
    from ldm.util import instantiate_from_config
    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / rel), resolve=True)
    lr, batch = cfg["model"]["base_learning_rate"], cfg["data"]["params"]["batch_size"]
    assert lr == pytest.approx(1.0e-6 * batch) and batch == 48  # the released per-sample rate x batch size
    scheduler = cfg["model"]["params"].get("scheduler_config")
    if scheduler is not None:  # the big model's warm-up/cosine multiplier peaks at lr_max
        multiplier = LambdaWarmUpCosineScheduler(**scheduler["params"])
        peak = max(multiplier.schedule(n) for n in range(0, 50001, 250))
        assert lr * peak == pytest.approx(4.8e-6)
    with torch.device("meta"):
        unet = instantiate_from_config(cfg["model"]["params"]["unet_config"])
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == INPAINTING[rel]


@pytest.mark.parametrize("transformer", [False, True])
def test_attention_is_checkpointed_by_default_as_in_the_original(transformer):
    """The original always recomputed attention in backward (its memory budget); one switch turns it off."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    params = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                  attention_resolutions=[1], channel_mult=[1], num_heads=2)
    if transformer:
        params.update(use_spatial_transformer=True, context_dim=8, legacy=False)
    kwargs = {"context": torch.randn(2, 3, 8)} if transformer else {}
    calls = {}
    for flag in (True, False):
        torch.manual_seed(0)
        unet = UNetModel(**params, checkpoint_attention=flag)
        attention = [m for m in unet.modules() if type(m).__name__ in ("QKVAttentionLegacy", "CrossAttention")]
        counter = []
        for m in attention:
            m.register_forward_hook(lambda *a: counter.append(1))
        x = torch.randn(2, 4, 8, 8, requires_grad=True)
        unet(x, torch.tensor([3, 7]), **kwargs).square().sum().backward()
        calls[flag] = (len(counter), x.grad.clone())
    assert calls[True][0] == 2 * calls[False][0] > 0  # recomputed once in backward
    torch.testing.assert_close(calls[True][1], calls[False][1])  # same gradients


def test_one_null_condition_for_training_and_guidance():
    from ldm.models.diffusion.conditioning import NullCondition
    null = NullCondition(rate=0.5, class_key="class_label", null_class=10)
    batch = {"class_label": torch.tensor([1, 2, 3, 4])}
    assert null.like(batch)["class_label"].tolist() == [10] * 4
    assert null.like(["a cat", "a dog"]) == ["", ""]
    assert torch.equal(null.like(torch.ones(2, 3)), torch.zeros(2, 3))
    g = torch.Generator().manual_seed(0)
    dropped, mask = null.drop(batch, generator=g)  # the training rate
    expected = torch.rand(4, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(mask, expected)
    assert dropped["class_label"].tolist() == [10 if m else v for v, m in zip([1, 2, 3, 4], expected.tolist())]
    with pytest.raises(ValueError, match="ucg_rate"):
        NullCondition(rate=1.5)


def test_console_entry_points_name_the_task_mains(monkeypatch, capsys):
    import importlib
    import runpy
    from pathlib import Path

    import setuptools
    repo = Path(__file__).resolve().parents[1]
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(repo)
    runpy.run_path(str(repo / "setup.py"))
    entries = dict(e.split("=") for e in captured["entry_points"]["console_scripts"])
    assert set(entries) == {"ldm-sample-diffusion", "ldm-txt2img", "ldm-img2img", "ldm-inpaint", "ldm-superres",
                            "ldm-semantic2img", "ldm-layout2img"}
    for target in entries.values():
        module, func = target.split(":")
        with pytest.raises(SystemExit) as exit_info:
            getattr(importlib.import_module(module), func)(["--help"])
        assert exit_info.value.code == 0 and "--seed" in capsys.readouterr().out
    for path in (repo / "scripts").glob("*.py"):  # the task scripts are thin wrappers now
        if path.stem in {t.split(":")[0].rsplit(".", 1)[1] for t in entries.values()}:
            assert "sys.path" not in path.read_text()
