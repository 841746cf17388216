"""Model FLOPs and model FLOP utilisation (MFU) of denoiser training.

MFU = achieved model FLOP/s / the device's peak FLOP/s for the run's precision (the PaLM paper's
definition, Chowdhery et al. 2022, App. B). The model FLOPs are counted once, from the denoiser's
real inputs, with ``torch.utils.flop_counter.FlopCounterMode``; training costs forward + backward
= 3 x forward (the backward computes gradients for both activations and weights).
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PEAK_TFLOPS", "count_training_flops", "mfu", "peak_tflops", "precision_kind",
           "training_flops_per_sample"]

# Peak dense TFLOP/s per GPU from NVIDIA's data sheets: (bf16 tensor core, fp16 tensor core,
# tf32 tensor core, fp32 CUDA cores). The data sheets print the tensor-core figures "with
# sparsity"; these are half of those (dense). None: the GPU has no such unit (V100/T4: no bf16,
# no tf32). First matching name wins (the GPU name as ``torch.cuda.get_device_name`` reports it),
# so the PCIe/NVL variants come before the SXM entry of the same chip.
PEAK_TFLOPS: tuple[tuple[str, tuple[Optional[float], Optional[float], Optional[float], float]], ...] = (
    (r"H200.*NVL", (835.0, 835.0, 417.5, 60.0)),      # H200 NVL data sheet
    (r"H200", (989.5, 989.5, 494.5, 67.0)),           # H200 SXM data sheet
    (r"H100.*NVL", (835.0, 835.0, 417.5, 60.0)),      # H100 NVL data sheet
    (r"H100.*PCIe", (756.0, 756.0, 378.0, 51.0)),     # H100 PCIe data sheet
    (r"H100", (989.5, 989.5, 494.5, 67.0)),           # H100 SXM data sheet
    (r"A100", (312.0, 312.0, 156.0, 19.5)),           # A100 data sheet (SXM and PCIe, 40/80 GB)
    (r"L40S", (362.05, 362.05, 183.0, 91.6)),         # L40S data sheet
    (r"\bL4\b", (121.0, 121.0, 60.0, 30.3)),          # L4 data sheet
    (r"\bA40\b", (149.7, 149.7, 74.8, 37.4)),         # A40 data sheet
    (r"\bA10\b", (125.0, 125.0, 62.5, 31.2)),         # A10 data sheet (not the A10G, a different part)
    (r"V100S", (None, 130.0, None, 16.4)),            # V100S data sheet: fp16 tensor cores only
    (r"V100.*PCIE", (None, 112.0, None, 14.0)),       # V100 PCIe data sheet
    (r"V100", (None, 125.0, None, 15.7)),             # V100 SXM2 data sheet
    (r"RTX 4090", (165.2, 165.2, 82.6, 82.6)),        # Ada (AD102) whitepaper: fp32 accumulate
    (r"\bT4\b", (None, 65.0, None, 8.1)),             # T4 data sheet: fp16 mixed precision
)

_COLUMNS = ("bf16", "fp16", "tf32", "fp32")


def precision_kind(precision: str) -> str:
    """The peak-table column of a Lightning ``precision``: "bf16" or "fp16" (mixed or true), "tf32"
    for float32 with TF32 matmuls allowed (:func:`ldm.perf.enable_tf32`), "fp32" for float32
    without, "other" for anything else (float64)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("32"):
        # allow_tf32 = True (enable_tf32) shows here as "high"
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return "other"


def peak_tflops(device: torch.device, precision: str) -> Optional[float]:
    """The device's peak dense TFLOP/s for ``precision`` from :data:`PEAK_TFLOPS`, or None for
    CPUs, other accelerators, unlisted GPUs and precisions the GPU has no unit for."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    kind = precision_kind(precision)
    if kind not in _COLUMNS:
        return None
    column = _COLUMNS.index(kind)
    for pattern, figures in PEAK_TFLOPS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return figures[column]
    return None


def count_training_flops(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> int:
    """3 x the forward FLOPs of ``module(*args, **kwargs)`` as FlopCounterMode counts them
    (matmuls, convolutions, attention; elementwise work is not counted). Runs without autograd
    and calls ``module.forward`` directly, so a ``torch.compile``d module is counted uncompiled."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.forward(*args, **kwargs)
    return 3 * counter.get_total_flops()


def _first_sample(value: Any, batch_size: int) -> Any:
    """``value`` cut to its first sample where it is a batch of ``batch_size`` (tensors, lists)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch_size:
        return value[:1].detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_first_sample(v, batch_size) for v in value)
    if isinstance(value, dict):
        return {k: _first_sample(v, batch_size) for k, v in value.items()}
    return value


def training_flops_per_sample(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> int:
    """Training FLOPs per sample of ``module`` on a batch ``(args, kwargs)``: counted on its first
    sample only (every layer of the UNet is linear in the batch size). The RNG state is kept, so a
    seeded run draws the same numbers with or without the count (dropout would draw otherwise)."""
    batch_size = args[0].shape[0]
    args, kwargs = _first_sample(args, batch_size), _first_sample(kwargs, batch_size)
    device = args[0].device
    with torch.random.fork_rng(devices=[device] if device.type != "cpu" else [],
                               device_type=device.type if device.type != "cpu" else "cuda"):
        return count_training_flops(module, args, kwargs)


def mfu(flops_per_sample: float, samples_per_s: float, peak_tflops: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s over the peak FLOP/s, both per device."""
    return flops_per_sample * samples_per_s / (peak_tflops * 1e12)
