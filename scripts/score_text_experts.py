"""Sample text prompts with two text models as noise-level experts and score the samples.

    python scripts/score_text_experts.py --high logs/<x0 run> --low logs/<eps run> \
        --classifier logs/demo_classifier --switch-t 999 900 800 700 0

For each --switch-t T the --high model denoises at the noise levels above timestep T's and the
--low model at the rest (an ensemble of expert denoisers, Balaji et al. 2022, eDiff-I; each with
its own text encoder and guidance): T = 999 (the last timestep) is the --low model alone, T = 0
the --high model alone. Both runs must share the first stage and the noise schedule. The samples
(noise seeded per sample, the same for every T) are judged as in scripts/score_text_run.py: the
share that shows every colour the prompt names and the share the classifier assigns to its
first shape. It shows at which noise levels a model takes what from the prompt: an image's colours
are decided at the noisiest levels, its shapes below them.

Writes <out>/experts.json (default <low run>/eval/text_experts/, or beside a --low checkpoint), <out>/grid_<prompt index>.png
(a row of 8 samples per T) and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_PROMPTS = ["a red circle and a blue square", "a red circle on a blue background",
                   "a green square on a yellow background", "a white star on a black background",
                   "an orange triangle on a purple background"]
GRID_COLUMNS = 8
SAMPLERS = ("ddim", "plms", "dpm", "unipc")  # deterministic: every T starts from and follows the same noise


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--high", required=True, help="run directory (or checkpoint) of the noisiest levels' text model")
    p.add_argument("--low", required=True, help="run directory (or checkpoint) of the other levels' text model")
    p.add_argument("--classifier", required=True, help="folder of scripts/train_classifier.py's classifier")
    p.add_argument("--switch-t", type=int, nargs="+", required=True, help="timesteps T: --high answers above T's level")
    p.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS, help="prompts in the synthetic captions' words")
    p.add_argument("-n", type=int, default=32, help="samples per prompt and T (default 32)")
    p.add_argument("--sampler", default="unipc", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--scale", type=float, default=3.0, help="guidance scale of both experts (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-real", type=int, default=500, help="real scenes for the colours' chance rate (default 500)")
    p.add_argument("--out", default=None, help="output folder (default <low run>/eval/text_experts)")
    return p


def _load(flag: str, path: str) -> Any:
    from ldm.eval.reproduction import step_checkpoints
    from ldm.inference import load_run
    from ldm.inference.conditioning import model_kind

    source = Path(path)
    if source.is_dir():
        ckpts = step_checkpoints(source)
        if not ckpts:
            raise SystemExit(f"{flag} {source}: no checkpoints in {source / 'checkpoints'}")
        source = ckpts[-1][1]
    elif not source.is_file():
        raise SystemExit(f"{flag} {source}: no such run directory or checkpoint")
    model = load_run(source)
    if model_kind(model) != "text":
        raise SystemExit(f"{flag} {path}: not a text-conditioned model ({model_kind(model)})")
    return model


def check_compatible(high: Any, low: Any) -> None:
    """Experts must return x0 estimates of the same latents: one schedule, one first stage."""
    from ldm.inference.sampling import check_experts

    try:
        check_experts(high, low)
    except ValueError as exc:
        raise SystemExit(f"--high and --low: {exc}") from exc


def expert_samples(high: Any, low: Any, prompt: str, switch_t: int, n: int, sampler: str, steps: int,
                   scale: float, seed: int) -> tuple[Any, dict[str, int]]:
    """uint8 samples (n, H, W, 3) of ``prompt`` and how often each expert was called."""
    import numpy as np
    import torch

    from ldm.eval.shards import sample_noise
    from ldm.eval.synthetic_scores import SAMPLE_BATCH
    from ldm.inference.conditioning import prompt_conditioning
    from ldm.inference.images import to_uint8
    from ldm.inference.sampling import HighNoiseExpert, sample_latents
    from ldm.inference.tiling import decode

    shape = (low.channels, low.image_size, low.image_size)
    expert = HighNoiseExpert(high, switch_t)
    out = []
    with torch.no_grad():
        for start in range(0, n, SAMPLE_BATCH):
            indices = np.arange(start, min(start + SAMPLE_BATCH, n))
            c, uc = prompt_conditioning(low, [prompt] * len(indices))
            expert.cond, expert.uncond = prompt_conditioning(high, [prompt] * len(indices))
            z = sample_latents(low, (len(indices), *shape), cond=c, uncond=uc, scale=scale, sampler=sampler,
                               steps=steps, x_T=sample_noise(seed, indices, shape), progress=False, expert=expert)
            out.append(to_uint8(decode(low, z, None).clamp(-1.0, 1.0)))
    return np.concatenate(out), dict(expert.calls)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| switch T | prompt | shows its colours | first shape recognised | high / low expert calls |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['switch_t']} | {r['prompt']} | {100 * r['shows_colours']:.1f} % | "
                     f"{100 * r['shape_accuracy']:.1f} % | {r['high_calls']} / {r['low_calls']} |")
    for t in dict.fromkeys(r["switch_t"] for r in rows):
        sel = [r for r in rows if r["switch_t"] == t]
        lines.append(f"| {t} | mean over prompts | {100 * sum(r['shows_colours'] for r in sel) / len(sel):.1f} % | "
                     f"{100 * sum(r['shape_accuracy'] for r in sel) / len(sel):.1f} % | |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    from ldm.eval.synthetic_scores import prompt_targets

    for prompt in args.prompts:
        try:
            prompt_targets(prompt)
        except ValueError as exc:
            raise SystemExit(f"--prompts: {exc}") from exc
    if args.n < 1:
        raise SystemExit(f"-n {args.n}: need at least one sample per prompt")
    high, low = _load("--high", args.high), _load("--low", args.low)
    check_compatible(high, low)
    bad = [t for t in args.switch_t if not 0 <= t < low.num_timesteps]
    if bad:
        raise SystemExit(f"--switch-t {bad}: timesteps must lie in [0, {low.num_timesteps - 1}]")

    import numpy as np
    import torch

    import ldm.eval.synthetic_scores as scores
    from ldm.eval.classifier import usable_classifier
    from ldm.inference import save_grid
    from ldm.inference.checks import downsampling_factor

    size = int(low.image_size) * downsampling_factor(low)
    if not usable_classifier(args.classifier, size=size):
        raise SystemExit(f"--classifier {args.classifier}: not a classifier of the synthetic data at {size} px "
                         "(train one with scripts/train_classifier.py)")
    low_path = Path(args.low)
    out = Path(args.out) if args.out else (low_path if low_path.is_dir() else low_path.parent) / "eval" / "text_experts"
    out.mkdir(parents=True, exist_ok=True)
    rows, grids = [], {}
    for t in args.switch_t:
        for i, prompt in enumerate(args.prompts):
            samples, calls = expert_samples(high, low, prompt, t, args.n, args.sampler, args.steps, args.scale, args.seed)
            targets = scores.prompt_targets(prompt)
            s = scores.text_sample_scores(samples, targets.colours, targets.shape, args.classifier, args.n_real, size)
            rows.append({"switch_t": t, "prompt": prompt, "shows_colours": s.shows_colours,
                         "real_shows_colours": s.real_shows_colours, "shape_accuracy": s.shape_accuracy,
                         "high_calls": calls["high"], "low_calls": calls["low"]})
            print(f"T={t}, {prompt!r}: {100 * s.shows_colours:.1f} % show its colours, "
                  f"{100 * s.shape_accuracy:.1f} % {targets.shape}", flush=True)
            grids.setdefault(i, []).append(samples[:GRID_COLUMNS])
    settings = {"high": str(Path(args.high).resolve()), "low": str(Path(args.low).resolve()),
                "classifier": str(Path(args.classifier).resolve()), "n_samples": args.n, "sampler": args.sampler,
                "steps": args.steps, "scale": args.scale, "seed": args.seed, "n_real": args.n_real}
    (out / "experts.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    for i, rows_i in grids.items():
        x = torch.from_numpy(np.concatenate(rows_i)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        save_grid(x, out / f"grid_{i}.png", nrow=min(GRID_COLUMNS, args.n))
    print()
    print(markdown(rows))
    print(f"\nResults: {out / 'experts.json'}; grids (a row per T): {out}/grid_<prompt>.png")
    return rows


if __name__ == "__main__":
    main()
