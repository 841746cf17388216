"""Autoguidance and EMA choice for scoring a run's checkpoints: the flags, settings and checks that
scripts/score_class_run.py and scripts/score_text_run.py share.

A guide (Karras et al. 2024; ``ldm.inference.GuideModel``) is a weaker model of the same latents;
when it is one of the run's own snapshots, only the later checkpoints are scored. Bad values end
the script with a message naming the flag.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["add_guide_flags", "check_guide", "checkpoints_after_guide", "guide_settings", "load_guide"]


def add_guide_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guide-model", default=None, metavar="CKPT",
                   help="autoguide the samples by this weaker model of the same latents (e.g. an early snapshot)")
    p.add_argument("--guide-weight", type=float, default=1.0, help="with --guide-model: its weight (default 1)")
    p.add_argument("--no-ema", dest="prefer_ema", action="store_false",
                   help="sample the trained weights of every checkpoint (and of the guide), not their EMA")


def guide_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The entries a scores file's settings gain; none for the defaults, so older files stay valid."""
    out: dict[str, Any] = {}
    if args.guide_model is not None:
        out.update(guide_model=str(Path(args.guide_model).resolve()), guide_weight=args.guide_weight)
    if not args.prefer_ema:
        out.update(ema=False)
    return out


def checkpoints_after_guide(ckpts: Sequence[tuple[int, Path]], args: argparse.Namespace) -> list[tuple[int, Path]]:
    """``ckpts`` (step, path) to score: all of them, or with a guide among them, those after it."""
    if args.guide_model is None:
        return list(ckpts)
    from ldm.inference.cli import check_guide_weight

    check_guide_weight(args.guide_weight)
    guide_path = Path(args.guide_model).resolve()
    guide_step = next((step for step, ckpt in ckpts if ckpt.resolve() == guide_path), None)
    later = [(step, ckpt) for step, ckpt in ckpts if guide_step is None or step > guide_step]
    if not later:
        raise SystemExit(f"--guide-model {args.guide_model}: the run has no checkpoint after it to guide")
    return later


def load_guide(args: argparse.Namespace) -> Optional[Any]:
    """The ``GuideModel`` of --guide-model/--guide-weight (EMA weights unless --no-ema), or None."""
    if args.guide_model is None:
        return None
    from ldm.inference import GuideModel, load_run

    try:
        return GuideModel(load_run(args.guide_model, prefer_ema=args.prefer_ema), args.guide_weight)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"--guide-model {args.guide_model}: {exc}") from exc


def check_guide(guide: Optional[Any], model: Any, args: argparse.Namespace) -> None:
    """The guide must be of ``model``'s task and estimate the same latents (one schedule, one first
    stage): ``ldm.inference.cli.check_guide``, as the sampling scripts check theirs."""
    if guide is None:
        return
    from ldm.inference.cli import check_guide as check

    check(guide.model, model, f"--guide-model {args.guide_model}")
