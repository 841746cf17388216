#!/usr/bin/env python3
"""Reproduce a row of the paper's tables: sample (or reconstruct) with the row's checkpoint and
settings through scripts/evaluate.py, and print our figures beside the paper's.

    python scripts/reproduce.py --list
    python scripts/reproduce.py tab1-celebahq-ldm4 --device cuda
    python scripts/reproduce.py tab3-cin-ldm4-g -n 10000 --real data/eval/imagenet256_stats.npz

Before anything runs, every input of the row is checked: a missing checkpoint, Inception weight
file, reference set, caption file or dataset is reported with the command that fetches or
prepares it. Samples are written in shards under --outdir, so an interrupted run resumes.
See docs/evaluation.md for the protocols and which rows the released checkpoints reproduce.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from ldm.eval.inception import InceptionWeightsMissing, find_inception_weights  # noqa: E402
from ldm.eval.registry import ROWS, PaperRow, find_row  # noqa: E402
from ldm.eval.scoring import format_table  # noqa: E402

INCEPTION_METRICS = ("fid", "kid", "isc", "prc")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("row", nargs="?", help="the row to run (see --list)")
    p.add_argument("--list", action="store_true", help="show the registered rows and exit")
    p.add_argument("--ckpt", default=None, help="checkpoint to use instead of the row's (e.g. your own training run)")
    p.add_argument("--real", default=None, help="FID reference instead of the row's (folder, .npz or statistics)")
    p.add_argument("-n", "--n_samples", type=int, default=None, help="fewer samples than the paper (quick checks)")
    p.add_argument("--batch_size", type=int, default=8, help="samples per forward pass (default %(default)s)")
    p.add_argument("--outdir", default=None, help="where samples go (default outputs/reproduce/<row>)")
    p.add_argument("--json", default=None, help="also write our figures to this JSON file")
    p.add_argument("--device", default=None, help="cpu, cuda, mps ... (default: the best available)")
    p.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="the FID Inception weights (default: $LDM_INCEPTION_WEIGHTS, then the torch hub cache)")
    p.add_argument("--fid-features", type=int, choices=(64, 192, 768), default=None,
                   help="a smaller Inception layer for quick checks (the paper's figures use 2048)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def list_rows() -> str:
    lines = [f"{'row':<20} {'table':<7} {'checkpoint':<44} {'sampler':<17} {'N':>6}  paper"]
    for r in ROWS:
        ckpt = r.checkpoint if r.released else "(not released: train " + Path(r.config).name + ")"
        sampler = f"{r.sampler} {r.steps} eta{r.eta:g}" + (f" w{r.scale:g}" if r.scale != 1.0 else "")
        figures = ", ".join(f"{k} {v}" for k, v in r.paper.items()) or "(not in the main text)"
        n = str(r.n_samples) if r.n_samples else "split"
        lines.append(f"{r.key:<20} {r.table:<7} {ckpt:<44} {sampler:<17} {n:>6}  {figures}")
        lines.append(f"{'':<20} {r.row}; {r.dataset}")
    return "\n".join(lines)


def missing_inputs(row: PaperRow, args: argparse.Namespace) -> list[str]:
    """What the row needs and does not find, each with the command that fetches or prepares it."""
    missing = []
    ckpt = args.ckpt or row.checkpoint
    if not row.released and not args.ckpt:
        missing.append(f"checkpoint: {row.fetch}; then pass --ckpt <your checkpoint>")
    elif not Path(ckpt).is_file():
        missing.append(f"checkpoint {ckpt}: not found; fetch it with `{row.fetch}`")
    if any(m in row.metrics for m in INCEPTION_METRICS):
        try:
            find_inception_weights(args.inception_weights)
        except InceptionWeightsMissing as exc:
            missing.append(f"Inception weights: {exc}")
    real = args.real or row.real
    if row.task == "samples" and real and not Path(real).exists():
        missing.append(f"FID reference {real}: not found; it must hold {row.real_how} (or pass --real PATH)")
    if row.captions and not Path(row.captions).is_file():
        missing.append(f"captions {row.captions}: not found; {row.real_how}")
    if row.task != "samples":
        from ldm.eval.protocols import validation_dataset

        try:
            validation_dataset([row.data or row.config], "validation",
                               {k: yaml.safe_load(v) for k, v in row.data_params} or None)
        except FileNotFoundError as exc:
            missing.append(f"dataset: {exc}")
    return missing


def _evaluate_script() -> Any:
    spec = importlib.util.spec_from_file_location("ldm_scripts_evaluate", Path(__file__).with_name("evaluate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.list:
        print(list_rows())
        return {}
    if not args.row:
        raise SystemExit("name a row to run (scripts/reproduce.py --list shows them)")
    try:
        row = find_row(args.row)
    except KeyError as exc:
        raise SystemExit(str(exc.args[0])) from None
    missing = missing_inputs(row, args)
    if missing:
        raise SystemExit(f"{row.key} ({row.table}, {row.row}) cannot run yet:\n" +
                         "\n".join(f"- {m}" for m in missing))
    argv = row.evaluate_args()
    if args.ckpt:
        argv[argv.index("--ckpt") + 1] = args.ckpt
    if args.n_samples:
        argv += ["-n", str(args.n_samples)]  # the last -n wins
    real = args.real or (row.real if row.task == "samples" else None)
    if real:
        argv += ["--real", real]
    argv += ["--outdir", args.outdir or f"outputs/reproduce/{row.key}", "--batch_size", str(args.batch_size)]
    for flag, value in (("--device", args.device), ("--inception-weights", args.inception_weights),
                        ("--json", args.json), ("--fid-features", args.fid_features)):
        if value:
            argv += [flag, str(value)]
    if not args.progress:
        argv.append("--no-progress")
    print(f"{row.key}: {row.table}, {row.row}; {row.dataset}")
    for note in row.assumed:
        print(f"  assumed: {note}")
    results = _evaluate_script().main(argv)
    print(f"\n{row.table} {row.row}: ours beside the paper's")
    print(format_table(results, row.paper))
    return results


if __name__ == "__main__":
    main()
