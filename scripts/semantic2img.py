#!/usr/bin/env python3
"""Semantic synthesis (paper Sec. 4.3.2): images from segmentation maps with a LDM whose

The command ``ldm-semantic2img`` (``pip install -e .``) runs the same ``ldm.tasks.semantic2img.main``;
``--help`` lists the options.
"""
from ldm.tasks.semantic2img import main, parser  # noqa: F401

if __name__ == "__main__":
    main()
