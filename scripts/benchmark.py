"""Side-by-side speed of our UNet and diffusers' UNet2DConditionModel with identical weights.

Both run in one process, alternating, on the same inputs (after checking that their outputs
agree), so machine drift affects both equally. Report medians. Also times the training step
(forward + backward) of our UNet.

    python scripts/benchmark.py                          # SD-v1 layout, reduced width, CPU
    python scripts/benchmark.py --preset sd-v1 --device cuda --dtype fp16 --batch 4 --size 64

Needs diffusers (the `test` extra).
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

PRESETS = {
    # SD v1 (configs/.../v1-inference.yaml) UNet: 860 M parameters.
    "sd-v1": dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                  num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                  transformer_depth=1, context_dim=768, legacy=False),
    # The same layout at a quarter of the width: a CPU-sized stand-in.
    "sd-v1-small": dict(image_size=32, in_channels=4, out_channels=4, model_channels=64,
                        attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8,
                        use_spatial_transformer=True, transformer_depth=1, context_dim=256, legacy=False),
}


def build(preset: str, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    params = PRESETS[preset]
    torch.manual_seed(0)
    ours = UNetModel(**params).eval()
    original = {"model": {"params": {"unet_config": {"params": copy.deepcopy(params)},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    ckpt = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(original, ckpt)
    theirs = UNet2DConditionModel(**config).eval()
    theirs.load_state_dict(convert_ldm_unet_checkpoint(ckpt, config), strict=True)
    return ours.to(device, dtype), theirs.to(device, dtype), params


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="sd-v1-small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="latent height and width")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    ours, theirs, params = build(args.preset, device, dtype)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, params["in_channels"], args.size, args.size, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    ctx = torch.randn(args.batch, 77, params["context_dim"], generator=g).to(device, dtype)
    with torch.no_grad():
        a, b = ours(x, t, context=ctx), theirs(x, t, encoder_hidden_states=ctx).sample
    err = (a.float() - b.float()).abs().max().item()

    def ours_fwd():
        with torch.no_grad():
            ours(x, t, context=ctx)

    def theirs_fwd():
        with torch.no_grad():
            theirs(x, t, encoder_hidden_states=ctx)

    def ours_train():
        ours(x, t, context=ctx).float().square().mean().backward()

    for fn in (ours_fwd, theirs_fwd):  # warm-up (kernel selection, allocator)
        timed(fn, device, 2)
    ours_times, theirs_times = [], []
    for _ in range(args.repeats):  # alternate so drift hits both
        ours_times += timed(ours_fwd, device, 1)
        theirs_times += timed(theirs_fwd, device, 1)
    train_times = timed(ours_train, device, max(3, args.repeats // 2))

    n_params = sum(q.numel() for q in ours.parameters()) / 1e6
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, {args.dtype}")
    print(f"preset {args.preset} ({n_params:.1f} M params), batch {args.batch}, latent {args.size}x{args.size}, "
          f"context 77x{params['context_dim']}; max |ours - diffusers| = {err:.2e}")
    print("| what | median ms | min ms | max ms |")
    print("|---|---|---|---|")
    for name, ts in (("ours, forward", ours_times), ("diffusers, forward", theirs_times),
                     ("ours, forward+backward", train_times)):
        ms = [1000 * v for v in ts]
        print(f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")
    ratio = statistics.median(ours_times) / statistics.median(theirs_times)
    print(f"ours / diffusers forward (medians): {ratio:.3f}")


if __name__ == "__main__":
    main()
