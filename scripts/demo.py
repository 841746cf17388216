"""Train the demo models on the built-in synthetic data, offline, on CPU.

Runs the same `main.py` commands a user would type (they are printed), one stage after another:
the first-stage autoencoder, then latent diffusion models on top of its frozen latents. Each
stage's run directory holds its configs, checkpoints and image grids.

    python scripts/demo.py                 # all stages
    python scripts/demo.py --stages autoencoder
    python scripts/demo.py --fast          # a short smoke run (also LDM_DEMO_FAST=1)
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (stage name, config, needs the autoencoder checkpoint)
STAGES = [
    ("autoencoder", "configs/demo/autoencoder_kl.yaml", False),
    ("ldm_uncond", "configs/demo/ldm_uncond.yaml", True),
    ("ldm_class", "configs/demo/ldm_class.yaml", True),
    ("ldm_text", "configs/demo/ldm_text.yaml", True),
]


def latest_run(logdir: Path, name: str) -> Path:
    runs = sorted(logdir.glob(f"*_{name}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"demo: no run directory matching {logdir}/*_{name}")
    return runs[-1]


def run_stage(name: str, config: str, ae_ckpt: Path | None, logdir: Path, fast: bool) -> Path:
    cmd = [sys.executable, "main.py", "--base", config, "-t", "--accelerator", "cpu", "--logger", "csv",
           "-n", f"demo_{name}", "-l", str(logdir)]
    if ae_ckpt is not None:
        cmd.append(f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}")
    if fast:
        cmd += ["lightning.trainer.max_steps=40", "lightning.trainer.val_check_interval=20",
                "lightning.callbacks.image_logger.params.batch_frequency=20"]
    print(f"\n==> {name}: {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    run = latest_run(logdir, f"demo_{name}")
    print(f"==> {name} finished in {time.time() - start:.0f} s; run directory {run}", flush=True)
    return run


def sample_commands(runs: dict[str, Path], outdir: Path) -> list[list[str]]:
    """Sampling-script calls on the trained demo models (those whose stage ran)."""
    py = sys.executable
    cmds = []
    if "ldm_uncond" in runs:
        cmds.append([py, "scripts/sample_diffusion.py", "-r", str(runs["ldm_uncond"]), "-n", "16", "-c", "50",
                     "-l", str(outdir / "uncond")])
    if "ldm_class" in runs:
        cmds.append([py, "scripts/sample_diffusion.py", "-r", str(runs["ldm_class"]), "-n", "16",
                     "--classes", *map(str, range(8)), "--scale", "3.0", "-c", "50", "-l", str(outdir / "class")])
    if "ldm_text" in runs:
        cmds.append([py, "scripts/txt2img.py", "-r", str(runs["ldm_text"]), "--prompt",
                     "a red circle and a blue square", "--sampler", "unipc", "--steps", "20", "--scale", "3.0",
                     "--n_samples", "8", "--outdir", str(outdir / "text")])
    return cmds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="*", default=[s[0] for s in STAGES], choices=[s[0] for s in STAGES])
    p.add_argument("--fast", action="store_true", default=bool(os.environ.get("LDM_DEMO_FAST")))
    p.add_argument("-l", "--logdir", default="logs", help="where run directories go")
    args = p.parse_args()
    logdir = (ROOT / args.logdir).resolve()
    ae_ckpt = None
    runs: dict[str, Path] = {}
    for name, config, needs_ae in STAGES:
        if name not in args.stages:
            continue
        if needs_ae and ae_ckpt is None:
            ae_ckpt = latest_run(logdir, "demo_autoencoder") / "checkpoints" / "last.ckpt"
        run = run_stage(name, config, ae_ckpt if needs_ae else None, logdir, args.fast)
        runs[name] = run
        if name == "autoencoder":
            ae_ckpt = run / "checkpoints" / "last.ckpt"
        grids = sorted((run / "images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
        for g in grids[-3:]:
            print(f"    {g.relative_to(ROOT) if g.is_relative_to(ROOT) else g}")
    for cmd in sample_commands(runs, logdir / "demo_samples"):
        print(f"\n==> sampling: {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"\nDemo done. Training grids are under each run's images/ folder; samples under {logdir / 'demo_samples'}.")


if __name__ == "__main__":
    main()
