#!/usr/bin/env python3
"""Unconditional or class-conditional samples in bulk from a trained LDM (paper Sec. 4.1, 4.3.1).

The command ``ldm-sample-diffusion`` (``pip install -e .``) runs the same ``ldm.tasks.sample_diffusion.main``;
``--help`` lists the options.
"""
from ldm.tasks.sample_diffusion import main, parser  # noqa: F401

if __name__ == "__main__":
    main()
