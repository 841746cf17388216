"""scripts/benchmark.py's whole-run latent-cache row trains the demo class config at the latent size
its first stage gives (the config's downsampling factor, not a fixed one)."""
import argparse
import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("benchmark_script", REPO / "scripts" / "benchmark.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_latent_cache_commands_follow_the_demo_first_stage(tmp_path):
    assert bench.demo_class_factor() == 2  # configs/demo: an f=2 autoencoder, ch_mult [1, 1]
    args = argparse.Namespace(run_image_size=64, run_steps=10)
    cache, fly, cached = bench.latent_cache_commands(args, tmp_path, torch.device("cpu"))
    for cmd in (cache, fly):
        assert "model.params.image_size=32" in cmd and "model.params.unet_config.params.image_size=32" in cmd
        assert "data.params.train.params.length=160" in cmd
    assert cache[1] == "scripts/cache_latents.py" and cache[-2:] == ["--out", str(tmp_path / "cache")]
    assert cached == fly + ["--latent-cache", str(tmp_path / "cache")]
