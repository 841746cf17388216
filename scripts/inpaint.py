#!/usr/bin/env python3
"""Inpainting (paper Sec. 4.5): fill the white region of a mask, keeping the rest of the image.

The command ``ldm-inpaint`` (``pip install -e .``) runs the same ``ldm.tasks.inpaint.main``;
``--help`` lists the options.
"""
from ldm.tasks.inpaint import main, parser  # noqa: F401

if __name__ == "__main__":
    main()
