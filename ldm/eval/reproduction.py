"""The pure parts of the small-scale reproduction (scripts/reproduce_small.py): config derivation
per downsampling factor f, UNet width matching for equal parameter counts, the results file, the
"did it reproduce" verdicts and the markdown writer. Nothing here trains or samples.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf

__all__ = ["ANALYSIS_BEGIN", "ANALYSIS_END", "DEFAULT_ANALYSIS", "F_VALUES", "LATENT_CHANNELS",
           "EVAL_SCALE", "RESULTS_VERSION", "WIDTH_CANDIDATES", "accuracy_noise", "autoencoder_config", "checkpoint_step", "closest_width",
           "extract_analysis", "fsweep_verdict", "guidance_verdict", "ldm_config", "load_points", "load_results",
           "quality_at_compute", "samplers_matching", "save_points", "save_results", "unet_params", "vq_autoencoder_config",
           "write_markdown"]

F_VALUES = (1, 2, 4, 8, 16)
# Latent channels c per downsampling factor f (embed_dim and ddconfig.z_channels of the KL
# autoencoder, channels of the diffusion model). The paper grows c with f so that strong
# downsampling keeps enough capacity (Sec. 4.1 uses c = 3 for f = 4 and 4 for f = 8); f = 1 is
# pixel space, 3 channels.
LATENT_CHANNELS: dict[int, int] = {1: 3, 2: 3, 4: 3, 8: 4, 16: 8}
# UNet widths (model_channels) to choose from: multiples of 32, as GroupNorm(32) and 32-channel
# attention heads need.
WIDTH_CANDIDATES = (32, 64, 96, 128, 160, 192)
IMAGE_SIZE = 32
PAPER_SCHEDULE = (0.0015, 0.0195)  # linear_start/linear_end of the paper's LDMs but the 1.45B text-to-image one
EVAL_SCALE = 3.0  # guidance scale of the f-sweep and KL/VQ scores (the demo's)
RESULTS_VERSION = 1
ANALYSIS_BEGIN = "<!-- analysis -->"
ANALYSIS_END = "<!-- /analysis -->"
DEFAULT_ANALYSIS = "_No hand-written analysis yet. Text between the analysis markers is kept when the document " \
                   "is regenerated._"


def _check_f(f: int) -> None:
    if f not in LATENT_CHANNELS:
        raise ValueError(f"f={f}: choose a downsampling factor from {sorted(LATENT_CHANNELS)}")


def ch_mult(f: int) -> list[int]:
    """Encoder/decoder channel multipliers with log2(f) downsamplings: the demo's [1, 1, 2] at
    f = 4, one more 2 per further halving (f = 8 -> [1, 1, 2, 2])."""
    _check_f(f)
    levels = int(math.log2(f)) + 1
    return [1, 1, 2, 2, 2][:levels] if levels > 1 else [1]


def autoencoder_config(base: DictConfig, f: int, batches: Optional[int] = None) -> DictConfig:
    """The KL autoencoder config ``base`` (configs/demo/autoencoder_kl.yaml) for factor ``f`` > 1, as
    the paper's: the demo's residual shortcut and squared pixel error are dropped.

    ``batches``: the run's length; a learning-rate decay in ``base`` is stretched to end there (the
    demo's decays over its own 600 batches and would leave a longer run at its floor rate)."""
    if f == 1:
        raise ValueError("f=1 is pixel space: there is no autoencoder to train (IdentityFirstStage)")
    _check_f(f)
    c = LATENT_CHANNELS[f]
    cfg = OmegaConf.merge(base, {"model": {"params": {"embed_dim": c, "ddconfig": {
        "ch_mult": ch_mult(f), "z_channels": c}}}})
    # The paper's autoencoder: an L1 pixel term and no pixel-latent shortcut (the demo's are ours).
    cfg.model.params.pop("residual_shortcut", None)
    cfg.model.params.lossconfig.params.pop("pixel_loss", None)
    sched = cfg.model.params.get("scheduler_config")
    if batches is not None and sched is not None and "max_decay_steps" in sched.get("params", {}):
        if batches < 1:
            raise ValueError(f"batches must be positive, got {batches}")
        sched.params.max_decay_steps = int(batches)
        if sched.params.get("warm_up_steps", 0) >= batches:  # a run shorter than the warm-up (smoke runs)
            sched.params.warm_up_steps = int(batches) - 1
    return cfg


def vq_autoencoder_config(base: DictConfig, n_embed: int = 256, f: int = 4,
                          batches: Optional[int] = None) -> DictConfig:
    """``base`` (the KL demo autoencoder) as a VQ-regularised one (configs/autoencoder/autoencoder_vq_f4.yaml's
    loss parameters, with the demo's perceptual and GAN terms off); ``batches`` as for autoencoder_config."""
    cfg = autoencoder_config(base, f, batches)
    loss = cfg.model.params.lossconfig.params
    cfg.model.target = "ldm.models.autoencoder.VQModel"
    cfg.model.params.n_embed = n_embed
    cfg.model.params.ddconfig.double_z = False
    cfg.model.params.lossconfig = OmegaConf.create({
        "target": "ldm.modules.losses.VQLPIPSWithDiscriminator",
        "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": loss.disc_start,
                   "disc_weight": 0.75, "codebook_weight": 1.0, "perceptual_weight": 0.0,
                   "disc_num_layers": loss.disc_num_layers, "disc_ndf": loss.disc_ndf, "n_classes": n_embed}})
    return cfg


def ldm_config(base: DictConfig, f: int, model_channels: int, first_stage: Optional[DictConfig] = None,
               ae_ckpt: Optional[str] = None) -> DictConfig:
    """The class-conditional LDM config ``base`` (configs/demo/ldm_class.yaml) on a first stage of
    factor ``f``: ``first_stage`` is the autoencoder's config (``model`` section's target/params;
    None for f = 1, pixel space); the UNet gets latent size 32/f, the latent channels and
    ``model_channels``, and the paper's loss (eps-prediction on ``PAPER_SCHEDULE``, no
    ``snr_gamma``/``snr_floor``, no ``representation_alignment``) at a constant learning rate (no
    ``scheduler_config``)."""
    _check_f(f)
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    p = cfg.model.params
    # The paper's objective and optimiser: eps-prediction on its schedule, uniform timestep
    # weights, constant rate (the demo's v-prediction, schedule, Min-SNR and decay are ours). A decay
    # over a fixed step count would also favour the models that reach more steps within the
    # sweep's equal wall time.
    for key in ("snr_gamma", "snr_floor", "scheduler_config", "representation_alignment"):
        p.pop(key, None)
    p.parameterization = "eps"
    p.linear_start, p.linear_end = PAPER_SCHEDULE
    size = IMAGE_SIZE // f
    if f == 1:
        if first_stage is not None:
            raise ValueError("f=1 is pixel space: pass no first stage")
        channels = 3
        p.first_stage_config = OmegaConf.create({"target": "ldm.models.autoencoder.IdentityFirstStage"})
        p.scale_by_std = False  # pixels are already in [-1, 1]
    else:
        if first_stage is None:
            raise ValueError(f"f={f}: pass the autoencoder's config")
        fs = first_stage.model if "model" in first_stage else first_stage
        channels = int(fs.params.embed_dim)
        is_vq = str(fs.target).endswith("VQModel")
        params = {k: v for k, v in OmegaConf.to_container(fs.params, resolve=True).items()
                  if k not in ("lossconfig", "monitor", "ckpt_path", "scheduler_config")}
        params["lossconfig"] = {"target": "torch.nn.Identity"}
        params["ckpt_path"] = ae_ckpt
        p.first_stage_config = OmegaConf.create({
            "target": "ldm.models.autoencoder.VQModelInterface" if is_vq else "ldm.models.autoencoder.AutoencoderKL",
            "params": params})
        p.scale_by_std = not is_vq  # as the paper: KL latents rescaled to unit std, VQ latents used as they are
    p.image_size = size
    p.channels = channels
    u = p.unet_config.params
    u.image_size = size
    u.in_channels = channels
    u.out_channels = channels
    u.model_channels = model_channels
    return cfg


def unet_params(unet_config: Mapping[str, Any]) -> int:
    """Parameter count of the UNet ``unet_config`` (target/params) by instantiating it."""
    from ldm.util import instantiate_from_config

    model = instantiate_from_config(OmegaConf.create(dict(unet_config)) if not isinstance(unet_config, DictConfig)
                                    else unet_config)
    return sum(p.numel() for p in model.parameters())


def closest_width(count: Callable[[int], int], target: int, candidates: Sequence[int] = WIDTH_CANDIDATES
                  ) -> tuple[int, int]:
    """The candidate width whose parameter count ``count(width)`` is closest to ``target`` (ties:
    the smaller width), and that count."""
    if not candidates:
        raise ValueError("closest_width: no candidate widths")
    best = None
    for w in sorted(candidates):
        n = count(w)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (w, n)
    return best


_STEP = re.compile(r"step=?(\d+)")


def checkpoint_step(path: Union[str, os.PathLike]) -> int:
    """The training step in a step checkpoint's name (``epoch=000000-step=000000200.ckpt`` -> 200)."""
    m = _STEP.search(Path(path).name)
    if not m:
        raise ValueError(f"{path}: no step in the checkpoint's name (expected ...step=<n>...)")
    return int(m.group(1))


def step_checkpoints(run_dir: Union[str, os.PathLike], max_steps: Optional[int] = None) -> list[tuple[int, Path]]:
    """A run's periodic snapshots (``checkpoints/trainstep_checkpoints``) as sorted (step, path),
    plus ``last.ckpt`` at its own ``global_step`` when that is later (a run stopped by its wall-time
    limit, or one whose snapshot interval does not divide its length). ``max_steps``: the step
    assumed for a ``last.ckpt`` that does not record one."""
    run_dir = Path(run_dir)
    found = sorted((checkpoint_step(p), p) for p in (run_dir / "checkpoints" / "trainstep_checkpoints").glob("*.ckpt"))
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        from ldm.checkpoint import load_training_checkpoint

        recorded = load_training_checkpoint(last).get("global_step", max_steps)
        if recorded is not None and (not found or found[-1][0] < int(recorded)):
            found.append((int(recorded), last))
    return found


# ---- results file ----------------------------------------------------------------------------

def _write_atomic(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file: a crash leaves the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def save_results(path: Union[str, os.PathLike], results: Mapping[str, Any]) -> Path:
    """Write ``results`` as JSON (atomically: a crash leaves the previous file)."""
    data = {"version": RESULTS_VERSION, **results}
    return _write_atomic(path, json.dumps(data, indent=1, sort_keys=True, allow_nan=True) + "\n")


def load_results(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read a results file of :func:`save_results` ({} when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    version = data.pop("version", None)
    if version != RESULTS_VERSION:
        raise ValueError(f"{path}: results version {version!r}, this code reads version {RESULTS_VERSION}; "
                         "move the file away to start over")
    return data


def load_points(path: Union[str, os.PathLike], settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The scored points of a resumable scores file (scripts/score_class_run.py, score_samplers.py)
    when it was written with ``settings``; none when there is no file or other settings wrote it.
    ValueError when the file is not JSON."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a scores file ({exc}); remove it or pass another --out") from exc
    if data.get("settings") != settings:
        print(f"==> {path} was scored with other settings; starting again", flush=True)
        return []
    return list(data.get("points", []))


def save_points(path: Union[str, os.PathLike], settings: Mapping[str, Any], points: Sequence[Mapping[str, Any]]
                ) -> Path:
    """Write a scores file for :func:`load_points` (atomically)."""
    return _write_atomic(path, json.dumps({"settings": dict(settings), "points": list(points)}, indent=1) + "\n")


# ---- verdicts --------------------------------------------------------------------------------

def quality_at_compute(points: Sequence[Mapping[str, float]], budget_s: float, key: str = "fid_like"
                       ) -> Optional[dict]:
    """The last evaluated checkpoint reached within ``budget_s`` seconds of training (points have
    ``wall_s`` and ``key``), or None when none was."""
    within = [p for p in points if p["wall_s"] <= budget_s + 1e-9 and p.get(key) is not None]
    return dict(max(within, key=lambda p: p["wall_s"])) if within else None


def accuracy_noise(a: float, b: float, n: int) -> float:
    """Two standard errors of the difference of two accuracies, each measured on ``n`` samples
    (binomial): a smaller difference is not evidence that one is lower."""
    return 2.0 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def fsweep_verdict(curves: Mapping[int, Sequence[Mapping[str, float]]],
                   n_samples: Optional[int] = None) -> dict[str, Any]:
    """Compare every f with f = 1 at equal training wall time: the budget is the pixel-space run's
    final wall time (the slowest per step: the question is what the latent models reach in the time
    it took), each run is scored by its last checkpoint within it (a run that stopped earlier by its
    step limit got less compute, which only favours f = 1). A factor "beats" f = 1 when its
    FID-like score is lower and its accuracy not lower; with ``n_samples`` (the samples behind each
    accuracy), lower only by more than ``accuracy_noise``. Returns the budget, the per-f points and
    the sentences for the document (no claim the numbers do not show)."""
    curves = {int(f): list(pts) for f, pts in curves.items() if pts}
    out: dict[str, Any] = {"budget_s": None, "at_budget": {}, "beats_f1": {}, "lines": []}
    if 1 not in curves or len(curves) < 2:
        out["lines"].append("Not enough runs to compare with pixel space (f=1): the comparison needs f=1 and at "
                            "least one f > 1.")
        return out
    budget = max(p["wall_s"] for p in curves[1])
    out["budget_s"] = budget
    at = {f: quality_at_compute(pts, budget) for f, pts in curves.items()}
    out["at_budget"] = {f: p for f, p in at.items() if p is not None}
    ref = at[1]
    for f in sorted(curves):
        if f == 1:
            continue
        p = at[f]
        if p is None or ref is None:
            out["lines"].append(f"f={f}: no checkpoint within f=1's training time of {budget:.0f} s; not compared.")
            continue
        tol = 0.0 if n_samples is None else accuracy_noise(p["accuracy"], ref["accuracy"], n_samples)
        lower = ref["accuracy"] - p["accuracy"]
        beats = p["fid_like"] < ref["fid_like"] and lower <= tol
        out["beats_f1"][f] = beats
        noise = (f" (lower by {100 * lower:.1f} points, within the sampling noise of ±{100 * tol:.1f})"
                 if 0 < lower <= tol else "")
        out["lines"].append(
            f"f={f} {'beats' if beats else 'does not beat'} f=1 at equal training wall time ({budget:.0f} s): "
            f"FID-like {p['fid_like']:.2f} vs {ref['fid_like']:.2f}, accuracy {100 * p['accuracy']:.1f} % vs "
            f"{100 * ref['accuracy']:.1f} %{noise}.")
    mid = [f for f in (4, 8, 16) if f in out["beats_f1"]]
    if mid:
        if all(out["beats_f1"][f] for f in mid):
            out["lines"].append(f"Reproduced: f={', '.join(map(str, mid))} all beat pixel space at equal compute "
                                "(paper Sec. 4.1: LDM-4 to LDM-16 strike the balance).")
        else:
            failed = [f for f in mid if not out["beats_f1"][f]]
            out["lines"].append(f"Not reproduced: f={', '.join(map(str, failed))} did not beat pixel space at equal "
                                "compute (the paper finds LDM-4 to LDM-16 better than LDM-1).")
    return out


def samplers_matching(reference: Mapping[str, float], runs: Mapping[str, Mapping[int, Mapping[str, float]]],
                      acc_tol: float = 0.05, fid_tol: float = 0.10) -> dict[str, Optional[int]]:
    """Per sampler, the smallest step count whose accuracy is at least the reference's minus
    ``acc_tol`` (absolute) and whose FID-like score is at most the reference's times (1 + ``fid_tol``);
    None when no step count does."""
    out: dict[str, Optional[int]] = {}
    for sampler, by_steps in runs.items():
        ok = [int(s) for s, m in by_steps.items()
              if m["accuracy"] >= reference["accuracy"] - acc_tol and m["fid_like"] <= reference["fid_like"] * (1 + fid_tol)]
        out[sampler] = min(ok) if ok else None
    return out


def guidance_verdict(by_scale: Mapping[float, Mapping[str, float]], margin: float = 0.05) -> list[str]:
    """Sentences on the guidance trade-off: the scale with the best FID-like score, the one with the
    best accuracy, and whether guidance above 1 improved the FID-like score by more than ``margin``
    (relative; smaller differences are within the noise of a few hundred samples)."""
    if not by_scale:
        return ["No guidance results."]
    scales = sorted(float(s) for s in by_scale)
    get = {float(s): m for s, m in by_scale.items()}
    best_fid = min(scales, key=lambda s: get[s]["fid_like"])
    best_acc = max(scales, key=lambda s: get[s]["accuracy"])
    lines = [f"Best FID-like score at scale {best_fid:g} ({get[best_fid]['fid_like']:.2f}); best accuracy at scale "
             f"{best_acc:g} ({100 * get[best_acc]['accuracy']:.1f} %)."]
    if 1.0 in get:
        base = get[1.0]
        if best_fid > 1.0 and get[best_fid]["fid_like"] < base["fid_like"] * (1 - margin):
            lines.append(f"Reproduced: guidance improves the FID-like score over scale 1 "
                         f"({base['fid_like']:.2f} -> {get[best_fid]['fid_like']:.2f}), as in the paper's Tab. 3.")
        else:
            lines.append(f"Not reproduced: no guidance scale above 1 improves the FID-like score over scale 1 by more "
                         f"than {100 * margin:.0f} % (the paper's guided cin model improves FID at scale 1.5).")
        top = max(scales)
        if top > 1.0 and get[top]["fid_like"] > get[best_fid]["fid_like"] and get[top]["accuracy"] >= base["accuracy"]:
            lines.append(f"Trade-off seen: at the largest scale ({top:g}) accuracy stays at or above scale 1's while "
                         "the FID-like score is worse than at the best scale.")
    return lines


# ---- markdown ----------------------------------------------------------------------------------

def extract_analysis(text: str) -> Optional[str]:
    """The hand-written text between the analysis markers of an existing document (None if absent)."""
    start = text.find(ANALYSIS_BEGIN)
    end = text.find(ANALYSIS_END, start + len(ANALYSIS_BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[start + len(ANALYSIS_BEGIN):end].strip("\n")


def write_markdown(path: Union[str, os.PathLike], render: Callable[[str], str]) -> Path:
    """(Re)write ``path`` with ``render(analysis)``, keeping the analysis block of the file already
    there (the default text when there is none). ``render`` must place the block between the
    markers; that is checked, so hand-written text is never silently dropped."""
    path = Path(path)
    analysis = extract_analysis(path.read_text()) if path.is_file() else None
    analysis = DEFAULT_ANALYSIS if analysis is None else analysis
    text = render(analysis)
    if extract_analysis(text) != analysis.strip("\n"):
        raise ValueError("write_markdown: the rendered document does not carry the analysis block between "
                         f"{ANALYSIS_BEGIN} and {ANALYSIS_END}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.4g}"
        return "—" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
