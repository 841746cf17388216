"""The paper's table rows that ``scripts/reproduce.py`` can run: model, checkpoint, sampler
settings, data, and the paper's figures (copied from the main text of Rombach et al., CVPR 2022).

Where the paper's main text is silent (number of samples, DDIM eta, the FID reference set,
sampler steps of Tab. 7), ``assumed`` says what we use instead. Keys of ``paper`` are the result
keys of :func:`ldm.eval.scoring.score`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["ROWS", "PaperRow", "find_row"]

_CIN_V2_URL = "https://ommer-lab.com/files/latent-diffusion/nitro/cin/model.ckpt"


@dataclass(frozen=True)
class PaperRow:
    key: str                          # what reproduce.py takes
    table: str                        # "Tab. 1" ...
    row: str                          # the row as the paper names it
    config: str                       # model config
    checkpoint: str                   # the weights; see `released`
    released: bool                    # False: no released checkpoint, train with `config` first
    task: str                         # scripts/evaluate.py --task
    metrics: tuple[str, ...]
    paper: dict                       # the paper's figures
    dataset: str                      # what is evaluated, in words
    sampler: str = "ddim"
    steps: int = 200
    eta: float = 0.0
    scale: float = 1.0
    n_samples: Optional[int] = None   # None: the whole evaluation split
    real: Optional[str] = None        # FID reference (folder of images or statistics .npz)
    real_how: str = ""                # what `real` must hold and how to make it
    captions: Optional[str] = None    # text models: caption file
    mask_kind: Optional[str] = None   # inpainting split
    data: Optional[str] = None        # config whose data.params.validation is evaluated (default: config)
    data_params: tuple[tuple[str, str], ...] = ()  # overrides of that split's params
    fetch: str = ""                   # command that fetches the checkpoint
    assumed: tuple[str, ...] = field(default_factory=tuple)  # our choices where the paper is silent

    def evaluate_args(self) -> list[str]:
        """scripts/evaluate.py arguments for this row (without --real/--outdir/--device)."""
        args = ["--config", self.config, "--ckpt", self.checkpoint, "--task", self.task, "--metrics",
                ",".join(self.metrics), "--sampler", self.sampler, "--steps", str(self.steps), "--eta", str(self.eta),
                "--scale", str(self.scale)]
        if self.n_samples is not None:
            args += ["-n", str(self.n_samples)]
        if self.captions:
            args += ["--captions", self.captions]
        if self.mask_kind:
            args += ["--mask-kind", self.mask_kind]
        if self.task != "samples":
            args += ["--data", self.data or self.config]
        for key, value in self.data_params:
            args += ["--data-param", f"{key}={value}"]
        return args


_N50K = "N = 50,000 samples (the paper does not state N for this table)"
_ETA0 = "DDIM eta = 0 (not stated in the paper)"


def _uncond(key: str, row: str, name: str, steps: int, fid: float, p: float, r: float, data: str,
            real_how: str) -> PaperRow:
    return PaperRow(key=key, table="Tab. 1", row=row, config=f"models/ldm/{name}/config.yaml",
                    checkpoint=f"models/ldm/{name}/model.ckpt", released=True, task="samples",
                    metrics=("fid", "prc"), paper={"fid": fid, "precision": p, "recall": r}, dataset=data,
                    steps=steps, n_samples=50000, real=f"data/eval/{key.split('-')[1]}256", real_how=real_how,
                    fetch=f"bash scripts/download_models.sh {name}",
                    assumed=(_N50K, _ETA0, "FID/precision/recall against all images of the dataset at 256x256"))


_FACES = "the dataset's images center-cropped and resized to 256x256 (PNG); see scripts/prepare_faces.py"
_LSUN = "the LSUN category's images center-cropped and resized to 256x256 (PNG); see scripts/prepare_lsun.py"

ROWS: tuple[PaperRow, ...] = (
    _uncond("tab1-celebahq-ldm4", "CelebA-HQ, LDM-4 (500-s)", "celeba256", 500, 5.11, 0.72, 0.49,
            "CelebA-HQ 256x256", _FACES),
    _uncond("tab1-ffhq-ldm4", "FFHQ, LDM-4 (200-s)", "ffhq256", 200, 4.98, 0.73, 0.50, "FFHQ 256x256", _FACES),
    _uncond("tab1-churches-ldm8", "LSUN-Churches, LDM-8* (200-s)", "lsun_churches256", 200, 4.02, 0.64, 0.52,
            "LSUN-Churches 256x256", _LSUN),
    _uncond("tab1-bedrooms-ldm4", "LSUN-Bedrooms, LDM-4 (200-s)", "lsun_beds256", 200, 2.95, 0.66, 0.48,
            "LSUN-Bedrooms 256x256", _LSUN),
    *(PaperRow(key=key, table="Tab. 2", row=row, config="models/ldm/text2img256/config.yaml",
               checkpoint="models/ldm/text2img256/model.ckpt", released=True, task="samples", metrics=("fid", "isc"),
               paper={"fid": fid, "isc_mean": ism, **({"isc_std": iss} if iss is not None else {})},
               dataset="MS-COCO validation captions, 256x256", steps=250, scale=scale, n_samples=30000,
               real="data/eval/coco256", captions="data/eval/coco_val_captions.txt",
               real_how="MS-COCO 2014 validation images center-cropped and resized to 256x256 (PNG); "
                        "captions: one per line in data/eval/coco_val_captions.txt",
               fetch="bash scripts/download_models.sh text2img256",
               assumed=("N = 30,000 samples, one caption each (the paper does not state N)", _ETA0))
      for key, row, scale, fid, ism, iss in (
          ("tab2-coco-ldm-kl-8", "LDM-KL-8", 1.0, 23.35, 19.93, 0.35),
          ("tab2-coco-ldm-kl-8-g", "LDM-KL-8-G (guidance scale 1.5)", 1.5, 12.61, 26.62, 0.38))),
    *(PaperRow(key=key, table="Tab. 3", row=row, config="configs/ldm/cin256-v2.yaml",
               checkpoint="models/ldm/cin256-v2/model.ckpt", released=True, task="samples",
               metrics=("fid", "isc", "prc"),
               paper={"fid": fid, "isc_mean": ism, "isc_std": iss, "precision": p, "recall": r},
               dataset="ImageNet 256x256, class-balanced samples", steps=250, scale=scale, n_samples=50000,
               real="data/eval/imagenet256",
               real_how="ImageNet training images center-cropped and resized to 256x256 (PNG), or their "
                        "statistics saved with scripts/evaluate.py --real <folder> --save-stats",
               fetch=f"mkdir -p models/ldm/cin256-v2 && curl -L -o models/ldm/cin256-v2/model.ckpt {_CIN_V2_URL}",
               assumed=(_N50K, _ETA0, "FID reference: the ImageNet training set (the paper does not say)",
                        "the released cin256-v2 checkpoint is not fetched by scripts/download_models.sh "
                        "(its cin256 is the LDM-8 model, not a row of Tab. 3)"))
      for key, row, scale, fid, ism, iss, p, r in (
          ("tab3-cin-ldm4", "LDM-4", 1.0, 10.56, 103.49, 1.24, 0.71, 0.62),
          ("tab3-cin-ldm4-g", "LDM-4-G (guidance scale 1.5)", 1.5, 3.60, 247.67, 5.09, 0.87, 0.48))),
    PaperRow(key="tab4-sr-ldm4", table="Tab. 4", row="LDM-4 (ours, 100 steps)",
             config="configs/ldm/sr-imagenet-ldm-vq-4.yaml",
             checkpoint="logs/<your sr-imagenet-ldm-vq-4 run>/checkpoints/last.ckpt", released=False, task="superres",
             metrics=("fid", "isc", "psnr", "ssim"),
             paper={"fid": 2.8, "isc_mean": 166.3, "psnr": 24.4, "psnr_std": 3.8, "ssim": 0.69, "ssim_std": 0.14},
             dataset="ImageNet-Val 64 -> 256 (bicubic, SR3 protocol)", steps=100, eta=1.0,
             fetch="no released checkpoint (models/ldm/bsr_sr is LDM-BSR, trained on other degradations): "
                   "python main.py --base configs/ldm/sr-imagenet-ldm-vq-4.yaml -t --gpus 0,",
             assumed=("DDIM with eta = 1 (the original super-resolution notebook's choice)",
                      "FID against the validation images themselves (the paper's 2.8†; 4.8‡ uses train features)")),
    *(PaperRow(key=key, table="Tab. 7", row=row, config=config, checkpoint=ckpt, released=released,
               task="inpainting", metrics=("fid", "lpips"),
               paper={"fid": fid, "lpips": lp, "lpips_std": lps}, dataset=f"Places, 512x512 crops, {split}",
               steps=50, n_samples=30000, mask_kind="hard" if split.startswith("40") else "mixed",
               data_params=(("size", "512"),),
               fetch="bash scripts/download_models.sh inpainting_big" if released else
               f"no released checkpoint: python main.py --base {config} -t --gpus 0,",
               assumed=("50 DDIM steps, eta 0 (not stated in the paper)",
                        "masks from ldm.data.masks ('hard' = 40-50 %, 'mixed' for all samples) unless "
                        "data/places/val_masks holds LaMa's evaluation masks (use_mask_files)",
                        *(("the released inpainting_big is taken to be the fine-tuned 'big, w/ ft' model",)
                          if released else ())))
      for key, row, config, ckpt, released, split, fid, lp, lps in (
          ("tab7-big-ft-hard", "LDM-4 (big, w/ ft), 40-50% masked", "models/ldm/inpainting_big/config.yaml",
           "models/ldm/inpainting_big/model.ckpt", True, "40-50% masked", 9.39, 0.246, 0.042),
          ("tab7-big-ft-all", "LDM-4 (big, w/ ft), all samples", "models/ldm/inpainting_big/config.yaml",
           "models/ldm/inpainting_big/model.ckpt", True, "all samples", 1.50, 0.137, 0.080),
          ("tab7-attn-hard", "LDM-4 (w/ attn), 40-50% masked", "configs/ldm/inpainting-places-ldm-vq-4.yaml",
           "logs/<your run>/checkpoints/last.ckpt", False, "40-50% masked", 11.87, 0.257, 0.042),
          ("tab7-attn-all", "LDM-4 (w/ attn), all samples", "configs/ldm/inpainting-places-ldm-vq-4.yaml",
           "logs/<your run>/checkpoints/last.ckpt", False, "all samples", 2.15, 0.144, 0.084),
          ("tab7-noattn-hard", "LDM-4 (w/o attn), 40-50% masked", "configs/ldm/inpainting-places-ldm-vq-4-noattn.yaml",
           "logs/<your run>/checkpoints/last.ckpt", False, "40-50% masked", 12.60, 0.259, 0.041),
          ("tab7-noattn-all", "LDM-4 (w/o attn), all samples", "configs/ldm/inpainting-places-ldm-vq-4-noattn.yaml",
           "logs/<your run>/checkpoints/last.ckpt", False, "all samples", 2.37, 0.145, 0.084))),
    *(PaperRow(key=f"tab8-{name}", table="Tab. 8", row=f"{name} autoencoder",
               config=f"models/first_stage_models/{name}/config.yaml",
               checkpoint=f"models/first_stage_models/{name}/model.ckpt", released=True, task="autoencoder",
               metrics=("fid", "psnr", "ssim", "lpips"), paper={}, dataset="ImageNet-Val, 256x256 center crops",
               data="configs/ldm/cin256-v2.yaml",
               fetch=f"bash scripts/download_first_stages.sh {name}",
               assumed=("Tab. 8 is in the paper's appendix, whose figures are not part of the text shipped in "
                        "this repository: no paper figures registered",
                        "ImageNet-Val at 256x256 (Fig. 1: reconstruction FID and PSNR on ImageNet-val); "
                        "reconstruction FID against those validation images themselves"))
      for name in ("kl-f4", "kl-f8", "kl-f16", "kl-f32", "vq-f4", "vq-f4-noattn", "vq-f8", "vq-f8-n256", "vq-f16")),
)


def find_row(key: str) -> PaperRow:
    for row in ROWS:
        if row.key == key:
            return row
    raise KeyError(f"no row {key!r}; scripts/reproduce.py --list shows the rows")
