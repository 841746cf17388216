"""Sampling from trained latent diffusion models: loading, devices and precision, the task
pipelines of paper Sec. 4 (text/class/unconditional, image-to-image, inpainting, super-resolution,
semantic and layout synthesis), convolutional sampling and tiled decoding for large outputs,
and safe image output. The command-line scripts in ``scripts/`` are thin wrappers over this.
"""
from ldm.inference.checks import (check_multiple, check_prompts, check_range, check_same_size,
                                  downsampling_factor)
from ldm.inference.conditioning import (class_conditioning, encode_image, model_kind,
                                        prompt_conditioning, semantic_onehot)
from ldm.inference.images import (UnsafePathError, load_image, load_label_map, load_mask, safe_join, safe_name,
                                  save_grid, save_images, save_npz, to_uint8)
from ldm.inference.layouts import layout_tokenizer, layout_tokens, read_layouts
from ldm.inference.loading import RunFiles, find_run, load_model, load_run
from ldm.inference.pipelines import (InpaintResult, SamplingOptions, generate, img2img, inpaint, latent_size,
                                     semantic2img, superres)
from ldm.inference.runtime import PRECISIONS, autocast, make_generator, seed_everything, select_device
from ldm.inference.sampling import (SAMPLER_NAMES, ComposedModel, GuideModel, HighNoiseExpert, check_experts, initial_noise, noise_levels,
                                   noise_to_level, sample_latents)
from ldm.inference.tiling import decode, decode_tiled

__all__ = [
    "PRECISIONS", "SAMPLER_NAMES", "ComposedModel", "GuideModel", "HighNoiseExpert", "InpaintResult", "RunFiles", "SamplingOptions", "UnsafePathError",
    "autocast", "check_experts", "check_multiple", "check_prompts", "check_range", "check_same_size", "class_conditioning",
    "decode", "decode_tiled", "downsampling_factor", "encode_image", "find_run", "generate", "img2img", "initial_noise",
    "inpaint", "latent_size", "layout_tokenizer", "layout_tokens", "read_layouts", "load_image", "load_label_map", "load_mask", "load_model",
    "load_run", "make_generator", "model_kind", "noise_levels", "noise_to_level", "prompt_conditioning", "safe_join", "safe_name",
    "sample_latents", "save_grid", "save_images", "save_npz", "seed_everything", "select_device",
    "semantic2img", "semantic_onehot", "superres", "to_uint8",
]
