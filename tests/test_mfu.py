"""Model FLOPs and MFU: the denoiser's FLOPs counted once from its real inputs, the MFU formula,
the peak table's lookup and what a CPU run logs."""
import types

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

from ldm import perf_flops
from ldm.config.errors import ConfigError
from ldm.trainer import callbacks as cbs
from ldm.trainer.callbacks import DeviceStatsCallback
from tests.test_latent_diffusion import batch, make


def fit(model, callback, steps=2, log_every=1):
    model.learning_rate = 1e-4
    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in batch(4).items()} for i in range(4)], batch_size=2)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         num_sanity_val_steps=1, log_every_n_steps=log_every, callbacks=[callback])
    trainer.fit(model, loader, loader)
    return trainer


def forward_flops(unet, n):
    """FlopCounterMode's count of one UNet forward on ``n`` samples of the class model's inputs."""
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(n, 4, 8, 8, generator=g), torch.randint(0, 100, (n,), generator=g)
    context = torch.randn(n, 1, 16, generator=g)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(x, t, context=context)
    return counter.get_total_flops()


def test_unet_flops_are_counted_once_from_its_inputs_and_cpu_logs_no_mfu():
    torch.manual_seed(0)
    model, callback = make("class"), DeviceStatsCallback()
    trainer = fit(model, callback)
    unet = model.model.diffusion_model
    one = forward_flops(unet, 1)
    assert one > 0 and forward_flops(unet, 2) == 2 * one  # linear in the batch: one sample suffices
    assert callback.flops_per_sample == 3 * one  # forward + backward, the UNet alone
    assert not unet._forward_pre_hooks  # counted once, then the hook is gone
    metrics = trainer.callback_metrics
    # CPU: no peak FLOP/s, so TFLOP/s but no MFU, in the epoch stats and on the progress bar.
    assert callback.peak_tflops is None
    assert float(metrics["stats/model_tflops_per_s"]) == pytest.approx(
        3 * one * float(metrics["stats/samples_per_s"]) / 1e12, rel=1e-6)
    assert "stats/mfu" not in metrics and "mfu" not in trainer.progress_bar_metrics
    assert "model_tflops_per_s" in trainer.progress_bar_metrics


def test_counting_keeps_the_random_state():
    unet = make("class").model.diffusion_model
    g = torch.Generator().manual_seed(2)
    args, kwargs = (torch.randn(3, 4, 8, 8, generator=g), torch.tensor([1, 5, 9])), {"context": torch.randn(3, 1, 16)}
    state = torch.get_rng_state()
    flops = perf_flops.training_flops_per_sample(unet, args, kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert flops == 3 * forward_flops(unet, 1)


def test_mfu_formula_with_an_override_peak():
    callback = DeviceStatsCallback(peak_tflops=100.0)
    callback.flops_per_sample = 3_000_000_000
    stats = callback.throughput(samples=1000, seconds=10.0)
    # 3 GFLOP x 100 samples/s = 0.3 TFLOP/s, of a 100 TFLOP/s peak
    assert stats == {"samples_per_s": 100.0, "model_tflops_per_s": 0.3, "mfu": 0.003}


class FakeClock:
    """Advances one second per reading: the callback's timings become exact."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_override_peak_gives_mfu_on_cpu_with_a_fake_clock(monkeypatch):
    monkeypatch.setattr(cbs, "time", types.SimpleNamespace(perf_counter=FakeClock().perf_counter))
    torch.manual_seed(0)
    model, callback = make("class"), DeviceStatsCallback(peak_tflops=2.0)
    trainer = fit(model, callback)
    flops = callback.flops_per_sample
    assert flops == 3 * forward_flops(model.model.diffusion_model, 1)
    # Clock readings: train start 1, epoch start 2, logging points after steps 1 and 2 (3, 4), epoch end 5.
    # Epoch: 4 samples in 3 s; the progress bar's last window: 2 samples in 1 s.
    metrics = trainer.callback_metrics
    assert float(metrics["stats/epoch_time_s"]) == 3.0
    assert float(metrics["stats/mfu"]) == pytest.approx(flops * 4 / 3 / 2e12, rel=1e-6)
    assert float(trainer.progress_bar_metrics["mfu"]) == pytest.approx(flops * 2 / 2e12, rel=1e-6)


@pytest.mark.parametrize("name, precision, tf32, expected", [
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", False, 989.5),
    ("NVIDIA H100 PCIe", "16-mixed", False, 756.0),
    ("NVIDIA H200", "32-true", True, 494.5),
    ("NVIDIA A100-SXM4-80GB", "32-true", False, 19.5),
    ("NVIDIA L4", "bf16-mixed", False, 121.0),
    ("Tesla V100-SXM2-16GB", "16-mixed", False, 125.0),
    ("Tesla V100-SXM2-16GB", "bf16-mixed", False, None),  # no bf16 units
    ("NVIDIA A10G", "bf16-mixed", False, None),  # not in the table: no MFU
    ("NVIDIA GeForce RTX 4090", "bf16-mixed", False, 165.2),
    ("NVIDIA A100-SXM4-80GB", "64-true", False, None),
])
def test_peak_table_lookup(monkeypatch, name, precision, tf32, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high" if tf32 else "highest")
    assert perf_flops.peak_tflops(torch.device("cuda", 0), precision) == expected
    assert perf_flops.peak_tflops(torch.device("cpu"), precision) is None


@pytest.mark.parametrize("bad", [0, -5.0, "fast", True])
def test_bad_peak_override_names_its_config_path(bad):
    with pytest.raises(ConfigError) as err:
        DeviceStatsCallback(peak_tflops=bad)
    assert err.value.path == "lightning.callbacks.device_stats.params.peak_tflops" and repr(bad) in str(err.value)
