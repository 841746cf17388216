"""The sampling tasks as command-line programs (paper Sec. 4: unconditional/class samples, text-to-image,
img2img, inpainting, super-resolution, semantic synthesis, layout-to-image).

Each module has ``parser()`` and ``main(argv)``; setup.py installs them as ``ldm-<task>`` commands
and ``scripts/<task>.py`` runs the same ``main``. The shared set-up (model, kind check, outputs,
seed, default scale and eta) is ``ldm.inference.cli.start_task``.
"""
