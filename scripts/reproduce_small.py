"""The paper's findings at small scale on the built-in synthetic shapes (32 px), on CPU.

    python scripts/reproduce_small.py                                  # everything, default budget
    python scripts/reproduce_small.py --experiments guidance --budget smoke
    python scripts/reproduce_small.py --budget long --experiments fsweep klvq \
        --out docs/reproduction_long --doc docs/reproduction_long.md  # the sweep trained twice as long
    python scripts/reproduce_small.py --budget full --reuse            # continue after a crash

Experiments (paper sections in brackets):

* fsweep [Sec. 4.1, Figs. 5-6]: KL autoencoders for f in {2, 4, 8, 16} (latent channels from
  ldm.eval.reproduction.LATENT_CHANNELS) and pixel space for f = 1, a class-conditional LDM on
  each with UNet widths matched for equal parameter counts; every step checkpoint is scored
  (class accuracy of guided samples under the synthetic classifier, FID-like score of its
  features) against training steps and training wall time.
* sampling [Sec. 4.1 / DDIM]: the f = 4 model with DDIM at several step counts, and the smallest
  DPM-Solver++ and UniPC step counts that match DDIM-200.
* guidance [Tab. 3]: classifier-free guidance scales against accuracy and FID-like score.
* klvq [Sec. 3.1, Tab. 8]: KL against VQ first stages at f = 4: reconstruction PSNR/SSIM and the
  generation quality of a class LDM on each.

Training runs are `main.py` commands (printed and recorded); a finished run leaves
<logdir>/<name>.done and --reuse skips it. Evaluations are cached in <logdir>/eval_cache.json
(--reuse keeps them). Results go to <out>/results.json, plots to <out>/*.png, and
docs/reproduction.md is rewritten, keeping its hand-written analysis block.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from ldm.eval import reproduction as rp  # noqa: E402
from ldm.eval.reproduction_report import render, write_plots  # noqa: E402

EXPERIMENTS = ("fsweep", "sampling", "guidance", "klvq")
AE_BASE = "configs/demo/autoencoder_kl.yaml"
LDM_BASE = "configs/demo/ldm_class.yaml"
REFERENCE_F = 4            # the model the other widths are matched to, and the sampling/guidance/klvq model
REFERENCE_WIDTH = 64       # configs/demo/ldm_class.yaml's model_channels
SEED = 0
ACC_TOL = 0.05             # sampler matching: accuracy at most 5 points below DDIM-200's
FID_TOL = 0.10             # ... and FID-like at most 10 % above it
DOC = ROOT / "docs" / "reproduction.md"
ALL_DDIM_STEPS = (5, 10, 20, 50, 100, 200)
ALL_FAST_STEPS = (5, 10, 15, 20, 25)
ALL_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0)


@dataclass(frozen=True)
class Budget:
    name: str
    ae_batches: int          # autoencoder batches (max_steps is twice this: two optimizers)
    ldm_steps: int           # diffusion model training steps, at most
    ldm_minutes: Optional[float]  # and at most this wall time per diffusion model (equal compute across f)
    ckpt_every: int          # step checkpoints of the diffusion models, each scored
    n_samples: int           # samples per score
    n_real: int              # real validation images (classifier statistics, reconstruction scores)
    eval_steps: int          # DDIM steps of the f-sweep, guidance and KL/VQ scores
    ddim_steps: tuple[int, ...]
    fast_steps: tuple[int, ...]  # DPM-Solver++ and UniPC
    scales: tuple[float, ...]
    classifier_args: tuple[str, ...]  # scripts/train_classifier.py settings


BUDGETS = {
    # For tests: a few steps; the numbers mean nothing.
    "smoke": Budget("smoke", ae_batches=4, ldm_steps=4, ldm_minutes=None, ckpt_every=2, n_samples=16, n_real=32, eval_steps=5,
                    ddim_steps=(5, 10), fast_steps=(5,), scales=(1.0, 3.0),
                    classifier_args=("--steps", "30", "--train-images", "512", "--val-images", "100")),
    # About 1.5 hours on 2 CPU cores: autoencoders ~4-5 min per 1300 batches; each diffusion model
    # trains for at most 6 minutes of wall time (f = 1 and 2 reach fewer steps: equal compute).
    "default": Budget("default", ae_batches=1300, ldm_steps=1200, ldm_minutes=6.0, ckpt_every=150, n_samples=128, n_real=500,
                      eval_steps=20, ddim_steps=ALL_DDIM_STEPS, fast_steps=ALL_FAST_STEPS, scales=ALL_SCALES,
                      classifier_args=()),
    # About 1h45 on 2 CPU cores for the f-sweep alone: twice the autoencoder batches, 12 minutes
    # per diffusion model (pixel space reaches about 700 steps, f = 16 about 6000).
    "long": Budget("long", ae_batches=2600, ldm_steps=8000, ldm_minutes=12.0, ckpt_every=1000, n_samples=128,
                   n_real=500, eval_steps=20, ddim_steps=ALL_DDIM_STEPS, fast_steps=ALL_FAST_STEPS, scales=ALL_SCALES,
                   classifier_args=()),
    # Many hours.
    "full": Budget("full", ae_batches=4000, ldm_steps=6000, ldm_minutes=45.0, ckpt_every=500, n_samples=512, n_real=1000,
                   eval_steps=50, ddim_steps=ALL_DDIM_STEPS, fast_steps=ALL_FAST_STEPS, scales=ALL_SCALES,
                   classifier_args=()),
}


class Runner:
    """Trains (or reuses) runs, scores checkpoints with a cache, and records every command."""

    def __init__(self, logdir: Path, budget: Budget, reuse: bool):
        self.logdir = logdir
        self.budget = budget
        self.reuse = reuse
        self.commands: list[str] = []
        self.cache_path = logdir / "eval_cache.json"
        self.cache: dict[str, Any] = {}
        if reuse and self.cache_path.is_file():
            self.cache = json.loads(self.cache_path.read_text())
        self._classifier: Optional[Path] = None
        self._trained: dict[str, Path] = {}  # runs trained or reused by this invocation
        self._widths: dict[int, tuple[int, int]] = {}
        self._reference_params: Optional[int] = None

    # ---- commands and runs ----
    def run(self, cmd: list[str], what: str) -> None:
        """Print, record and run one command from the repository root (as scripts/demo.py does)."""
        print(f"\n==> {what}: {shlex.join(cmd)}", flush=True)
        self.commands.append(shlex.join(_relative(cmd)))
        subprocess.run(cmd, cwd=ROOT, check=True)

    def train(self, name: str, config: DictConfig, overrides: Sequence[str]) -> Path:
        """Train ``config`` with main.py as run ``name``; with --reuse, a finished run is kept."""
        if name in self._trained:  # several experiments share a run (the f=4 model): train it once
            return self._trained[name]
        cfg_path = self.logdir / "configs" / f"{name}.yaml"
        marker = self.logdir / f"{name}.done"
        cmd = [sys.executable, "main.py", "--base", str(cfg_path), "-t", "--accelerator", "cpu", "--logger", "csv",
               "-n", name, "-l", str(self.logdir), *overrides]
        if self.reuse and marker.is_file():
            info = json.loads(marker.read_text())
            if Path(info["run_dir"]).is_dir():
                print(f"\n==> {name}: reusing {info['run_dir']}", flush=True)
                self.commands.append(shlex.join(_relative(cmd)))
                self._trained[name] = Path(info["run_dir"])
                return self._trained[name]
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, cfg_path)
        start = time.time()
        self.run(cmd, name)
        runs = sorted(self.logdir.glob(f"*_{name}"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise SystemExit(f"reproduce_small: {name} finished but left no run directory {self.logdir}/*_{name}")
        marker.write_text(json.dumps({"run_dir": str(runs[-1]), "start": start, "end": time.time()}))
        self._trained[name] = runs[-1]
        return runs[-1]

    def started(self, name: str) -> float:
        return float(json.loads((self.logdir / f"{name}.done").read_text())["start"])

    # ---- first stages and diffusion models ----
    def autoencoder(self, f: int, kind: str = "kl") -> tuple[Path, DictConfig]:
        base = OmegaConf.load(ROOT / AE_BASE)
        b = self.budget.ae_batches
        cfg = rp.autoencoder_config(base, f, b) if kind == "kl" else rp.vq_autoencoder_config(base, f=f, batches=b)
        name = f"ae_f{f}" if kind == "kl" else f"ae_vq_f{f}"
        run_dir = self.train(name, cfg, [f"lightning.trainer.max_steps={2 * b}",  # two optimizers: 2 per batch
                                         f"lightning.trainer.val_check_interval={min(b, 650)}",
                                         f"lightning.callbacks.image_logger.params.batch_frequency={min(b, 650)}"])
        return run_dir, cfg

    def width(self, f: int, first_stage: Optional[DictConfig]) -> tuple[int, int]:
        """UNet width for factor f with about the f=4 model's parameter count, and that count."""
        base = OmegaConf.load(ROOT / LDM_BASE)
        if self._reference_params is None:
            ref_ae = rp.autoencoder_config(OmegaConf.load(ROOT / AE_BASE), REFERENCE_F)
            self._reference_params = rp.unet_params(
                rp.ldm_config(base, REFERENCE_F, REFERENCE_WIDTH, ref_ae).model.params.unet_config)
        if f not in self._widths:
            self._widths[f] = rp.closest_width(
                lambda w: rp.unet_params(rp.ldm_config(base, f, w, first_stage).model.params.unet_config),
                self._reference_params)
        return self._widths[f]

    def ldm(self, f: int, kind: str = "kl") -> dict[str, Any]:
        """Train the class LDM on the factor-f first stage; returns its run and UNet size."""
        ae_dir, ae_cfg = (None, None) if f == 1 else self.autoencoder(f, kind)
        width, n_params = self.width(f, ae_cfg)
        ckpt = str(ae_dir / "checkpoints" / "last.ckpt") if ae_dir else None
        cfg = rp.ldm_config(OmegaConf.load(ROOT / LDM_BASE), f, width, ae_cfg, ckpt)
        name = f"ldm_f{f}" if kind == "kl" else f"ldm_vq_f{f}"
        b = self.budget
        limit = [] if b.ldm_minutes is None else [f"lightning.trainer.max_time={_dhms(b.ldm_minutes)}"]
        run_dir = self.train(name, cfg, [*limit, f"lightning.trainer.max_steps={b.ldm_steps}",
                                         f"lightning.trainer.val_check_interval={b.ldm_steps}",
                                         f"lightning.callbacks.step_checkpoint.params.every_n_train_steps={b.ckpt_every}",
                                         "lightning.callbacks.image_logger=null"])
        return {"name": name, "run_dir": run_dir, "ae_dir": ae_dir, "width": width, "unet_params": n_params,
                "batch_size": int(cfg.data.params.batch_size), "start": self.started(name)}

    # ---- scoring ----
    def classifier(self) -> Path:
        if self._classifier is None:
            from ldm.eval.classifier import usable_classifier

            folder = self.logdir / f"classifier_{self.budget.name}"
            cmd = [sys.executable, "scripts/train_classifier.py", "--out", str(folder), "--no-progress",
                   *self.budget.classifier_args]
            if usable_classifier(folder, size=rp.IMAGE_SIZE):
                print(f"\n==> classifier: reusing {folder}", flush=True)
                self.commands.append(shlex.join(_relative(cmd)))
            else:
                self.run(cmd, "classifier")
            self._classifier = folder
        return self._classifier

    def score(self, run_dir: Path, ckpt: Path, sampler: str, steps: int, scale: float) -> dict[str, float]:
        """Class accuracy and FID-like score of ``ckpt``'s samples (cached by checkpoint and settings)."""
        b = self.budget
        st = ckpt.stat()
        key = f"{ckpt}|{st.st_mtime_ns}|{sampler}|{steps}|{scale:g}|{b.n_samples}|{b.n_real}|{SEED}"
        if key not in self.cache:
            from ldm.eval.synthetic_scores import class_sample_scores
            from ldm.inference.loading import find_run, load_model

            print(f"\n==> score {ckpt.relative_to(self.logdir)}: {sampler} {steps} steps, scale {scale:g}, "
                  f"{b.n_samples} samples", flush=True)
            model = load_model(find_run(run_dir).configs, ckpt, device="cpu")
            s = class_sample_scores(model, self.classifier(), b.n_samples, sampler=sampler, steps=steps, scale=scale,
                                    seed=SEED, n_real=b.n_real, progress=False)
            self.cache[key] = {"accuracy": s.accuracy, "fid_like": s.fid_like, "real_accuracy": s.real_accuracy}
            self.cache_path.write_text(json.dumps(self.cache, indent=1))
        return dict(self.cache[key])

    def reconstruction(self, ae_dir: Path) -> dict[str, float]:
        from ldm.eval.synthetic_scores import reconstruction_scores
        from ldm.inference import load_run

        r = reconstruction_scores(load_run(ae_dir, device="cpu"), self.budget.n_real,
                                  classifier_folder=self.classifier())
        return {"psnr": r.psnr, "psnr_std": r.psnr_std, "ssim": r.ssim, "ssim_std": r.ssim_std, "n": r.n,
                "accuracy": r.accuracy, "real_accuracy": r.real_accuracy}


def _dhms(minutes: float) -> str:
    """Lightning's max_time string DD:HH:MM:SS."""
    total = round(minutes * 60)
    return f"{total // 86400:02d}:{total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


def _relative(cmd: Sequence[str]) -> list[str]:
    """Paths under the repository as relative ones and the interpreter as `python`, so the recorded
    commands are what a user types in the repository root."""
    out = []
    for i, a in enumerate(cmd):
        if i == 0 and a == sys.executable:
            out.append("python")
            continue
        out.append(a.replace(str(ROOT) + os.sep, ""))
    return out


def training_curve(r: Runner, m: dict[str, Any]) -> dict[str, Any]:
    """Score every step checkpoint; wall time of a checkpoint = its file time minus the time the
    training command was started (includes start-up); throughput = training samples per second
    between the first and the last checkpoint (excludes start-up)."""
    ckpts = rp.step_checkpoints(m["run_dir"], r.budget.ldm_steps)
    points = []
    for step, path in ckpts:
        s = r.score(m["run_dir"], path, "ddim", r.budget.eval_steps, rp.EVAL_SCALE)
        points.append({"step": step, "wall_s": path.stat().st_mtime - m["start"], **s})
    if len(points) >= 2 and points[-1]["wall_s"] > points[0]["wall_s"]:
        rate = (points[-1]["step"] - points[0]["step"]) * m["batch_size"] / (points[-1]["wall_s"] - points[0]["wall_s"])
        how = "between the first and last step checkpoints"
    else:
        rate = points[-1]["step"] * m["batch_size"] / max(points[-1]["wall_s"], 1e-9) if points else float("nan")
        how = "from the start of the command (includes start-up)"
    return {"points": points, "samples_per_s": rate, "throughput_measured": how}


# ---- experiments ------------------------------------------------------------------------------

def exp_fsweep(r: Runner) -> dict[str, Any]:
    out: dict[str, Any] = {"f": {}}
    for f in rp.F_VALUES:
        m = r.ldm(f)
        entry = {"width": m["width"], "unet_params": m["unet_params"], "latent_channels": rp.LATENT_CHANNELS[f],
                 "latent_size": rp.IMAGE_SIZE // f, "run_dir": str(m["run_dir"]), **training_curve(r, m)}
        if m["ae_dir"] is not None:
            entry["reconstruction"] = r.reconstruction(m["ae_dir"])
        out["f"][str(f)] = entry
    out["verdict"] = rp.fsweep_verdict({int(f): e["points"] for f, e in out["f"].items()}, r.budget.n_samples)
    return out


def exp_sampling(r: Runner) -> dict[str, Any]:
    m = r.ldm(REFERENCE_F)
    last = rp.step_checkpoints(m["run_dir"], r.budget.ldm_steps)[-1][1]
    out: dict[str, Any] = {"checkpoint": str(last), "scale": rp.EVAL_SCALE, "acc_tol": ACC_TOL, "fid_tol": FID_TOL,
                           "runs": {}}
    for sampler, steps in (("ddim", r.budget.ddim_steps), ("dpm", r.budget.fast_steps), ("unipc", r.budget.fast_steps)):
        out["runs"][sampler] = {str(s): r.score(m["run_dir"], last, sampler, s, rp.EVAL_SCALE) for s in steps}
    ref_steps = str(max(r.budget.ddim_steps))
    out["reference"] = f"ddim-{ref_steps}"
    fast = {k: {int(s): v for s, v in out["runs"][k].items()} for k in ("dpm", "unipc")}
    out["matching"] = rp.samplers_matching(out["runs"]["ddim"][ref_steps], fast, ACC_TOL, FID_TOL)
    return out


def exp_guidance(r: Runner) -> dict[str, Any]:
    m = r.ldm(REFERENCE_F)
    last = rp.step_checkpoints(m["run_dir"], r.budget.ldm_steps)[-1][1]
    by_scale = {f"{s:g}": r.score(m["run_dir"], last, "ddim", r.budget.eval_steps, s) for s in r.budget.scales}
    return {"checkpoint": str(last), "steps": r.budget.eval_steps, "scales": by_scale,
            "verdict": rp.guidance_verdict({float(k): v for k, v in by_scale.items()})}


def exp_klvq(r: Runner) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("kl", "vq"):
        m = r.ldm(REFERENCE_F, kind)
        last = rp.step_checkpoints(m["run_dir"], r.budget.ldm_steps)[-1][1]
        out[kind] = {"reconstruction": r.reconstruction(m["ae_dir"]), "unet_params": m["unet_params"],
                     "generation": r.score(m["run_dir"], last, "ddim", r.budget.eval_steps, rp.EVAL_SCALE)}
    return out


RUNNERS = {"fsweep": exp_fsweep, "sampling": exp_sampling, "guidance": exp_guidance, "klvq": exp_klvq}


# ---- main ----------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS, metavar="EXP",
                   help=f"which experiments ({', '.join(EXPERIMENTS)}; default: all)")
    p.add_argument("--budget", default="default", choices=sorted(BUDGETS),
                   help="smoke: a few steps (tests); default: about 1-1.5 h on 2 CPU cores; long: the f-sweep in "
                        "about 2 h; full: many hours")
    p.add_argument("--out", default="docs/reproduction", help="results.json and plots")
    p.add_argument("--logdir", default="logs/reproduction", help="training runs, configs, evaluation cache")
    p.add_argument("--doc", default=str(DOC.relative_to(ROOT)), help="the markdown document to (re)write")
    p.add_argument("--reuse", action="store_true", help="skip finished training runs and cached scores")
    return p


def regenerate_command(args: argparse.Namespace, experiments: Sequence[str]) -> str:
    """The command that rewrites this document: the budget, and the experiments, results folder and
    document when they are not the defaults (--logdir and --reuse do not change the results)."""
    defaults = parser().parse_args([])
    cmd = ["python", "scripts/reproduce_small.py", "--budget", args.budget]
    if list(experiments) != list(EXPERIMENTS):
        cmd += ["--experiments", *experiments]
    for flag, value, default in (("--out", args.out, defaults.out), ("--doc", args.doc, defaults.doc)):
        if (ROOT / value).resolve() != (ROOT / default).resolve():  # both relative to the repository
            cmd += [flag, _relative([str((ROOT / value).resolve())])[0]]
    return shlex.join(cmd)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    budget = BUDGETS[args.budget]
    out = (ROOT / args.out).resolve()
    logdir = (ROOT / args.logdir).resolve() / budget.name
    logdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(logdir, budget, args.reuse)
    experiments = [e for e in EXPERIMENTS if e in args.experiments]
    # Experiments not run now keep their previous results (same budget only), so one crash loses nothing.
    previous = rp.load_results(out / "results.json")
    results: dict[str, Any] = {}
    if previous.get("meta", {}).get("budget", {}).get("name") == budget.name:
        results = {k: v for k, v in previous.items() if k in EXPERIMENTS}
    meta = {"budget": budget.__dict__, "date": dt.date.today().isoformat(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "experiments": []}
    results["meta"] = meta
    for name in experiments:
        results[name] = RUNNERS[name](runner)
        results[name] = json.loads(json.dumps(results[name], default=str))  # paths as strings
        results["commands"] = list(dict.fromkeys(runner.commands))
        meta["experiments"] = [e for e in EXPERIMENTS if e in results]
        meta["command"] = regenerate_command(args, meta["experiments"])
        rp.save_results(out / "results.json", results)
    write_plots(results, out)
    doc = (ROOT / args.doc).resolve()
    plot_dir = os.path.relpath(out, doc.parent)
    rp.write_markdown(doc, lambda analysis: render(results, plot_dir, analysis))
    print(f"\nResults: {out / 'results.json'}\nDocument: {doc}")
    return results


if __name__ == "__main__":
    main()
