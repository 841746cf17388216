#!/usr/bin/env python3
"""Image-to-image: noise an image's latent part of the way and denoise it (SDEdit),

The command ``ldm-img2img`` (``pip install -e .``) runs the same ``ldm.tasks.img2img.main``;
``--help`` lists the options.
"""
from ldm.tasks.img2img import main, parser  # noqa: F401

if __name__ == "__main__":
    main()
