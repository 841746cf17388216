#!/usr/bin/env python3
"""Text-to-image with a text-conditioned LDM (paper Sec. 4.3.1), with classifier-free guidance.

The command ``ldm-txt2img`` (``pip install -e .``) runs the same ``ldm.tasks.txt2img.main``;
``--help`` lists the options.
"""
from ldm.tasks.txt2img import main, parser  # noqa: F401

if __name__ == "__main__":
    main()
