"""ldm: Latent Diffusion Models (Rombach et al., CVPR 2022) — training, sampling and evaluation."""

__version__ = "0.1.0"
