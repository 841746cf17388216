"""Score a text-to-image run on the synthetic shapes: does each prompt's sample show what it names?

    python scripts/score_text_run.py -r logs/<run> --classifier logs/demo_classifier
    python scripts/score_text_run.py -r logs/<run> --classifier logs/demo_classifier -n 64 \\
        --prompts "a red circle on a blue background" "a green square on a yellow background"

For each snapshot in <run>/checkpoints/trainstep_checkpoints/ and a later last.ckpt, and each
prompt (written in the synthetic captions' words): guided samples (noise seeded per sample), the
share that shows every colour the prompt names (each on at least 2 % of the pixels), the same
share among real validation scenes of any caption (what chance gives), and the share the
classifier assigns to the prompt's first shape (chance 12.5 %; ldm.eval.synthetic_scores).
With --guide-model the samples are autoguided by that weaker model (as score_class_run.py); when it
is one of the run's snapshots, only the later checkpoints are scored. --no-ema samples the trained
weights instead of the EMA:

    python scripts/score_text_run.py -r logs/<run> --classifier logs/demo_classifier --no-ema \
        --guide-model logs/<run>/checkpoints/trainstep_checkpoints/<first>.ckpt --guide-weight 2

With --compose-model a second text model's classifier-free guidance direction is added at every
step (composable diffusion, Liu et al. 2022; ldm.inference.ComposedModel), weighted by
--compose-weight: a model that learnt the prompts' shapes composed with one that learnt their colours.

Writes <out>/scores.json (default <run>/eval/text_scores/) after every checkpoint; a rerun with the
same settings skips what is already scored. Then <out>/grid_step<N>.png (a row of 8 samples per
prompt), <out>/text_scores_vs_steps.png and a Markdown table.

    --response "a red circle on a blue background" "a red circle on a yellow background"

also measures, for each checkpoint, how far the model's x_0 estimate moves in mean colour between
the two prompts at 90, 70, 50 and 30 % of the chain (t = 900, 700, 500, 300 of 1000;
ldm.eval.synthetic_scores.mean_latent_response;
1 = as far as images differ in it), into <out>/responses.json: a model whose samples take their
colours from the starting noise barely responds at the noisy timesteps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCORES_VERSION = 1
PROMPTS = (  # the demo's prompt, then one object on a background in colour pairs the demo never trains specially
    "a red circle and a blue square",
    "a red circle on a blue background",
    "a green square on a yellow background",
    "a white star on a black background",
    "an orange triangle on a purple background",
)
GRID_COLUMNS = 8
RESPONSE_FRACTIONS = (0.9, 0.7, 0.5, 0.3)  # of the chain: t = 900, 700, 500, 300 of 1000


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a score depends on besides the checkpoint and the prompt: a change starts a new file."""
    from ldm.eval.guided_scoring import guide_settings

    return {"version": SCORES_VERSION, "classifier": str(Path(args.classifier).resolve()), "n_samples": args.n,
            "sampler": args.sampler, "steps": args.steps, "scale": args.scale, "seed": args.seed,
            "n_real": args.n_real, **guide_settings(args), **compose_settings(args)}


def compose_settings(args: argparse.Namespace) -> dict[str, Any]:
    """None for the default, so that older scores files stay valid."""
    if args.compose_model is None:
        return {}
    from ldm.inference.cli import compose_weight

    return {"compose_model": str(Path(args.compose_model).resolve()), "compose_weight": compose_weight(args)}


def mean_by_step(points: list[dict[str, Any]], key: str) -> dict[int, float]:
    steps = sorted({p["step"] for p in points})
    return {s: sum(p[key] for p in points if p["step"] == s) / sum(1 for p in points if p["step"] == s)
            for s in steps}


def markdown(points: list[dict[str, Any]]) -> str:
    rows = ["| step | prompt | shows its colours | real scenes showing them | first shape recognised |",
            "|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: p["step"]):
        rows.append(f"| {p['step']} | {p['prompt']} | {100 * p['shows_colours']:.1f} % | "
                    f"{100 * p['real_shows_colours']:.1f} % | {100 * p['shape_accuracy']:.1f} % |")
    colours, shapes = mean_by_step(points, "shows_colours"), mean_by_step(points, "shape_accuracy")
    for step in colours:
        rows.append(f"| {step} | mean over prompts | {100 * colours[step]:.1f} % | | {100 * shapes[step]:.1f} % |")
    return "\n".join(rows)


def write_plot(out: Path, points: list[dict[str, Any]]) -> Path:
    from ldm.eval.plots import line_plot

    series = {}
    for key, label in (("shows_colours", "shows the prompt's colours"), ("shape_accuracy", "first shape recognised")):
        by_step = mean_by_step(points, key)
        series[label] = (list(by_step), [100 * v for v in by_step.values()])
    return line_plot(out / "text_scores_vs_steps.png", series, title="Text samples (mean over prompts)",
                     xlabel="training step", ylabel="% of samples")


def parser() -> argparse.ArgumentParser:
    from ldm.eval.guided_scoring import add_guide_flags

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--run", required=True, help="run directory of a text-conditioned model")
    p.add_argument("--classifier", required=True, help="folder of scripts/train_classifier.py's classifier")
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS), help="prompts in the synthetic captions' words")
    p.add_argument("-n", type=int, default=64, help="samples per checkpoint and prompt (default 64)")
    p.add_argument("--sampler", default="unipc", choices=["ddim", "plms", "dpm", "unipc", "ddpm"])
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--scale", type=float, default=3.0, help="guidance scale (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-real", type=int, default=500, help="real validation images for the chance rate (default 500)")
    p.add_argument("--out", default=None, help="output folder (default <run>/eval/text_scores)")
    p.add_argument("--response", nargs=2, action="append", default=[], metavar=("PROMPT_A", "PROMPT_B"),
                   help="also measure the mean-colour response of the x_0 estimate between two prompts "
                        "(repeatable)")
    add_guide_flags(p)
    p.add_argument("--compose-model", default=None, metavar="RUN_OR_CKPT",
                   help="a second text model of the same latents whose classifier-free guidance direction is "
                        "added at every step (composable diffusion; its own schedule and text encoder)")
    p.add_argument("--compose-weight", type=float, default=None,
                   help="with --compose-model: the weight of its direction (default: --scale)")
    return p


def response_markdown(responses: list[dict[str, Any]]) -> str:
    rows = ["| step | prompts | response at t |", "|---|---|---|"]
    for r in responses:
        cells = ", ".join(f"{t}: {v:.3f}" for t, v in r["response"].items())
        rows.append(f"| {r['step']} | {r['prompts'][0]} / {r['prompts'][1]} | {cells} |")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    run = Path(args.run)
    if not (run / "configs").is_dir():
        raise SystemExit(f"--run {run}: not a run directory (no configs/ folder)")
    from ldm.eval.synthetic_scores import prompt_targets

    given = [("--prompts", q) for q in args.prompts] + [("--response", q) for pair in args.response for q in pair]
    for flag, prompt in given:
        try:
            prompt_targets(prompt)
        except ValueError as exc:
            raise SystemExit(f"{flag}: {exc}") from exc
    if args.n < 1:
        raise SystemExit(f"-n {args.n}: need at least one sample per prompt")
    from ldm.eval.classifier import usable_classifier
    from ldm.eval.guided_scoring import check_guide, checkpoints_after_guide, load_guide
    from ldm.eval.reproduction import load_points, save_points, step_checkpoints

    ckpts = step_checkpoints(run)
    if not ckpts:
        raise SystemExit(f"--run {run}: no checkpoints in {run / 'checkpoints'}")
    ckpts = checkpoints_after_guide(ckpts, args)
    out = Path(args.out) if args.out else run / "eval" / "text_scores"
    wanted = settings(args)
    path = out / "scores.json"
    try:
        points = load_points(path, wanted)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc

    import numpy as np
    import torch

    import ldm.eval.synthetic_scores as scores
    from ldm.inference import load_run, save_grid
    from ldm.inference.conditioning import model_kind
    from ldm.inference.checks import downsampling_factor

    guide = load_guide(args)
    from ldm.inference.cli import check_composed, composed_from_args

    compose = composed_from_args(args)
    checked_size = None
    responses = []
    for step, ckpt in ckpts:
        todo = [q for q in args.prompts if not any(p["step"] == step and p["prompt"] == q for p in points)]
        if not todo and not args.response:
            continue
        model = load_run(ckpt, prefer_ema=args.prefer_ema)
        if model_kind(model) != "text":
            raise SystemExit(f"--run {run}: not a text-conditioned model ({model_kind(model)})")
        check_guide(guide, model, args)
        if compose is not None:
            check_composed(compose.model, model, f"--compose-model {args.compose_model}")
        size = int(model.image_size) * downsampling_factor(model)
        if size != checked_size and not usable_classifier(args.classifier, size=size):
            raise SystemExit(f"--classifier {args.classifier}: not a classifier of the synthetic data at {size} px "
                             "(train one with scripts/train_classifier.py)")
        checked_size = size
        for a, b in args.response:
            timesteps = [int(round(f * model.num_timesteps)) for f in RESPONSE_FRACTIONS]
            r = scores.mean_latent_response(model, a, b, timesteps, seed=args.seed, size=size)
            responses.append({"step": step, "prompts": [a, b], "response": {str(t): v for t, v in r.items()}})
        if not todo:
            continue
        rows = []
        for prompt in todo:
            t, samples = scores.text_prompt_scores(model, args.classifier, prompt, args.n, sampler=args.sampler,
                                                   steps=args.steps, scale=args.scale, seed=args.seed,
                                                   n_real=args.n_real, size=size, guide=guide,
                                                   compose=compose)
            rows.append(samples[:GRID_COLUMNS])
            points.append({"step": step, "prompt": prompt, "checkpoint": ckpt.name, "colours": list(t.colours),
                           "shape": t.shape, "shows_colours": t.shows_colours,
                           "real_shows_colours": t.real_shows_colours, "shape_accuracy": t.shape_accuracy})
            print(f"step {step}, '{prompt}': {100 * t.shows_colours:.1f} % show {' and '.join(t.colours)} "
                  f"(real scenes {100 * t.real_shows_colours:.1f} %), {100 * t.shape_accuracy:.1f} % "
                  f"{t.shape}", flush=True)
            save_points(path, wanted, points)
        grid = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        save_grid(grid, out / f"grid_step{step}.png", nrow=min(GRID_COLUMNS, args.n))
        del model
    plot = write_plot(out, points)
    print("\n" + markdown(points))
    if responses:
        from ldm.eval.reproduction import save_results

        save_results(out / "responses.json", {"settings": wanted, "responses": responses})
        print("\nMean-colour response of the x_0 estimate between two prompts (1 = the spread between images):\n"
              + response_markdown(responses))
    print(f"\nScores: {path}\nPlot: {plot}")
    return points


if __name__ == "__main__":
    main()
