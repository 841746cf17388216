"""Score a class-conditional run's history: every periodic snapshot, judged by the synthetic classifier.

    python scripts/score_class_run.py -r logs/<run> --classifier logs/demo_classifier
    python scripts/score_class_run.py -r logs/<run> --classifier logs/demo_classifier --scales 1 3 8 -n 256
    python scripts/score_class_run.py -r logs/<run> --classifier logs/demo_classifier --out logs/<run>/eval/ag2 \
        --guide-model logs/<run>/checkpoints/trainstep_checkpoints/<first>.ckpt --guide-weight 2

For each snapshot in <run>/checkpoints/trainstep_checkpoints/ (main.py writes one every
`lightning.callbacks.step_checkpoint.params.every_n_train_steps` steps) and a later last.ckpt,
and each guidance scale: guided class samples (class i mod 8, noise seeded per sample), how often
the classifier recognises their class (also relative to real validation images) and the FID-like
score of its features (not Inception FID; ldm.eval.synthetic_scores.class_sample_scores).
With --guide-model the samples are autoguided by that weaker model (Karras et al. 2024; sample_diffusion.py's
flags); when it is one of the run's snapshots, only the later checkpoints are scored. Checkpoints and
guide load their EMA weights where they have them; --no-ema samples the trained weights instead.

Writes <out>/scores.json (default <run>/eval/class_scores/) after every checkpoint: a rerun with
the same settings skips what is already scored, so a long scoring job can be stopped and resumed.
Then the plots <out>/accuracy_vs_steps.png and <out>/fid_like_vs_steps.png and a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCORES_VERSION = 1


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a score depends on besides the checkpoint and the scale: a change starts a new file."""
    from ldm.eval.guided_scoring import guide_settings

    return {"version": SCORES_VERSION, "classifier": str(Path(args.classifier).resolve()), "n_samples": args.n,
            "sampler": args.sampler, "steps": args.steps, "seed": args.seed, "n_real": args.n_real,
            **({"eta": args.eta} if args.eta else {}),  # absent at 0: files scored before --eta stay valid
            **({"precision": args.precision} if args.precision != "fp32" else {}),  # the same for --precision
            **guide_settings(args)}


def markdown(points: list[dict[str, Any]]) -> str:
    rows = ["| step | scale | accuracy | relative to real images | FID-like |", "|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["scale"], p["step"])):
        rows.append(f"| {p['step']} | {p['scale']:g} | {100 * p['accuracy']:.1f} % | "
                    f"{100 * p['relative_accuracy']:.1f} % | {p['fid_like']:.2f} |")
    return "\n".join(rows)


def write_plots(out: Path, points: list[dict[str, Any]], real_accuracy: Optional[float]) -> list[Path]:
    from ldm.eval.plots import line_plot

    by_step = sorted(points, key=lambda p: p["step"])
    scales = sorted({p["scale"] for p in points})
    series = {key: {f"scale {s:g}": ([p["step"] for p in by_step if p["scale"] == s],
                                      [unit * p[key] for p in by_step if p["scale"] == s])
                    for s in scales} for key, unit in (("accuracy", 100), ("fid_like", 1))}
    hline = None if real_accuracy is None else (100 * real_accuracy, "real validation images")
    return [line_plot(out / "accuracy_vs_steps.png", series["accuracy"], title="Guided class samples recognised",
                      xlabel="training step", ylabel="accuracy (%)", hline=hline),
            line_plot(out / "fid_like_vs_steps.png", series["fid_like"], title="FID-like score (classifier features)",
                      xlabel="training step", ylabel="FID-like (lower is better)")]


def parser() -> argparse.ArgumentParser:
    from ldm.eval.guided_scoring import add_guide_flags
    from ldm.inference.runtime import PRECISIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--run", required=True, help="run directory of a class-conditional model")
    p.add_argument("--classifier", required=True, help="folder of scripts/train_classifier.py's classifier")
    p.add_argument("--scales", type=float, nargs="+", default=[3.0], help="guidance scales (default 3)")
    p.add_argument("-n", type=int, default=128, help="class samples per checkpoint and scale (default 128)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "plms", "dpm", "unipc", "ddpm"])
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity, ddim only: 0 deterministic (default), "
                                                          "1 ancestral")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the networks' autocast while sampling (default fp32; bf16 for a model trained in bf16-mixed, "
                        "as scripts/demo.py samples it)")
    p.add_argument("--n-real", type=int, default=500, help="real validation images for the reference (default 500)")
    p.add_argument("--out", default=None, help="output folder (default <run>/eval/class_scores)")
    add_guide_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    run = Path(args.run)
    if not (run / "configs").is_dir():
        raise SystemExit(f"--run {run}: not a run directory (no configs/ folder)")
    from ldm.eval.classifier import usable_classifier
    from ldm.eval.guided_scoring import check_guide, checkpoints_after_guide, load_guide
    from ldm.eval.reproduction import load_points, save_points, step_checkpoints

    ckpts = step_checkpoints(run)
    if not ckpts:
        raise SystemExit(f"--run {run}: no checkpoints in {run / 'checkpoints'}")
    if args.n < 2:
        raise SystemExit(f"-n {args.n}: the FID-like score needs at least 2 samples")
    if not 0.0 <= args.eta <= 1.0:
        raise SystemExit(f"--eta {args.eta:g}: must lie in [0, 1]")
    if args.eta and args.sampler != "ddim":
        raise SystemExit(f"--eta {args.eta:g} is DDIM's stochasticity; --sampler {args.sampler} has none")
    ckpts = checkpoints_after_guide(ckpts, args)
    out = Path(args.out) if args.out else run / "eval" / "class_scores"
    wanted = settings(args)
    path = out / "scores.json"
    try:
        points = load_points(path, wanted)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc

    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import load_run
    from ldm.inference.checks import downsampling_factor

    guide = load_guide(args)

    checked_size = None  # the classifier is checked once per image size, not per checkpoint
    for step, ckpt in ckpts:
        todo = [s for s in args.scales if not any(p["step"] == step and p["scale"] == s for p in points)]
        if not todo:
            continue
        model = load_run(ckpt, prefer_ema=args.prefer_ema)
        size = int(model.image_size) * downsampling_factor(model)
        if size != checked_size and not usable_classifier(args.classifier, size=size):
            raise SystemExit(f"--classifier {args.classifier}: not a classifier of the synthetic data at {size} px "
                             "(train one with scripts/train_classifier.py)")
        checked_size = size
        check_guide(guide, model, args)
        for scale in todo:
            s = class_sample_scores(model, args.classifier, args.n, sampler=args.sampler, steps=args.steps,
                                    scale=scale, seed=args.seed, n_real=args.n_real, size=size, progress=False,
                                    guide=guide, eta=args.eta, precision=args.precision)
            points.append({"step": step, "scale": scale, "checkpoint": ckpt.name, "accuracy": s.accuracy,
                           "relative_accuracy": s.relative_accuracy, "fid_like": s.fid_like,
                           "real_accuracy": s.real_accuracy})
            print(f"step {step}, scale {scale:g}: accuracy {100 * s.accuracy:.1f} % "
                  f"({100 * s.relative_accuracy:.1f} % relative), FID-like {s.fid_like:.2f}", flush=True)
            save_points(path, wanted, points)
        del model
    plots = write_plots(out, points, points[-1]["real_accuracy"] if points else None)
    print("\n" + markdown(points))
    print(f"\nScores: {path}\nPlots: {', '.join(str(p) for p in plots)}")
    return points


if __name__ == "__main__":
    main()
