"""The speed switches (ldm.perf) keep the numbers: mixed precision within stated tolerances of
float32, compiled, channels_last and eager denoisers alike, batched guidance equal to two passes,
and cheap default image logging."""
from __future__ import annotations

import copy

import pytest
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from ldm import perf
from ldm.models.diffusion.sampling import ClassifierFreeGuidance, CompVisDenoiser
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from tests.test_latent_cache import first_batch, setup_model
from ldm.util import instantiate_from_config

# bf16 keeps 8 mantissa bits (relative rounding 2^-9), fp16 11 (2^-12); through a small UNet the
# errors add up to well below these relative L2 errors of the output and the loss.
TOLERANCE = {"bf16-mixed": 2e-2, "16-mixed": 4e-3}


def tiny_unet(**extra) -> UNetModel:
    torch.manual_seed(0)
    unet = UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                     attention_resolutions=[2], channel_mult=[1, 2], num_head_channels=16,
                     use_spatial_transformer=True, context_dim=16, legacy=False, **extra).eval()
    with torch.no_grad():  # the output conv starts at zero: give it weights so outputs depend on everything
        for p in unet.out.parameters():
            p.normal_(0, 0.05)
    return unet


def unet_inputs(b=2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 4, 8, 8, generator=g), torch.randint(0, 1000, (b,), generator=g),
            torch.randn(b, 3, 16, generator=g))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_unet_output_is_close_to_float32(precision):
    unet = tiny_unet()
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        ref = unet(x, t, context=ctx)
        with MixedPrecision(precision, "cpu").forward_context():  # what Lightning's `precision` runs
            low = unet(x, t, context=ctx)
    assert low.dtype in (torch.bfloat16, torch.float16) and ref.dtype == torch.float32
    assert 0 < rel_err(low, ref) < TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_training_step_is_close_to_float32(precision):
    """One LatentDiffusion training step: the loss within the tolerance, gradients pointing the same
    way (cosine > 0.999) and of the same size (relative L2 error below 5x the tolerance)."""
    config, model = setup_model()
    model.train()
    batch = first_batch(instantiate_from_config(config.data.params.train))
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    out = {}
    for name, context in (("fp32", torch.autocast("cpu", enabled=False)),
                          ("low", MixedPrecision(precision, "cpu").forward_context())):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        with context:
            loss, _ = model.shared_step(batch)
        loss.backward()
        out[name] = loss.detach().float(), torch.cat([p.grad.flatten() for p in params])
    assert out["low"][0].dtype == torch.float32  # the loss reduction runs in float32
    assert rel_err(out["low"][0], out["fp32"][0]) < TOLERANCE[precision]
    cos = torch.nn.functional.cosine_similarity(out["low"][1], out["fp32"][1], dim=0)
    assert cos > 0.999
    assert rel_err(out["low"][1], out["fp32"][1]) < 5 * TOLERANCE[precision]


def test_channels_last_denoiser_matches_and_keeps_state_dict_names():
    eager = tiny_unet()
    fast = perf.configure_denoiser(copy.deepcopy(eager), channels_last=True)
    assert fast.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(fast.state_dict()) == list(eager.state_dict())
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fast(x, t, context=ctx), eager(x, t, context=ctx), rtol=1e-5, atol=1e-5)


def test_compile_denoiser_switch_compiles_in_place():
    """``model.params.compile_denoiser: true`` compiles the UNet in place: state-dict names (and so
    checkpoints) stay those of the eager model."""
    _, model = setup_model(["model.params.compile_denoiser=true"])
    _, eager = setup_model()
    assert list(model.state_dict()) == list(eager.state_dict())
    assert model.model.diffusion_model._compiled_call_impl is not None
    assert eager.model.diffusion_model._compiled_call_impl is None


@pytest.mark.slow
def test_compiled_denoiser_matches_eager():
    """The compiled UNet (inductor, C++ codegen on CPU) gives the eager outputs to the rounding of
    fused float32 kernels (atol 1e-5). A one-level UNet keeps the compilation short."""
    torch.manual_seed(0)
    eager = UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                      attention_resolutions=[], channel_mult=[1], num_heads=1).eval()
    with torch.no_grad():
        for p in eager.out.parameters():
            p.normal_(0, 0.05)
    compiled = perf.configure_denoiser(copy.deepcopy(eager), compile=True)
    x, t, _ = unet_inputs()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), eager(x, t), rtol=1e-5, atol=1e-5)


def test_compile_switch_rejects_other_values():
    with pytest.raises(TypeError, match="compile_denoiser"):
        perf.configure_denoiser(tiny_unet(), compile="yes")


def test_fused_adamw_for_cpu_and_cuda_parameters_alike():
    assert perf.adamw_options(tiny_unet().parameters()) == {"fused": True}
    if torch.cuda.is_available():
        assert perf.adamw_options(tiny_unet().cuda().parameters()) == {"fused": True}
        mixed = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, device="cuda"))]
        assert perf.adamw_options(mixed) == {}
    assert perf.adamw_options([]) == {}
    assert perf.adamw_options([torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)]) == {}


def test_fused_adamw_steps_like_the_default_loop():
    # the same three AdamW steps (weight decay, bias correction) from the same weights and gradients
    models = [tiny_unet(), tiny_unet()]
    opts = [torch.optim.AdamW(models[0].parameters(), lr=1e-2, weight_decay=0.1, **perf.adamw_options(
        models[0].parameters())), torch.optim.AdamW(models[1].parameters(), lr=1e-2, weight_decay=0.1)]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    for step in range(3):
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + i))
                 for i, p in enumerate(models[0].parameters())]
        for model, opt in zip(models, opts):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(next(models[0].parameters()), next(tiny_unet().parameters()))  # they moved


class CountingModel:
    """A LatentDiffusion seen through apply_model, counting calls and batch sizes."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.alphas_cumprod, self.parameterization = model.alphas_cumprod, model.parameterization

    def apply_model(self, x, t, cond):
        self.calls.append(x.shape[0])
        return self.model.apply_model(x, t, cond)


def test_batched_guidance_equals_two_passes():
    """Classifier-free guidance (Ho & Salimans 2021) runs one forward of the doubled batch and
    equals D(x|∅) + w (D(x|c) - D(x|∅)) from two separate passes (atol 1e-5: batch-size rounding)."""
    _, model = setup_model()
    model.eval()
    with torch.no_grad():  # zero-initialised layers (attention outputs) would hide the condition
        for p in model.model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    counting = CountingModel(model)
    denoiser = CompVisDenoiser(counting)
    labels = torch.tensor([1, 2, 3])
    cond = model.get_learned_conditioning({"class_label": labels})
    uncond = model.get_learned_conditioning({"class_label": torch.full_like(labels, model.null_class())})
    g = torch.Generator().manual_seed(3)
    x, sigma = torch.randn(3, 3, 4, 4, generator=g) * 2.0, torch.full((3,), 2.0)
    with torch.no_grad():
        guided = ClassifierFreeGuidance(denoiser, 4.0, uncond)(x, sigma, cond=cond)
        assert counting.calls == [6]  # one pass over [uncond, cond]
        d_u, d_c = denoiser(x, sigma, cond=uncond), denoiser(x, sigma, cond=cond)
    torch.testing.assert_close(guided, d_u + 4.0 * (d_c - d_u), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(d_u, d_c)  # the condition matters, so the check above has teeth


def test_default_image_logging_samples_with_ddim_only():
    """The defaults of LatentDiffusion.log_images cost one 50-step DDIM run: no progressive rows
    (1000 ancestral steps), no diffusion row, no in-/outpainting runs unless asked for."""
    config, model = setup_model()
    model.eval()
    batch = first_batch(instantiate_from_config(config.data.params.validation))
    calls = []
    apply_model = model.apply_model
    model.apply_model = lambda *a, **k: calls.append(1) or apply_model(*a, **k)
    logs = model.log_images(batch, N=2)
    assert len(calls) == 50
    assert {"inputs", "reconstruction", "samples", "conditioning"} == set(logs)


def test_sampling_loop_maps_levels_to_timesteps_on_the_host():
    """No host-device synchronisation per step: the samplers hand the denoiser host-side noise
    levels and CompVisDenoiser converts them with its host table; the device table (here a meta
    tensor, which cannot be read) is never touched inside the loop."""
    from ldm.models.diffusion.sampling import ddim_sigmas, sample_ddim, sample_dpmpp_2m, dpm_solver_sigmas

    _, model = setup_model()
    model.eval()
    seen = []
    counting = CountingModel(model)
    denoiser = CompVisDenoiser(counting)
    denoiser._neg_log_alpha = torch.empty_like(denoiser._neg_log_alpha, device="meta")

    def recording(x, sigma, cond=None):
        seen.append(sigma.device.type)
        return denoiser(x, sigma, cond=cond)

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    cond = model.get_learned_conditioning({"class_label": torch.tensor([0, 1])})
    for fn, sigmas in ((sample_ddim, ddim_sigmas(model.alphas_cumprod, 5)),
                       (sample_dpmpp_2m, dpm_solver_sigmas(model.alphas_cumprod, 5))):
        out = fn(recording, x * sigmas[0], sigmas, extra_args={"cond": cond}, disable=True)
        assert torch.isfinite(out).all()
    assert seen == ["cpu"] * 10 and counting.calls == [2] * 10


def test_fast_flag_of_the_task_scripts_is_dpm_solver_in_20_steps():
    import argparse

    from ldm.inference.cli import add_sampling_args, options_from_args

    p = argparse.ArgumentParser()
    add_sampling_args(p, samplers=("ddim", "plms", "dpm", "unipc"), steps=50, scale=5.0, eta=0.0)
    default = options_from_args(p.parse_args([]))
    fast = options_from_args(p.parse_args(["--fast", "--steps", "200"]))
    assert (default.sampler, default.steps) == ("ddim", 50)
    assert (fast.sampler, fast.steps, fast.eta) == ("dpm", 20, 0.0)
    masked_only = argparse.ArgumentParser()
    add_sampling_args(masked_only, samplers=("ddim", "plms", "ddpm"))
    with pytest.raises(SystemExit):  # no DPM-Solver for these tasks: no --fast either
        masked_only.parse_args(["--fast"])


def test_tf32_switch_touches_only_cuda():
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    perf.enable_tf32()
    if not torch.cuda.is_available():
        assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before
    else:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
