from setuptools import find_packages, setup

setup(
    name="ldm",
    version="0.1.0",
    description="Latent Diffusion Models: training, sampling and evaluation on modern PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["ldm", "ldm.*"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "pytorch-lightning>=2.4,<3",
        "omegaconf>=2.3",
        "einops>=0.7",
        "transformers>=4.40",
        "torchmetrics>=1.3",
        "lpips>=0.1.4",
        "pillow>=10.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        # The standard FID Inception network (ported bit-exactly from TensorFlow) for FID/KID/IS.
        "torch-fidelity>=0.3",
    ],
    entry_points={
        "console_scripts": [
            f"ldm-{name.replace('_', '-')}=ldm.tasks.{name}:main"
            for name in ("sample_diffusion", "txt2img", "img2img", "inpaint", "superres", "semantic2img", "layout2img")
        ],
    },
    extras_require={
        "wandb": ["wandb>=0.16"],
        # Export to / import from the diffusers format and upload to the Hub (scripts/convert_*_diffusers.py).
        "diffusers": ["diffusers>=0.30", "huggingface_hub>=0.20"],
        "test": ["pytest>=8", "diffusers>=0.30", "hypothesis>=6.100", "scikit-image>=0.22"],
    },
)
