"""Sampling cost against quality on one class-conditional checkpoint (paper Sec. 4.1, DDIM steps).

    python scripts/score_samplers.py -r logs/<run> --classifier logs/demo_classifier
    python scripts/score_samplers.py -r logs/<run> --classifier logs/demo_classifier \\
        --grid ddim:5,10,20,50,100,200 dpm:5,10,20 unipc:5,10,20 -n 256 --n-real 1000

Scores the run's last checkpoint (or --ckpt) with every sampler and step count of --grid: guided
class samples at one scale (class i mod 8, noise seeded per sample), how often the synthetic
classifier recognises their class and the FID-like score of its features (not Inception FID;
ldm.eval.synthetic_scores.class_sample_scores). Then, for every sampler but the reference's, the
fewest steps that match the reference (default: DDIM with the most steps of the grid): accuracy
at most --acc-tol below it and FID-like at most --fid-tol above it, as scripts/reproduce_small.py
decides it.

Writes <out>/scores.json (default <run>/eval/samplers/) after every setting: a rerun with the same
settings skips what is already scored. Then <out>/fid_like_vs_sampler_steps.png,
<out>/accuracy_vs_sampler_steps.png and a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCORES_VERSION = 1
SAMPLERS = ("ddim", "plms", "dpm", "unipc", "ddpm")


def parse_grid(specs: Sequence[str]) -> list[tuple[str, int]]:
    """``["ddim:5,10", "dpm:5"]`` -> [("ddim", 5), ("ddim", 10), ("dpm", 5)], in the given order."""
    grid: list[tuple[str, int]] = []
    for spec in specs:
        sampler, sep, steps = spec.partition(":")
        if not sep or sampler not in SAMPLERS:
            raise SystemExit(f"--grid {spec!r}: expected SAMPLER:STEPS[,STEPS...] with SAMPLER one of "
                             f"{', '.join(SAMPLERS)}")
        for s in steps.split(","):
            if not s.strip().isdigit() or int(s) < 1:
                raise SystemExit(f"--grid {spec!r}: step counts must be whole numbers >= 1, got {s!r}")
            if (sampler, int(s)) not in grid:
                grid.append((sampler, int(s)))
    return grid


def reference_of(grid: list[tuple[str, int]], spec: Optional[str]) -> tuple[str, int]:
    """The setting the others are matched against: ``spec`` (SAMPLER:STEPS, in the grid) or DDIM's
    largest step count."""
    if spec is None:
        ddim = [s for name, s in grid if name == "ddim"]
        if not ddim:
            raise SystemExit("--grid has no ddim setting: pass --reference SAMPLER:STEPS")
        return "ddim", max(ddim)
    refs = parse_grid([spec])
    if len(refs) != 1:
        raise SystemExit(f"--reference {spec}: one SAMPLER:STEPS setting")
    ref = refs[0]
    if ref not in grid:
        raise SystemExit(f"--reference {spec}: not one of the --grid settings")
    return ref


def matching(points: list[dict[str, Any]], ref: tuple[str, int], acc_tol: float, fid_tol: float
             ) -> dict[str, Optional[int]]:
    """Per sampler other than the reference's: its fewest steps that match the reference."""
    from ldm.eval.reproduction import samplers_matching

    by = {(p["sampler"], p["steps"]): p for p in points}
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for (sampler, steps), p in by.items():
        if sampler != ref[0]:
            runs.setdefault(sampler, {})[steps] = p
    return samplers_matching(by[ref], runs, acc_tol, fid_tol)


def markdown(points: list[dict[str, Any]], ref: tuple[str, int], matches: dict[str, Optional[int]]) -> str:
    rows = ["| sampler | steps | accuracy | relative to real images | FID-like |", "|---|---|---|---|---|"]
    for p in points:
        mark = " (reference)" if (p["sampler"], p["steps"]) == ref else ""
        rows.append(f"| {p['sampler']}{mark} | {p['steps']} | {100 * p['accuracy']:.1f} % | "
                    f"{100 * p['relative_accuracy']:.1f} % | {p['fid_like']:.2f} |")
    verdicts = [f"- {s} matches {ref[0]}-{ref[1]} from {n} steps" if n is not None
                else f"- {s} matches {ref[0]}-{ref[1]} at none of its step counts" for s, n in matches.items()]
    return "\n".join(rows + [""] + verdicts)


def write_plots(out: Path, points: list[dict[str, Any]], real_accuracy: float) -> list[Path]:
    from ldm.eval.plots import line_plot

    samplers = list(dict.fromkeys(p["sampler"] for p in points))
    by_steps = sorted(points, key=lambda p: p["steps"])
    series = {key: {s: ([p["steps"] for p in by_steps if p["sampler"] == s],
                        [unit * p[key] for p in by_steps if p["sampler"] == s])
                    for s in samplers} for key, unit in (("accuracy", 100), ("fid_like", 1))}
    return [line_plot(out / "fid_like_vs_sampler_steps.png", series["fid_like"], log_x=True,
                      title="FID-like score (classifier features) against sampler steps", xlabel="sampler steps",
                      ylabel="FID-like (lower is better)"),
            line_plot(out / "accuracy_vs_sampler_steps.png", series["accuracy"], log_x=True,
                      title="Guided class samples recognised", xlabel="sampler steps", ylabel="accuracy (%)",
                      hline=(100 * real_accuracy, "real validation images"))]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--run", required=True, help="run directory of a class-conditional model")
    p.add_argument("--classifier", required=True, help="folder of scripts/train_classifier.py's classifier")
    p.add_argument("--ckpt", default=None, help="checkpoint to score (default: the run's last.ckpt)")
    p.add_argument("--grid", nargs="+", default=["ddim:5,10,20,50,100,200", "dpm:5,10,20", "unipc:5,10,20"],
                   metavar="SAMPLER:STEPS", help="samplers and their step counts (default: %(default)s)")
    p.add_argument("--reference", default=None, metavar="SAMPLER:STEPS",
                   help="the setting the others must match (default: ddim with its most steps)")
    p.add_argument("--scale", type=float, default=3.0, help="guidance scale (default 3)")
    p.add_argument("-n", type=int, default=128, help="class samples per setting (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-real", type=int, default=500, help="real validation images for the reference (default 500)")
    p.add_argument("--acc-tol", type=float, default=0.05, help="accuracy margin of a match (default 0.05: 5 points)")
    p.add_argument("--fid-tol", type=float, default=0.10, help="relative FID-like margin of a match (default 0.10)")
    p.add_argument("--out", default=None, help="output folder (default <run>/eval/samplers)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    run = Path(args.run)
    if not (run / "configs").is_dir():
        raise SystemExit(f"--run {run}: not a run directory (no configs/ folder)")
    ckpt = Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise SystemExit(f"--ckpt {ckpt}: no such checkpoint")
    if args.n < 2:
        raise SystemExit(f"-n {args.n}: the FID-like score needs at least 2 samples")
    grid = parse_grid(args.grid)
    ref = reference_of(grid, args.reference)
    out = Path(args.out) if args.out else run / "eval" / "samplers"
    wanted = {"version": SCORES_VERSION, "checkpoint": str(ckpt.resolve()), "checkpoint_mtime": ckpt.stat().st_mtime,
              "classifier": str(Path(args.classifier).resolve()), "n_samples": args.n, "scale": args.scale,
              "seed": args.seed, "n_real": args.n_real}
    path = out / "scores.json"
    from ldm.eval.reproduction import load_points, save_points

    try:
        points = load_points(path, wanted)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc

    todo = [g for g in grid if not any((p["sampler"], p["steps"]) == g for p in points)]
    if todo:
        from ldm.eval.classifier import usable_classifier
        from ldm.eval.synthetic_scores import class_sample_scores
        from ldm.inference import load_run
        from ldm.inference.checks import downsampling_factor

        model = load_run(ckpt)
        size = int(model.image_size) * downsampling_factor(model)
        if not usable_classifier(args.classifier, size=size):
            raise SystemExit(f"--classifier {args.classifier}: not a classifier of the synthetic data at {size} px "
                             "(train one with scripts/train_classifier.py)")
        for sampler, steps in todo:
            s = class_sample_scores(model, args.classifier, args.n, sampler=sampler, steps=steps, scale=args.scale,
                                    seed=args.seed, n_real=args.n_real, size=size, progress=False)
            points.append({"sampler": sampler, "steps": steps, "accuracy": s.accuracy,
                           "relative_accuracy": s.relative_accuracy, "fid_like": s.fid_like,
                           "real_accuracy": s.real_accuracy})
            print(f"{sampler} {steps} steps: accuracy {100 * s.accuracy:.1f} % "
                  f"({100 * s.relative_accuracy:.1f} % relative), FID-like {s.fid_like:.2f}", flush=True)
            save_points(path, wanted, points)
    points = [p for g in grid for p in points if (p["sampler"], p["steps"]) == g]  # grid order, grid only
    matches = matching(points, ref, args.acc_tol, args.fid_tol)
    plots = write_plots(out, points, points[0]["real_accuracy"])
    print("\n" + markdown(points, ref, matches))
    print(f"\nScores: {path}\nPlots: {', '.join(str(p) for p in plots)}")
    return {"points": points, "reference": ref, "matching": matches}


if __name__ == "__main__":
    main()
