#!/usr/bin/env python3
"""Layout-to-image (paper Sec. 4.3.1): images from bounding boxes, encoded as tokens and attended

The command ``ldm-layout2img`` (``pip install -e .``) runs the same ``ldm.tasks.layout2img.main``;
``--help`` lists the options.
"""
from ldm.tasks.layout2img import main, parser  # noqa: F401

if __name__ == "__main__":
    main()
