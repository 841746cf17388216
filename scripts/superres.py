#!/usr/bin/env python3
"""Super-resolution (paper Sec. 4.4): upscale images with a concat-conditioned LDM-SR / LDM-BSR.

The command ``ldm-superres`` (``pip install -e .``) runs the same ``ldm.tasks.superres.main``;
``--help`` lists the options.
"""
from ldm.tasks.superres import main, parser  # noqa: F401

if __name__ == "__main__":
    main()
