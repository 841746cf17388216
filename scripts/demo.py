"""Train the demo models on the built-in synthetic data, offline, on CPU.

Runs the same `main.py` commands a user would type (they are printed), one stage after another:
the first-stage autoencoder, then latent diffusion models on top of its frozen latents. Each
stage's run directory holds its configs, checkpoints and image grids. At the end every trained
diffusion model is sampled with its script (scripts/sample_diffusion.py, txt2img.py, ...).

    python scripts/demo.py                 # the default stages
    python scripts/demo.py --tasks         # also super-resolution, semantic, layout, inpainting
    python scripts/demo.py --stages all    # the same: every stage
    python scripts/demo.py --stages autoencoder
    python scripts/demo.py --stages ldm_sr ldm_inpaint   # task stages on the latest autoencoder
    python scripts/demo.py --fast          # a short smoke run (also LDM_DEMO_FAST=1)
    python scripts/demo.py --steps-factor 8 --stages autoencoder ldm_class   # 8x the training steps
    python scripts/demo.py --stages ldm_class --steps-factor 2 --class-scale 5   # the class target, on the
                                                                             # latest autoencoder

Default stages: autoencoder, ldm_class, ldm_text, ldm_text_shapes: the stages with targets, about 15
minutes on 2 CPU cores with bf16 instructions (--precision), more without (the host decides; README). ldm_text
learns the prompts' colours, ldm_text_shapes (the class model's UNet, frozen, with new cross-attention and
caption encoder) their shapes; the text samples are the shape model's with the colour model's guidance
direction added (composable diffusion, txt2img.py --compose-model; --text-compose-weight). The class stage's
REPA teacher, a classifier of seed 1 (the judge's is 0), is trained first into <logdir>/demo_teacher/.
The class samples are autoguided by their run's half-way snapshot (--class-guide-weight; 0 samples
with classifier-free guidance alone), as the text model's are when it is sampled alone (--text-guide-weight).
Opt-in: ldm_uncond (an unconditional model, about 1.5 minutes more) and the task stages ldm_sr
(super-resolution, Sec. 4.4), ldm_semantic (semantic synthesis, Sec. 4.3.2), ldm_layout
(layout-to-image, Sec. 4.3.1), ldm_inpaint (inpainting, Sec. 4.5). Their sampling inputs (a
low-resolution image, a segmentation map, a boxes JSON, an image with a mask) are cut from the
synthetic validation set into <logdir>/demo_samples/inputs/.

Finally the demo measures what it trained (ldm.eval) and writes <logdir>/demo_report.html, one
self-contained page with the grids, the figures and every command: the autoencoder's PSNR on
synthetic validation images, and how often guided class samples are recognised as their class
by a classifier of the synthetic data (scripts/train_classifier.py, trained on first use into
<logdir>/demo_classifier/) relative to real validation images, with an FID-like score of that
classifier's features (not Inception FID). --no-report skips this. Last it prints its wall time by phase.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldm.eval.demo_figures import (FAST, FULL, SEED, TEXT_PROMPTS, PhaseTimer,  # noqa: E402
                                   autoencoder_figures, class_figures, text_figures)
from ldm.eval.demo_figures import SIZE as DEMO_SIZE  # noqa: E402  image side of the demo data (configs/demo/*.yaml)
from ldm.trainer.precision import PRECISION_CHOICES, SAMPLING_PRECISION, cpu_training_precision  # noqa: E402


class Stage(NamedTuple):
    name: str
    config: str
    needs_autoencoder: bool  # trains on the autoencoder's latents
    group: str               # "default": the default demo; "extra" and "task" (--tasks): opt-in


STAGES = [
    Stage("autoencoder", "configs/demo/autoencoder_kl.yaml", False, "default"),
    # Opt-in so that the default demo is only the stages that have targets (15 minutes on a fast host).
    Stage("ldm_uncond", "configs/demo/ldm_uncond.yaml", True, "extra"),
    Stage("ldm_class", "configs/demo/ldm_class.yaml", True, "default"),
    Stage("ldm_text", "configs/demo/ldm_text.yaml", True, "default"),
    # The class model's UNet, frozen, taught to read captions: the prompts' shapes for the text samples.
    Stage("ldm_text_shapes", "configs/demo/ldm_text_shapes.yaml", True, "default"),
    Stage("ldm_sr", "configs/demo/ldm_sr.yaml", True, "task"),
    Stage("ldm_semantic", "configs/demo/ldm_semantic.yaml", True, "task"),
    Stage("ldm_layout", "configs/demo/ldm_layout.yaml", True, "task"),
    Stage("ldm_inpaint", "configs/demo/ldm_inpaint.yaml", True, "task"),
]
STAGE_NAMES = [s.name for s in STAGES]
DEFAULT_STAGES = [s.name for s in STAGES if s.group == "default"]
TASK_STAGES = [s.name for s in STAGES if s.group == "task"]
DEMO_F = 2             # the demo autoencoder's downsampling factor: 16x16x3 latents
LAYOUT_GRID = 16       # configs/demo/ldm_layout.yaml's corner grid (data.params.*.layout_grid)
N_INPUTS = 2           # validation examples cut into sampling inputs
CLASS_SCALE = 3.0      # default guidance scale of the class samples (--class-scale)
CLASS_STEPS = 20       # DDIM steps of the class samples, as their figures (ldm.eval.demo_figures)
CLASS_GUIDE_WEIGHT = 2.0  # autoguidance by the class run's half-way snapshot (--class-guide-weight)
TEXT_GUIDE_WEIGHT = 2.0   # the same for the text samples, by the text run's half-way snapshot (--text-guide-weight)
TEXT_SAMPLER, TEXT_STEPS, TEXT_SCALE = "unipc", 20, 3.0  # how txt2img.py samples the text model
# The text samples: the shape model (ldm_text_shapes) with the colour model's (ldm_text) guidance direction
# added at this weight (txt2img.py --compose-model, --text-compose-weight; 0: the text model alone)
TEXT_COMPOSE_WEIGHT = 3.0
# Stages that train in --precision (bf16-mixed where the CPU has bf16 instructions): measured to learn as well
# there. The colour model (ldm_text) trained in bf16 showed no colours, so it and the rest stay fp32.
MIXED_PRECISION_STAGES = ("ldm_class", "ldm_text_shapes")
CLASS_CKPT_KEY = "model.params.ckpt_path"  # where a stage started from the class model gets its checkpoint
STARTS_FROM_CLASS = ("ldm_text_shapes",)


def select_stages(names: Optional[Sequence[str]], tasks: bool = False) -> list[Stage]:
    """The stages to run, in training order: ``names`` (default: the default stages; ``all``:
    every stage), plus the task stages when ``tasks``."""
    chosen = set(DEFAULT_STAGES if names is None else names)
    unknown = sorted(chosen - set(STAGE_NAMES) - {"all"})
    if unknown:
        raise ValueError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_NAMES)} "
                         "or all")
    if "all" in chosen:
        chosen = set(STAGE_NAMES)
    if tasks:
        chosen |= set(TASK_STAGES)
    return [s for s in STAGES if s.name in chosen]


def latest_run(logdir: Path, name: str) -> Path:
    runs = sorted(logdir.glob(f"*_{name}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"demo: no run directory matching {logdir}/*_{name}")
    return runs[-1]


def run(cmd: list[str], commands: list[list[str]], what: str) -> None:
    """Print, record and run one command from the repository root."""
    print(f"\n==> {what}: {shlex.join(cmd)}", flush=True)
    commands.append(cmd)
    subprocess.run(cmd, cwd=ROOT, check=True)


# Config entries counted in training steps (or batches): --steps-factor scales them together, so
# that a longer run keeps the same shape (the learning-rate decay ends at the last batch, one grid
# and one validation at the end, the GAN term stays beyond the run). Warm-ups are not scaled.
SNAPSHOT_KEY = "lightning.callbacks.step_checkpoint.params.every_n_train_steps"  # the guide of the samples
STEP_KEYS = (
    "lightning.trainer.max_steps",
    "lightning.trainer.val_check_interval",
    "lightning.callbacks.image_logger.params.batch_frequency",
    SNAPSHOT_KEY,
    "model.params.scheduler_config.params.max_decay_steps",
    "model.params.lossconfig.params.disc_start",
)


def step_overrides(config: str | Path, factor: int) -> list[str]:
    """``key=value`` overrides that multiply ``config``'s step counts (STEP_KEYS) by ``factor``."""
    from omegaconf import OmegaConf

    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"--steps-factor must be a whole number >= 1, got {factor!r}")
    cfg = OmegaConf.load(ROOT / config)
    overrides = []
    for key in STEP_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None and factor != 1:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{config}: {key} is {value!r}; --steps-factor scales whole step counts only")
            overrides.append(f"{key}={value * factor}")
    if factor != 1 and not any(o.startswith("lightning.trainer.max_steps=") for o in overrides):
        raise ValueError(f"{config}: no lightning.trainer.max_steps to scale with --steps-factor")
    return overrides


def run_stage(name: str, config: str, ae_ckpt: Path | None, logdir: Path, fast: bool,
              commands: list[list[str]], steps_factor: int = 1, teacher: Path | None = None,
              class_ckpt: Path | None = None, precision: str = "32") -> Path:
    cmd = [sys.executable, "main.py", "--base", config, "-t", "--accelerator", "cpu", "--logger", "csv",
           "-n", f"demo_{name}", "-l", str(logdir)]
    cmd += ["--precision", precision] if precision != "32" else []
    if ae_ckpt is not None:
        cmd.append(f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}")
    if teacher is not None:
        cmd.append(f"{TEACHER_KEY}={teacher}")
    if class_ckpt is not None:
        cmd.append(f"{CLASS_CKPT_KEY}={class_ckpt}")
    cmd += step_overrides(config, steps_factor)
    if fast:
        cmd += ["lightning.trainer.max_steps=40", "lightning.trainer.val_check_interval=20",
                "lightning.callbacks.image_logger.params.batch_frequency=20"]
        from omegaconf import OmegaConf

        if OmegaConf.select(OmegaConf.load(ROOT / config), SNAPSHOT_KEY) is not None:
            cmd.append(f"{SNAPSHOT_KEY}=20")  # the run's half-way snapshot, its samples' guide
    start = time.time()
    run(cmd, commands, name)
    run_dir = latest_run(logdir, f"demo_{name}")
    print(f"==> {name} finished in {time.time() - start:.0f} s; run directory {run_dir}", flush=True)
    return run_dir


def write_inputs(folder: Path, size: int = DEMO_SIZE, n: int = N_INPUTS) -> dict[str, list[Path]]:
    """The task scripts' sampling inputs at the demo's size and downsampling factor
    (``ldm.data.synthetic.write_sampling_inputs``; imported here so that --help does not load torch)."""
    from ldm.data.synthetic import write_sampling_inputs

    return write_sampling_inputs(folder, size=size, n=n, lr_factor=DEMO_F)


SAMPLE_FOLDERS = {"ldm_uncond": "uncond", "ldm_class": "class", "ldm_text": "text", "ldm_text_shapes": "text",
                  "ldm_sr": "superres",
                  "ldm_semantic": "semantic", "ldm_layout": "layout", "ldm_inpaint": "inpaint"}


def samples_dir(outdir: Path, stage: str, run_dir: Path) -> Path:
    """Where the demo samples ``run_dir`` (a run of ``stage``): one folder per run, so that a later
    demo in the same logdir neither mixes its samples with these nor reports these as its own."""
    return outdir / SAMPLE_FOLDERS[stage] / Path(run_dir).name


def guide_snapshot(run_dir: Path, what: str = "class") -> Path:
    """The first step snapshot of a class or text run (``what``): half-way with the demo configs
    (their step_checkpoint every max_steps / 2), the weaker model that autoguides its samples."""
    snapshots = sorted((Path(run_dir) / "checkpoints" / "trainstep_checkpoints").glob("*.ckpt"))  # zero-padded steps
    if not snapshots:
        raise SystemExit(f"demo: {run_dir}/checkpoints/trainstep_checkpoints has no snapshot to autoguide the {what} "
                         f"samples with; pass --{what}-guide-weight 0 to sample without one")
    return snapshots[0]


def guide_args(run_dir: Path, what: str, weight: float) -> list[str]:
    """txt2img.py / sample_diffusion.py flags that autoguide ``run_dir``'s samples (none for weight 0)."""
    return ["--guide-model", str(guide_snapshot(run_dir, what)), "--guide-weight", f"{weight:g}"] if weight else []


def text_sampling(runs: dict[str, Path], text_guide_weight: float = TEXT_GUIDE_WEIGHT,
                  text_compose_weight: float = TEXT_COMPOSE_WEIGHT) -> Optional[tuple[str, list[str], str]]:
    """How the demo samples text: (the stage whose samples are the text samples, the txt2img.py flags
    that pick its model, a description), None without a text stage. With both text stages and a
    positive ``text_compose_weight``, the shape model composed with the colour model; otherwise the one
    text model there is, the colour model autoguided by its half-way snapshot (``text_guide_weight``)."""
    if "ldm_text" in runs and "ldm_text_shapes" in runs and text_compose_weight:
        flags = ["-r", str(runs["ldm_text_shapes"]), "--compose-model", str(runs["ldm_text"]),
                 "--compose-weight", f"{text_compose_weight:g}"]
        return "ldm_text", flags, (f"the shape model composed with the colour model's guidance, weight "
                                   f"{text_compose_weight:g}")
    if "ldm_text" in runs:
        guided = f", autoguidance weight {text_guide_weight:g}" if text_guide_weight else ""
        return "ldm_text", ["-r", str(runs["ldm_text"]), *guide_args(runs["ldm_text"], "text", text_guide_weight)], \
            f"the text model{guided}"
    if "ldm_text_shapes" in runs:
        return "ldm_text_shapes", ["-r", str(runs["ldm_text_shapes"])], "the shape model alone"
    return None


def sample_commands(runs: dict[str, Path], outdir: Path, inputs: Optional[dict[str, list[Path]]] = None,
                    steps: Optional[int] = None, class_scale: float = CLASS_SCALE,
                    class_guide_weight: float = CLASS_GUIDE_WEIGHT,
                    text_guide_weight: float = TEXT_GUIDE_WEIGHT,
                    text_compose_weight: float = TEXT_COMPOSE_WEIGHT, class_precision: str = "fp32") -> list[list[str]]:
    """Sampling-script calls on the trained demo models (those whose stage ran), each into its
    :func:`samples_dir`. ``inputs`` (from :func:`write_inputs`) feed the task scripts; ``steps``
    overrides every sampler's steps; ``class_scale`` is the class samples' guidance scale and
    ``class_guide_weight``, ``text_guide_weight`` the class and text samples' autoguidance weights (0: none);
    ``text_compose_weight`` composes the two text models (:func:`text_sampling`); ``class_precision``: the class
    model's sampling autocast."""
    py = sys.executable

    def dest(stage: str) -> str:
        return str(samples_dir(outdir, stage, runs[stage]))

    def n_steps(default: int) -> str:
        return str(steps or default)

    def paths(kind: str) -> list[str]:
        if inputs is None:
            raise ValueError(f"the task stages need sampling inputs ({kind}): pass inputs=write_inputs(...)")
        return [str(p) for p in inputs[kind]]

    cmds = []
    if "ldm_uncond" in runs:
        cmds.append([py, "scripts/sample_diffusion.py", "-r", str(runs["ldm_uncond"]), "-n", "16", "-c", n_steps(50),
                     "-l", dest("ldm_uncond")])
    if "ldm_class" in runs:
        guide = guide_args(runs["ldm_class"], "class", class_guide_weight)
        cmds.append([py, "scripts/sample_diffusion.py", "-r", str(runs["ldm_class"]), "-n", "16",
                     "--classes", *map(str, range(8)), "--scale", f"{class_scale:g}", *guide,
                     "-c", n_steps(CLASS_STEPS), *(["--precision", class_precision] if class_precision != "fp32" else []),
                     "-l", dest("ldm_class")])
    text = text_sampling(runs, text_guide_weight, text_compose_weight)
    if text is not None:
        stage, model_flags, _ = text
        cmds.append([py, "scripts/txt2img.py", *model_flags, "--prompt", *(p.text for p in TEXT_PROMPTS),
                     "--sampler", TEXT_SAMPLER, "--steps", n_steps(TEXT_STEPS), "--scale", str(TEXT_SCALE),
                     "--n_samples", "16", "--outdir", dest(stage)])  # one process, the models loaded once
    if "ldm_sr" in runs:
        cmds.append([py, "scripts/superres.py", "-r", str(runs["ldm_sr"]), "--input", *paths("lr"),
                     "--n_samples", "4", "--steps", n_steps(100), "--outdir", dest("ldm_sr")])
    if "ldm_semantic" in runs:
        cmds.append([py, "scripts/semantic2img.py", "-r", str(runs["ldm_semantic"]), "--input", *paths("seg"),
                     "--n_samples", "4", "--steps", n_steps(100), "--outdir", dest("ldm_semantic")])
    if "ldm_layout" in runs:
        cmds.append([py, "scripts/layout2img.py", "-r", str(runs["ldm_layout"]), "--layout", *paths("layout"),
                     "--grid-size", str(LAYOUT_GRID), "--n_samples", "4", "--steps", n_steps(100),
                     "--outdir", dest("ldm_layout")])
    if "ldm_inpaint" in runs:
        cmds.append([py, "scripts/inpaint.py", "-r", str(runs["ldm_inpaint"]), "--image", *paths("image"),
                     "--mask", *paths("mask"), "--steps", n_steps(50), "--outdir", dest("ldm_inpaint")])
    return cmds


# ---------------------------------------------------------------------------------------------
# Figures and report: what the demo's models reached, measured with ldm.eval

# The REPA teacher (ldm.models.diffusion.alignment): a classifier like the judge but of another seed,
# so that the network scoring the samples is not the one the denoiser's features were pulled towards.
TEACHER_KEY = "model.params.representation_alignment.teacher_config.params.ckpt_path"
TEACHER_SEED = 1


def classifier_command(folder: Path, fast: bool, seed: int = SEED) -> list[str]:
    cmd = [sys.executable, "scripts/train_classifier.py", "--out", str(folder), "--no-progress"]
    cmd += ["--seed", str(seed)] if seed != SEED else []
    return cmd + (["--steps", "60", "--train-images", "1024", "--val-images", "200"] if fast else [])


def ensure_classifier(logdir: Path, fast: bool, commands: list[list[str]], teacher: bool = False) -> Path:
    """The judge ``<logdir>/demo_classifier`` (``_fast`` for --fast), or the REPA ``teacher`` ``demo_teacher``
    (seed ``TEACHER_SEED``); trained on first use and reused while it matches the synthetic data."""
    from ldm.eval.classifier import usable_classifier

    what = "teacher" if teacher else "classifier"
    folder = logdir / (f"demo_{what}_fast" if fast else f"demo_{what}")
    cmd = classifier_command(folder, fast, TEACHER_SEED if teacher else SEED)
    if usable_classifier(folder, size=DEMO_SIZE):
        print(f"\n==> {what}: reusing {folder}", flush=True)
        commands.append(cmd)
    else:
        run(cmd, commands, what)
    return folder


def needs_teacher(config: str | Path) -> bool:
    """Whether ``config`` aligns its UNet with a teacher whose weights the demo has to provide."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / config)  # a set ckpt_path is the config's own teacher
    return OmegaConf.select(cfg, TEACHER_KEY, default="absent") is None


def first_png(folder: Path, pattern: str) -> Optional[Path]:
    found = sorted(folder.glob(pattern))
    return found[0] if found else None


def write_demo_report(runs: dict[str, Path], logdir: Path, fast: bool, commands: list[list[str]],
                      argv: Sequence[str], class_scale: float = CLASS_SCALE,
                      class_guide_weight: float = CLASS_GUIDE_WEIGHT,
                      text_guide_weight: float = TEXT_GUIDE_WEIGHT,
                      timer: Optional[PhaseTimer] = None, text_compose_weight: float = TEXT_COMPOSE_WEIGHT,
                      class_precision: str = "fp32") -> Optional[Path]:
    """Figures of the models trained in this invocation, printed and written with the grids and
    commands to ``<logdir>/demo_report.html`` (with ``timer``'s phases, its wall time)."""
    from ldm.eval.html_report import format_figures, write_report
    from ldm.inference.images import safe_name

    text = text_sampling(runs, text_guide_weight, text_compose_weight)
    if not runs.keys() & {"autoencoder", "ldm_class"} and text is None:
        return None
    sizes = FAST if fast else FULL
    outdir = logdir / "demo_samples"
    figures, images = [], []
    print("\n==> figures (ldm.eval)", flush=True)
    timer = timer or PhaseTimer()
    with timer("judge"):
        classifier = ensure_classifier(logdir, fast, commands)
    with timer("figures"):
        if "autoencoder" in runs:
            grid = outdir / "autoencoder_reconstructions.png"
            figures += autoencoder_figures(runs["autoencoder"], sizes.real_images, grid, classifier, size=DEMO_SIZE)
            images.append(("Autoencoder: validation inputs (top) and reconstructions (bottom)", grid))
        if "ldm_class" in runs:
            grid = outdir / "class_samples_eval.png"
            guide = guide_snapshot(runs["ldm_class"]) if class_guide_weight else None
            figures += class_figures(runs["ldm_class"], classifier, sizes, grid, class_scale, guide, class_guide_weight,
                                     size=DEMO_SIZE, precision=class_precision)
            guided = f", autoguidance weight {class_guide_weight:g}" if class_guide_weight else ""
            images.append((f"Guided class samples, column k = class k (circle, square, triangle, diamond, hexagon, "
                           f"star, cross, ring), scale {class_scale:g}{guided}", grid))
        if text is not None:
            figures += text_figures(samples_dir(outdir, text[0], runs[text[0]]) / "samples", classifier,
                                    sizes.real_images, size=DEMO_SIZE)
    grids = [("ldm_uncond", "grid-*.png", "Unconditional samples")]
    if text is not None:
        how = f"{TEXT_SAMPLER} {TEXT_STEPS} steps, scale {TEXT_SCALE:g}, {text[2]}"
        grids += [(text[0], f"grid-{safe_name(prompt.text)}-*.png", f"Text samples: '{prompt.text}' ({how})")
                  for prompt in TEXT_PROMPTS]
    for name, pattern, caption in grids:
        png = first_png(samples_dir(outdir, name, runs[name]), pattern) if name in runs else None
        if png is not None:
            images.append((caption, png))
    notes = [f"Models trained by `python scripts/demo.py {shlex.join(argv)}`".rstrip() + " on the built-in synthetic "
             "shapes (32 px), offline on CPU" + (" (--fast: a smoke run, the figures mean nothing)." if fast else "."),
             "Classifier-based scores use a small CNN trained on the synthetic data (scripts/train_classifier.py); "
             "they are not Inception scores.",
             f"Wall time of this invocation until the report: {timer.summary()}."]
    path = write_report(logdir / "demo_report.html", "Latent diffusion demo", figures, images, commands, notes)
    print("\n" + format_figures(figures))
    print(f"\nReport: {path}")
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                   help=f"stages to run (always in training order): {', '.join(STAGE_NAMES)}, or all "
                        f"(default: {' '.join(DEFAULT_STAGES)})")
    p.add_argument("--tasks", action="store_true",
                   help=f"also run the task stages ({', '.join(TASK_STAGES)})")
    p.add_argument("--fast", action="store_true", default=bool(os.environ.get("LDM_DEMO_FAST")),
                   help="a short smoke run (also LDM_DEMO_FAST=1)")
    p.add_argument("--steps-factor", type=int, default=1, metavar="K",
                   help="train every stage K times as many steps (its learning-rate schedule, validation and "
                        "image logging scaled alike); the default stages take about K x 15 minutes or more on 2 CPU cores")
    p.add_argument("--class-scale", type=float, default=CLASS_SCALE, metavar="S",
                   help=f"classifier-free guidance scale of the class samples and their figures (default "
                        f"{CLASS_SCALE:g}; 5 was the better one after 2000 and more steps, docs/reproduction.md)")
    p.add_argument("--class-guide-weight", type=float, default=CLASS_GUIDE_WEIGHT, metavar="A",
                   help=f"autoguidance of the class samples by the class run's half-way snapshot (Karras et al. "
                        f"2024): the weight of (model - snapshot) added at every step (default {CLASS_GUIDE_WEIGHT:g}; "
                        "0: classifier-free guidance alone)")
    p.add_argument("--text-guide-weight", type=float, default=TEXT_GUIDE_WEIGHT, metavar="A",
                   help=f"the same for the text model's samples, by the text run's half-way snapshot, when it is "
                        f"sampled alone (--text-compose-weight 0, or without ldm_text_shapes) (default "
                        f"{TEXT_GUIDE_WEIGHT:g}; 0: classifier-free guidance alone)")
    p.add_argument("--text-compose-weight", type=float, default=TEXT_COMPOSE_WEIGHT, metavar="B",
                   help=f"the text samples are the shape model's (ldm_text_shapes) with the colour model's "
                        f"(ldm_text) guidance direction added at this weight (composable diffusion; default "
                        f"{TEXT_COMPOSE_WEIGHT:g}); 0 samples the colour model alone, autoguided as "
                        "--text-guide-weight says")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help=f"the training precision of {', '.join(MIXED_PRECISION_STAGES)} (the others train in fp32): auto "
                        "(default) is bf16-mixed on CPUs with bf16 instructions (AVX512-BF16, AMX), about 1.3x faster there, "
                        "and 32 elsewhere, where emulated bf16 is slower")
    p.add_argument("-l", "--logdir", default="logs", help="where run directories go")
    p.add_argument("--no-report", action="store_true",
                   help="skip the figures and <logdir>/demo_report.html at the end")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    try:
        stages = select_stages(args.stages, args.tasks)
    except ValueError as exc:
        p.error(str(exc))
    if args.steps_factor < 1:
        p.error(f"--steps-factor must be at least 1, got {args.steps_factor}")
    if not 0 < args.class_scale < float("inf"):
        p.error(f"--class-scale must be a positive number, got {args.class_scale:g}")
    for flag in ("class_guide_weight", "text_guide_weight", "text_compose_weight"):
        if not 0 <= getattr(args, flag) < float("inf"):
            p.error(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {getattr(args, flag):g}")
    if args.fast and args.steps_factor != 1:
        p.error("--steps-factor and --fast do not go together: --fast sets its own step counts")
    logdir = (ROOT / args.logdir).resolve()
    precision = cpu_training_precision(args.precision)
    class_precision = SAMPLING_PRECISION[precision]  # sampled in the autocast it was trained in
    print(f"{', '.join(MIXED_PRECISION_STAGES)} train in precision {precision} (--precision {args.precision})",
          flush=True)
    timer = PhaseTimer()
    ae_ckpt = None
    runs: dict[str, Path] = {}
    commands: list[list[str]] = []
    for name, config, needs_ae, _ in stages:
        if needs_ae and ae_ckpt is None:
            ae_ckpt = latest_run(logdir, "demo_autoencoder") / "checkpoints" / "last.ckpt"
        teacher = None
        if needs_teacher(config):
            with timer("teacher"):
                teacher = ensure_classifier(logdir, args.fast, commands, teacher=True)
        class_ckpt = None
        if name in STARTS_FROM_CLASS:
            class_ckpt = (runs.get("ldm_class") or latest_run(logdir, "demo_ldm_class")) / "checkpoints" / "last.ckpt"
        with timer(name):
            run_dir = run_stage(name, config, ae_ckpt if needs_ae else None, logdir, args.fast, commands,
                                args.steps_factor, teacher, class_ckpt,
                                precision=precision if name in MIXED_PRECISION_STAGES else "32")
        runs[name] = run_dir
        if name == "autoencoder":
            ae_ckpt = run_dir / "checkpoints" / "last.ckpt"
        grids = sorted((run_dir / "images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
        for g in grids[-3:]:
            print(f"    {g.relative_to(ROOT) if g.is_relative_to(ROOT) else g}")
    outdir = logdir / "demo_samples"
    inputs = write_inputs(outdir / "inputs") if runs.keys() & set(TASK_STAGES) else None
    with timer("sampling"):
        for cmd in sample_commands(runs, outdir, inputs, class_scale=args.class_scale,
                                   class_guide_weight=args.class_guide_weight, text_guide_weight=args.text_guide_weight,
                                   text_compose_weight=args.text_compose_weight, class_precision=class_precision):
            run(cmd, commands, "sampling")
    print(f"\nDemo done. Training grids are under each run's images/ folder; samples under {outdir}.")
    if not args.no_report:
        write_demo_report(runs, logdir, args.fast, commands, list(argv if argv is not None else sys.argv[1:]),
                          args.class_scale, args.class_guide_weight, args.text_guide_weight, timer,
                          args.text_compose_weight, class_precision)
    print(f"\nDemo wall time: {timer.summary()}.")


if __name__ == "__main__":
    main()
