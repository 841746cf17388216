"""Side-by-side speed of this framework: against diffusers with identical weights, and against itself
with and without the latent cache and in pixel space.

Pairs run in one process (the whole-run rows: in alternating subprocesses), alternating, on the same
inputs after checking that their outputs agree, so the machine's drift hits both sides alike.
Every row reports medians and the ratio ours/theirs (or cached/on-the-fly).

    python scripts/benchmark.py                                   # CPU rows: unet, sampling, first-stage, ldm-vs-pixel
    python scripts/benchmark.py --rows latent-cache --json out.json   # whole demo runs, minutes
    python scripts/benchmark.py --preset sd-v1 --device cuda --dtype bf16 --batch 4 --size 64

Rows:
  unet          UNet forward and training step (forward + backward + AdamW), ours vs UNet2DConditionModel
  sampling      DDIM-50 and DPM-Solver++(2M)-20 loops with guidance, ours vs diffusers' schedulers
  first-stage   AutoencoderKL encode and decode, ours vs diffusers' AutoencoderKL
  ldm-vs-pixel  training step of one UNet on f=4 latents vs on pixels (paper Table 6: LDM-4 vs LDM-1)
  latent-cache  whole main.py runs of the demo class config, encoding on the fly vs --latent-cache
  gpu           (CUDA only) SD-v1-sized UNet: training samples/s and a 50-step guided 512² sample

Needs diffusers (the `test` extra) for the ours-vs-diffusers rows.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_CLASS = REPO / "configs" / "demo" / "ldm_class.yaml"

PRESETS = {
    # SD v1 (configs/.../v1-inference.yaml) UNet: 860 M parameters.
    "sd-v1": dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                  num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                  transformer_depth=1, context_dim=768, legacy=False),
    # The same layout at a fifth of the width: a CPU-sized stand-in.
    "sd-v1-small": dict(image_size=32, in_channels=4, out_channels=4, model_channels=64,
                        attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8,
                        use_spatial_transformer=True, transformer_depth=1, context_dim=256, legacy=False),
}
# The KL-f8 first stage of SD v1 (first_stage_config of v1-inference.yaml) and a CPU-sized one.
FIRST_STAGES = {
    "sd-v1": dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                  num_res_blocks=2, attn_resolutions=[], dropout=0.0),
    "sd-v1-small": dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32,
                        ch_mult=[1, 2, 4, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def side_by_side(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                 warmup: int = 1) -> dict[str, list[float]]:
    """Alternate the calls so that drift hits each alike; return each one's times."""
    for fn in fns.values():
        timed(fn, device, warmup)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += timed(fn, device, 1)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ms = [1000 * t for t in times]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}


def pair(name: str, ours: list[float], theirs: list[float], theirs_name: str = "diffusers", **info) -> dict:
    o, t = summary(ours), summary(theirs)
    return {"row": name, "ours": o, theirs_name: t, "ratio": o["median_ms"] / t["median_ms"], **info}


# ---------------------------------------------------------------- models with identical weights

def build_unets(preset: str, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    params = PRESETS[preset]
    torch.manual_seed(0)
    # Like diffusers' default, no recomputation of attention in backward (ours defaults to the
    # original's memory-saving checkpointing, which costs about a fifth of a training step on CPU).
    ours = UNetModel(**params, checkpoint_attention=False).eval()
    with torch.no_grad():  # the output conv starts at zero: give it weights so outputs can be compared
        for p in ours.out.parameters():
            p.normal_(0, 0.02)
    original = {"model": {"params": {"unet_config": {"params": copy.deepcopy(params)},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    ckpt = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(original, ckpt)
    theirs = UNet2DConditionModel(**config).eval()
    theirs.load_state_dict(convert_ldm_unet_checkpoint(ckpt, config), strict=True)
    return ours.to(device, dtype), theirs.to(device, dtype), params


def build_first_stages(preset: str, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL as TheirAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    from ldm.models.autoencoder import AutoencoderKL

    ddconfig = FIRST_STAGES[preset]
    torch.manual_seed(0)
    ours = AutoencoderKL(ddconfig=ddconfig, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4).eval()
    original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": ddconfig, "embed_dim": 4}}}}}
    ckpt = {"first_stage_model." + k: v for k, v in ours.state_dict().items()}
    config = create_vae_diffusers_config_from_ldm(original, ckpt, image_size=ddconfig["resolution"],
                                                  scaling_factor=1.0)
    theirs = TheirAutoencoderKL(**config).eval()
    theirs.load_state_dict(convert_ldm_vae_checkpoint(ckpt, config), strict=True)
    return ours.to(device, dtype), theirs.to(device, dtype)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------- rows

def row_unet(args, device, dtype) -> list[dict]:
    ours, theirs, params = build_unets(args.preset, device, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, params["in_channels"], args.size, args.size, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    ctx = torch.randn(args.batch, 77, params["context_dim"], generator=g).to(device, dtype)
    with torch.no_grad():
        err = max_err(ours(x, t, context=ctx), theirs(x, t, encoder_hidden_states=ctx).sample)
    fwd = side_by_side({
        "ours": lambda: torch.no_grad()(ours)(x, t, context=ctx),
        "theirs": lambda: torch.no_grad()(theirs)(x, t, encoder_hidden_states=ctx),
    }, device, args.repeats)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_t = torch.optim.AdamW(theirs.parameters(), lr=1e-5)
    target = torch.randn_like(x)

    def step(model, opt, out):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(out().float(), target.float()).backward()
        opt.step()

    ours.train(), theirs.train()
    train = side_by_side({
        "ours": lambda: step(ours, opt_o, lambda: ours(x, t, context=ctx)),
        "theirs": lambda: step(theirs, opt_t, lambda: theirs(x, t, encoder_hidden_states=ctx).sample),
    }, device, max(3, args.repeats // 2))
    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    info = dict(params_m=round(n_params, 1), batch=args.batch, latent=args.size, max_abs_diff=err)
    return [pair("unet forward", fwd["ours"], fwd["theirs"], **info),
            pair("unet training step (fwd+bwd+AdamW)", train["ours"], train["theirs"], **info)]


def row_sampling(args, device, dtype) -> list[dict]:
    """The loops of DDIM-50 and DPM-Solver++(2M)-20 with classifier-free guidance (scale 7.5), our
    sampler functions around our UNet vs diffusers' schedulers around theirs; same start noise."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from ldm.models.diffusion.sampling import (ClassifierFreeGuidance, CompVisDenoiser, ddim_sigmas,
                                               dpm_solver_sigmas, sample_ddim, sample_dpmpp_2m, ve_to_vp, vp_to_ve)
    from ldm.models.diffusion.schedule import make_beta_schedule

    ours, theirs, params = build_unets(args.preset, device, dtype)
    betas = torch.tensor(make_beta_schedule("linear", 1000, 0.00085, 0.012), dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).to(device)

    class Model:  # what CompVisDenoiser reads from a LatentDiffusion
        parameterization = "eps"

        def __init__(self):
            self.alphas_cumprod = alphas_cumprod

        def apply_model(self, x, t, cond):
            return ours(x.to(dtype), t, context=cond).float()

    g = torch.Generator().manual_seed(0)
    b, n = args.sample_batch, params["in_channels"]
    noise = torch.randn(b, n, args.size, args.size, generator=g).to(device)
    cond = torch.randn(b, 77, params["context_dim"], generator=g).to(device, dtype)
    uncond = torch.zeros_like(cond)
    scale = 7.5
    denoiser = ClassifierFreeGuidance(CompVisDenoiser(Model()), scale, uncond)
    sched_kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

    def ours_loop(fn, sigmas):
        return ve_to_vp(fn(denoiser, vp_to_ve(noise, sigmas[0]), sigmas, extra_args={"cond": cond},
                           disable=True), sigmas[-1])

    def theirs_loop(scheduler, steps):
        scheduler.set_timesteps(steps, device=device)
        latents = noise * scheduler.init_noise_sigma
        ctx = torch.cat([uncond, cond])
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(dtype)
            eps_u, eps_c = theirs(inp, t, encoder_hidden_states=ctx).sample.float().chunk(2)
            latents = scheduler.step(eps_u + scale * (eps_c - eps_u), t, latents).prev_sample
        return latents

    rows = []
    ddim_s = ddim_sigmas(alphas_cumprod, 50)
    ddim_sched = DDIMScheduler(**sched_kw, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    dpm_s = dpm_solver_sigmas(alphas_cumprod, 20)
    dpm_sched = DPMSolverMultistepScheduler(**sched_kw, algorithm_type="dpmsolver++", solver_order=2)
    for name, fn, sigmas, sched, steps in (("DDIM-50 loop, CFG", sample_ddim, ddim_s, ddim_sched, 50),
                                           ("DPM-Solver++(2M)-20 loop, CFG", sample_dpmpp_2m, dpm_s, dpm_sched, 20)):
        with torch.no_grad():
            err = max_err(ours_loop(fn, sigmas), theirs_loop(sched, steps)) if name.startswith("DDIM") else None
            times = side_by_side({"ours": lambda: ours_loop(fn, sigmas), "theirs": lambda: theirs_loop(sched, steps)},
                                 device, max(2, args.repeats // 4), warmup=0)
        rows.append(pair(name, times["ours"], times["theirs"], batch=b, latent=args.size,
                         max_abs_diff=err))
    return rows


def row_first_stage(args, device, dtype) -> list[dict]:
    ours, theirs = build_first_stages(args.preset, device, dtype)
    px = args.size * 8
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.sample_batch, 3, px, px, generator=g) * 2 - 1).to(device, dtype)
    z = torch.randn(args.sample_batch, 4, args.size, args.size, generator=g).to(device, dtype)
    with torch.no_grad():
        err_e = max_err(ours.encode(x).mean, theirs.encode(x).latent_dist.mean)
        err_d = max_err(ours.decode(z), theirs.decode(z).sample)
        enc = side_by_side({"ours": lambda: ours.encode(x).mean, "theirs": lambda: theirs.encode(x).latent_dist.mean},
                           device, max(3, args.repeats // 2))
        dec = side_by_side({"ours": lambda: ours.decode(z), "theirs": lambda: theirs.decode(z).sample},
                           device, max(3, args.repeats // 2))
    info = dict(batch=args.sample_batch, image=px)
    return [pair("first stage encode", enc["ours"], enc["theirs"], max_abs_diff=err_e, **info),
            pair("first stage decode", dec["ours"], dec["theirs"], max_abs_diff=err_d, **info)]


def row_ldm_vs_pixel(args, device, dtype) -> list[dict]:
    """One UNet (equal parameters) trained on f=4 latents vs on the pixels they encode (paper
    Table 6); the LDM step includes the frozen first-stage encode, as training without a cache does."""
    from ldm.models.autoencoder import AutoencoderKL
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    px = args.pixel_size
    unet_kw = dict(in_channels=3, out_channels=3, model_channels=64, attention_resolutions=[2, 4], num_res_blocks=1,
                   channel_mult=[1, 2, 2], num_head_channels=32)
    torch.manual_seed(0)
    latent_unet = UNetModel(image_size=px // 4, **unet_kw).to(device, dtype)
    pixel_unet = UNetModel(image_size=px, **unet_kw).to(device, dtype)
    first_stage = AutoencoderKL(ddconfig=dict(double_z=True, z_channels=3, resolution=px, in_channels=3, out_ch=3, ch=32,
                                              ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
                                lossconfig={"target": "torch.nn.Identity"}, embed_dim=3).to(device, dtype).eval()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch * 4, 3, px, px, generator=g) * 2 - 1).to(device, dtype)
    t = torch.randint(0, 1000, (x.shape[0],), generator=g).to(device)
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (latent_unet, pixel_unet)}

    def step(unet, x0):
        opts[unet].zero_grad(set_to_none=True)
        noise = torch.randn_like(x0)
        torch.nn.functional.mse_loss(unet(x0 + noise, t).float(), noise.float()).backward()
        opts[unet].step()

    def ldm4():
        with torch.no_grad():
            z = first_stage.encode(x).sample()
        step(latent_unet, z)

    times = side_by_side({"ldm4": ldm4, "ldm1": lambda: step(pixel_unet, x)}, device, max(3, args.repeats // 2))
    n = sum(p.numel() for p in latent_unet.parameters()) / 1e6
    row = pair("training step: LDM-4 (encode + UNet on latents) vs LDM-1 (UNet on pixels)", times["ldm4"],
               times["ldm1"], theirs_name="pixel", params_m=round(n, 2), batch=x.shape[0], image=px)
    row["speedup"] = 1 / row["ratio"]
    return [row]


def _run_main(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def demo_class_factor() -> int:
    """The downsampling factor of the demo class config's first stage: one halving per ch_mult level after the first."""
    from omegaconf import OmegaConf

    return 2 ** (len(OmegaConf.load(DEMO_CLASS).model.params.first_stage_config.params.ddconfig.ch_mult) - 1)


def latent_cache_commands(args, workdir: Path, device: torch.device) -> tuple[list[str], list[str], list[str]]:
    size = args.run_image_size
    latent = size // demo_class_factor()
    data = [f"data.params.train.params.size={size}", f"data.params.validation.params.size={size}",
            f"data.params.train.params.length={args.run_steps * 16}",
            f"model.params.first_stage_config.params.ddconfig.resolution={size}",
            f"model.params.image_size={latent}", f"model.params.unet_config.params.image_size={latent}",
            "model.params.representation_alignment=null"]  # its teacher sees images, which a cached batch lacks
    quiet = ["lightning.callbacks.image_logger=null", "lightning.trainer.limit_val_batches=0",
             "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false"]
    cache = [sys.executable, "scripts/cache_latents.py", "--base", str(DEMO_CLASS), *data,
             "--device", str(device), "--out", str(workdir / "cache")]
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    train = [sys.executable, "main.py", "--base", str(DEMO_CLASS), "-t", "--accelerator", accelerator, "--no-test",
             "--logger", "csv", "-l", str(workdir / "logs"), "--max_steps", str(args.run_steps), *data, *quiet]
    return cache, train, train + ["--latent-cache", str(workdir / "cache")]


def row_latent_cache(args, device, dtype) -> list[dict]:
    """Whole main.py runs of equal steps on the demo class config, encoding each batch vs reading the
    cache (built once before, its time reported apart), alternated run by run."""
    workdir = Path(tempfile.mkdtemp(prefix="ldm-bench-"))
    try:
        cache, fly, cached = latent_cache_commands(args, workdir, device)
        cache_s = _run_main(cache)
        times: dict[str, list[float]] = {"cached": [], "fly": []}
        for i in range(args.run_repeats):
            for name, cmd in (("fly", fly), ("cached", cached)) if i % 2 == 0 else (("cached", cached), ("fly", fly)):
                times[name].append(_run_main(cmd))
                print(f"  run {i}: {name} {times[name][-1]:.1f} s", file=sys.stderr)
        row = pair(f"whole training run, {args.run_steps} steps of 16 at {args.run_image_size}px: --latent-cache vs "
                   "on the fly", times["cached"], times["fly"], theirs_name="on the fly",
                   commands={"cache": " ".join(cache[1:]), "on the fly": " ".join(fly[1:]),
                             "cached": " ".join(cached[1:])}, cache_build_s=cache_s)
        row["speedup"] = 1 / row["ratio"]
        # Each pair ran back to back: the median of the pairs' ratios resists load that came and went.
        row["pair_speedups"] = [f / c for f, c in zip(times["fly"], times["cached"])]
        row["median_pair_speedup"] = statistics.median(row["pair_speedups"])
        return [row]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def row_gpu(args, device, dtype) -> list[dict]:
    """SD-v1-sized UNet on a GPU: training throughput at 64x64 latents and a 50-step guided sample."""
    if device.type != "cuda":
        return []
    gpu_args = copy.copy(args)
    gpu_args.preset, gpu_args.size = "sd-v1", 64
    rows = row_unet(gpu_args, device, dtype)
    for r in rows:
        r["samples_per_s_ours"] = 1000 * args.batch / r["ours"]["median_ms"]
    gpu_args.sample_batch = 1
    rows += row_sampling(gpu_args, device, dtype)
    return rows


ROWS = {"unet": row_unet, "sampling": row_sampling, "first-stage": row_first_stage,
        "ldm-vs-pixel": row_ldm_vs_pixel, "latent-cache": row_latent_cache, "gpu": row_gpu}


def hardware(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "device": str(device),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):  # optional (the [diffusers] extra): no version recorded without it
        import diffusers
        info["diffusers"] = diffusers.__version__
    return info


def print_table(rows: list[dict]) -> None:
    print("| row | ours median ms | theirs median ms | ours/theirs | max abs diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        other = next(k for k in r if isinstance(r[k], dict) and k not in ("ours", "commands"))
        diff = r.get("max_abs_diff")
        print(f"| {r['row']} ({other}) | {r['ours']['median_ms']:.1f} | {r[other]['median_ms']:.1f} | "
              f"{r['ratio']:.3f} | {'' if diff is None else f'{diff:.1e}'} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=None,
                   help=f"comma-separated rows of {sorted(ROWS)} (default: unet,sampling,first-stage,ldm-vs-pixel, "
                        "plus gpu when CUDA is available)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="sd-v1-small")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch", type=int, default=2, help="training / forward batch")
    p.add_argument("--sample-batch", type=int, default=1, help="batch of the sampling and first-stage rows")
    p.add_argument("--size", type=int, default=32, help="latent height and width")
    p.add_argument("--pixel-size", type=int, default=64, help="image side of the ldm-vs-pixel row")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--run-steps", type=int, default=30, help="training steps of each whole run (latent-cache row)")
    p.add_argument("--run-image-size", type=int, default=64, help="image side of the whole runs")
    p.add_argument("--run-repeats", type=int, default=4, help="whole runs per side, alternated")
    p.add_argument("--json", default=None, help="also write the rows and the hardware to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    names = args.rows.split(",") if args.rows else (["unet", "sampling", "first-stage", "ldm-vs-pixel"]
                                                    + (["gpu"] if device.type == "cuda" else []))
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"--rows: unknown {unknown}; choose from {sorted(ROWS)}")
    if device.type == "cuda":
        from ldm.perf import enable_tf32
        enable_tf32()
    info = hardware(device)
    print(json.dumps(info))
    rows: list[dict] = []
    for name in names:
        print(f"== {name}", file=sys.stderr)
        new = ROWS[name](args, device, DTYPES[args.dtype or "fp32"] if name == "latent-cache" else dtype)
        print_table(new)
        rows += new
    if args.json:
        Path(args.json).write_text(json.dumps({"hardware": info, "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
