"""PatchGAN discriminator of the first-stage adversarial objective (paper Sec. 3.1, [32]).

Each output logit judges one overlapping image patch, which "enforces local realism". The layer
layout is kept as `main.{i}` so discriminator weights of taming / LDM training checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ActNorm", "NLayerDiscriminator", "weights_init"]


def weights_init(m: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02), biases 0."""
    name = m.__class__.__name__
    if "Conv" in name:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0.0)


class ActNorm(nn.Module):
    """Per-channel affine layer whose loc/scale are initialised from the first training batch
    (Glow, Kingma & Dhariwal 2018) so activations start at zero mean and unit variance."""

    def __init__(
        self,
        num_features: int,
        logdet: bool = False,               # also return log|det J| of the affine map
        affine: bool = True,
        allow_reverse_init: bool = False,   # allow data-dependent init from the reverse direction
    ):
        if not affine:
            raise ValueError("ActNorm supports affine=True only")
        super().__init__()
        self.logdet = logdet
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.allow_reverse_init = allow_reverse_init
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean = flat.mean(1).view(1, -1, 1, 1)
        std = flat.std(1).view(1, -1, 1, 1)
        self.loc.data.copy_(-mean)
        self.scale.data.copy_(1.0 / (std + 1e-6))

    def forward(self, x: torch.Tensor, reverse: bool = False):
        if reverse:
            return self.reverse(x)
        squeeze = x.ndim == 2
        if squeeze:
            x = x[:, :, None, None]
        if self.training and self.initialized.item() == 0:
            self.initialize(x)
            self.initialized.fill_(1)
        h = self.scale * (x + self.loc)
        if squeeze:
            h = h[:, :, 0, 0]
        if self.logdet:
            height, width = x.shape[2], x.shape[3]
            logdet = height * width * torch.sum(torch.log(torch.abs(self.scale)))
            return h, logdet * torch.ones(x.shape[0], device=x.device)
        return h

    def reverse(self, output: torch.Tensor) -> torch.Tensor:
        if self.training and self.initialized.item() == 0:
            if not self.allow_reverse_init:
                raise RuntimeError("ActNorm is uninitialised: run it forward in training mode first, "
                                   "or construct it with allow_reverse_init=True")
            self.initialize(output)
            self.initialized.fill_(1)
        squeeze = output.ndim == 2
        if squeeze:
            output = output[:, :, None, None]
        h = output / self.scale - self.loc
        return h[:, :, 0, 0] if squeeze else h


class NLayerDiscriminator(nn.Module):
    """PatchGAN (pix2pix, Isola et al. 2017): n_layers stride-2 4x4 convs, one stride-1 conv, then
    a 1-channel conv of patch logits. For 256 px input and n_layers=3 each logit sees 70x70 px."""

    def __init__(
        self,
        input_nc: int = 3,          # channels of the judged image (plus condition, if any)
        ndf: int = 64,              # filters in the first conv
        n_layers: int = 3,          # number of stride-2 convs
        use_actnorm: bool = False,  # ActNorm instead of BatchNorm
    ):
        super().__init__()
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        use_bias = use_actnorm  # BatchNorm has its own shift, so the conv before it has no bias
        kw, padw = 4, 1
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
                                   nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                       norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
                   norm_layer(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
