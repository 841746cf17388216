"""LPIPS perceptual distance (Zhang et al. 2018, paper ref. [102]) in the taming / LDM layout.

Network and linear-layer weights come from the `lpips` package; the state-dict keys are those of
training checkpoints (`scaling_layer.*`, `net.slice{1..5}.*`, `lin{0..4}.model.1.weight`).

The VGG16 trunk needs torchvision's ImageNet weights, which are a download. So the architecture is
built eagerly (any config instantiates offline) and the trunk weights are loaded lazily on the
first forward pass, unless a loaded state dict already supplied them.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import lpips as lpips_pkg
import torch
from lpips import NetLinLayer, ScalingLayer, normalize_tensor
from lpips.lpips import spatial_average
from lpips.pretrained_networks import vgg16
from torch import nn

__all__ = ["LPIPS", "VGG16_FILENAME", "VGG16_URL", "vgg16_cache_path"]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
CHANNELS = (64, 128, 256, 512, 512)
# torchvision `features.{i}` index -> LPIPS slice holding it (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
_SLICE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def vgg16_cache_path() -> str:
    """Where torch looks for the VGG16 weights before downloading them."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILENAME)


def _missing_weights_message(cause: BaseException | None) -> str:
    return (
        f"LPIPS needs the ImageNet VGG16 weights, which are not cached at {vgg16_cache_path()} and could not "
        f"be downloaded ({type(cause).__name__ if cause else 'offline'}: {cause}). Either copy "
        f"{VGG16_FILENAME} (from {VGG16_URL}) to that path (or set TORCH_HOME so that "
        "torch.hub.get_dir()/checkpoints holds it), or set `perceptual_weight: 0` in the lossconfig to "
        "train without the perceptual loss."
    )


def _torchvision_to_slices(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for s, (lo, hi) in enumerate(_SLICE_BOUNDS, start=1):
        for i in range(lo, hi):
            for p in ("weight", "bias"):
                if f"features.{i}.{p}" in sd:
                    out[f"slice{s}.{i}.{p}"] = sd[f"features.{i}.{p}"]
    return out


def _random_vgg16_trunk() -> vgg16:
    """The lpips package's VGG16 feature slices, randomly initialised as torchvision does.

    torchvision also builds the 120M-parameter classifier head, which LPIPS discards; building
    on the meta device and materialising only the trunk avoids that cost.
    """
    target = torch.empty(0).device  # honours an enclosing `with torch.device(...)`
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated `pretrained`
        net = vgg16(pretrained=False, requires_grad=False)
    net = net.to_empty(device=target)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


class LPIPS(nn.Module):
    """d(x, y) = sum_l mean_hw || w_l * (phi_l(x)/|phi_l(x)| - phi_l(y)/|phi_l(y)|) ||^2 for x, y in [-1, 1].

    Returns (B, 1, 1, 1). All parameters are frozen. ``pretrained=False`` keeps a RANDOM VGG trunk
    (for tests and offline smoke runs only; the distance is then not perceptual).
    """

    def __init__(
        self,
        use_dropout: bool = True,  # dropout before the linear heads (as trained)
        pretrained: bool = True,   # load ImageNet VGG16 trunk weights on first use
    ):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.chns = list(CHANNELS)
        self.net = _random_vgg16_trunk()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (
            NetLinLayer(c, use_dropout=use_dropout) for c in CHANNELS)
        self._load_linear_heads(use_dropout)
        for p in self.parameters():
            p.requires_grad = False
        self.pretrained = pretrained
        self._trunk_ready = False
        if not pretrained:
            warnings.warn("LPIPS built with pretrained=False: the VGG16 trunk stays RANDOM, so the "
                          "perceptual loss is not meaningful (use only for tests).", stacklevel=2)
        self.register_load_state_dict_pre_hook(self._trunk_from_state_dict)

    def _load_linear_heads(self, use_dropout: bool) -> None:
        path = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1", "vgg.pth")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if not use_dropout:
            sd = {k.replace("model.1.", "model.0."): v for k, v in sd.items()}
        for i in range(len(CHANNELS)):
            lin = getattr(self, f"lin{i}")
            lin.load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(f"lin{i}.")})

    @staticmethod
    def _trunk_from_state_dict(module: "LPIPS", state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A state dict that carries the whole trunk (e.g. a training checkpoint) makes the download moot.
        if all(f"{prefix}net.{k}" in state_dict for k in module.net.state_dict()):
            module._trunk_ready = True

    def load_trunk(self) -> None:
        """Load the ImageNet VGG16 trunk from the torch hub cache, downloading it if possible."""
        path = vgg16_cache_path()
        try:
            if os.path.isfile(path):
                sd = torch.load(path, map_location="cpu", weights_only=True)
            else:
                sd = torch.hub.load_state_dict_from_url(VGG16_URL, map_location="cpu", progress=False,
                                                        weights_only=True)
        except Exception as exc:  # no network, proxy refusal, corrupt file: all mean "no weights"
            raise RuntimeError(_missing_weights_message(exc)) from exc
        self.net.load_state_dict(_torchvision_to_slices(sd))
        self._trunk_ready = True

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.pretrained and not self._trunk_ready:
            self.load_trunk()
        feats0 = self.net(self.scaling_layer(input))
        feats1 = self.net(self.scaling_layer(target))
        val = 0.0
        for i, (f0, f1) in enumerate(zip(feats0, feats1)):
            diff = (normalize_tensor(f0) - normalize_tensor(f1)) ** 2
            val = val + spatial_average(getattr(self, f"lin{i}").model(diff), keepdim=True)
        return val
