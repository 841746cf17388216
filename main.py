"""Train or test latent diffusion models and their autoencoders from YAML configs.

    python main.py --base configs/ldm/celebahq-ldm-vq-4.yaml -t --gpus 0,1
    python main.py --help

The logic lives in ldm.trainer; configs that name `main.DataModuleFromConfig` or `main.ImageLogger`
(as the original ones do) resolve to ldm.data.base and ldm.trainer.callbacks.
"""
import sys

from ldm.trainer.run import main

if __name__ == "__main__":
    sys.exit(main())
