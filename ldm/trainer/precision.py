"""The training precision a CPU runs fastest: bf16 autocast where the CPU has bf16 instructions.

With AVX512-BF16 or AMX, Lightning's ``bf16-mixed`` (fp32 weights, gradients and optimiser state;
convolutions and matmuls in bf16 under autocast) trains the demo's UNets about 1.3x faster than fp32.
Without them oneDNN emulates bf16 and the same step is slower than fp32 (docs/reproduction.md,
"Demo, twentieth round"), so ``auto`` keeps fp32 there.
"""
from __future__ import annotations

from typing import Optional

PRECISION_CHOICES = ("auto", "32", "bf16-mixed")
# the sampling scripts' --precision (autocast) for a model trained in each: the numerics it learnt under
SAMPLING_PRECISION = {"32": "fp32", "bf16-mixed": "bf16"}

# torch.cpu's probes of the CPU's instruction sets (private, hence looked up, not imported)
_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX tiles)."""
    import torch  # here, so that choosing a precision other than auto does not load torch

    for name in _BF16_PROBES:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # a build without the probe's backend
            continue
    return False


def cpu_training_precision(choice: str = "auto", native_bf16: Optional[bool] = None) -> str:
    """The Lightning ``precision`` for CPU training: ``choice`` itself, or for ``auto`` ``bf16-mixed``
    when the CPU has native bf16 (``native_bf16``, probed when None) and ``32`` otherwise."""
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    return "bf16-mixed" if native else "32"
