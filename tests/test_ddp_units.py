"""Distributed-training pieces that need no second process: the rank-sharded epoch sampler, its
resume position, and strategies that cannot run on this machine."""
from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch

from ldm.config.errors import ConfigError
from ldm.data.resumable import EpochSampler, ResumableDataLoader, SeededItems
from ldm.trainer.trainer_config import normalise_trainer_config


class Noisy(torch.utils.data.Dataset):  # an augmentation drawing from the global RNG
    def __len__(self):
        return 11

    def __getitem__(self, i):
        return {"i": i, "noise": torch.rand(())}


def loader(world: int, rank: int, batch_size: int = 2) -> ResumableDataLoader:
    return ResumableDataLoader(SeededItems(Noisy()), batch_size=batch_size,
                               sampler=EpochSampler(11, True, seed=5, num_replicas=world, rank=rank))


def served(dl) -> dict[int, float]:
    return {int(i): float(n) for b in dl for i, n in zip(b["i"], b["noise"])}


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_epoch_without_overlap_and_together_match_one_process(world):
    single = served(loader(1, 0))
    shares = [served(loader(world, r)) for r in range(world)]
    assert all(len(s) == 11 // world for s in shares)  # equal shares: ranks run the same number of batches
    union = {}
    for s in shares:
        assert not set(s) & set(union)  # no example on two ranks
        union.update(s)
    # The ranks load the items (and draw the augmentations) the one process draws at those positions.
    assert all(single[i] == v for i, v in union.items())
    assert len(single) == 11 and len(union) == world * (11 // world)


def test_each_rank_resumes_mid_epoch_at_its_own_position():
    world = 2
    full = [served(loader(world, r)) for r in range(world)]
    state = None
    for r in range(world):
        dl = loader(world, r)
        dl.epoch_sampler.set_epoch(0)
        it = iter(dl)
        first = next(it)
        state = dl.state_dict()
        assert state == {"epoch": 0, "batches": 1, "world_size": 2}
        restored = loader(world, r)
        restored.load_state_dict(state)  # every rank gets rank 0's checkpoint: the same batch count
        rest = served(restored)
        assert set(rest) | {int(i) for i in first["i"]} == set(full[r])
    with pytest.raises(ValueError, match="saved by 2 process.*this run has 3"):
        loader(3, 0).load_state_dict(state)
    with pytest.raises(ValueError, match="same number of processes"):
        loader(1, 0).load_state_dict({"epoch": 0, "batches": 1, "world_size": 2})


def test_epoch_end_checkpoint_resumes_with_another_process_count():
    dl = loader(1, 0)
    dl.load_state_dict({"epoch": 0, "batches": 3, "world_size": 2})  # 5 items per rank, batches of 2: done
    assert (dl.epoch_sampler.epoch, dl.epoch_sampler.start) == (1, 0)


def test_invalid_share_is_refused():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        EpochSampler(4, True, seed=0, num_replicas=2, rank=2)


def opts(**kw):
    base = dict(gpus=None, accelerator=None, devices=None, num_nodes=None, strategy=None, precision=None,
                max_steps=None, max_epochs=None)
    return argparse.Namespace(**{**base, **kw})


def test_strategies_that_cannot_run_here_fail_at_start_up_naming_the_flag():
    with pytest.raises(ConfigError, match=r"--strategy.*'fsdp' needs GPUs.*--strategy ddp"):
        normalise_trainer_config({}, opts(accelerator="cpu", devices="2", strategy="fsdp"))
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="deepspeed package"):
            normalise_trainer_config({}, opts(strategy="deepspeed_stage_2"))
    cfg = normalise_trainer_config({}, opts(accelerator="cpu", devices="2", strategy="ddp", num_nodes=1))
    assert (cfg["strategy"], cfg["devices"], cfg["num_nodes"]) == ("ddp", 2, 1)


def test_fsdp_section_builds_a_block_wise_strategy_and_names_bad_entries():
    from pytorch_lightning.strategies import FSDPStrategy

    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.blocks import ResBlock
    from ldm.trainer.trainer_config import fsdp_strategy

    strategy = fsdp_strategy({"sharding_strategy": "SHARD_GRAD_OP", "activation_checkpointing": True}, "fsdp")
    assert isinstance(strategy, FSDPStrategy)
    wrapped = strategy.kwargs["auto_wrap_policy"]._module_classes  # torch's ModuleWrapPolicy
    assert ResBlock in wrapped and SpatialTransformer in wrapped
    assert str(strategy.sharding_strategy).endswith("SHARD_GRAD_OP") and strategy._state_dict_type == "full"
    assert strategy._activation_checkpointing_kwargs  # the same blocks are recomputed in the backward pass
    with pytest.raises(ConfigError, match=r"lightning.fsdp.*--strategy fsdp"):
        fsdp_strategy({}, "ddp")
    with pytest.raises(ConfigError, match=r"lightning.fsdp.wrap\[0\].*module class of this package"):
        fsdp_strategy({"wrap": ["os.system"]}, "fsdp")
    with pytest.raises(ConfigError, match=r"lightning.fsdp.wrap\[0\].*cannot find"):
        fsdp_strategy({"wrap": ["ldm.modules.attention.NoSuchBlock"]}, "fsdp")
    with pytest.raises(ConfigError, match=r"lightning.fsdp.wrap\[0\].*not a torch.nn.Module"):
        fsdp_strategy({"wrap": ["ldm.modules.attention.checkpoint"]}, "fsdp")
    with pytest.raises(ConfigError, match="lightning.fsdp.sharding_strategy"):
        fsdp_strategy({"sharding_strategy": "FULL"}, "fsdp")
    with pytest.raises(ConfigError, match="lightning.fsdp.wrapp"):
        fsdp_strategy({"wrapp": []}, "fsdp")


def test_models_with_alternating_optimizers_get_unused_parameter_detection_under_ddp():
    from ldm.trainer.run import expect_unused_parameters

    assert expect_unused_parameters({"strategy": "ddp", "devices": 2}) == "ddp_find_unused_parameters_true"
    assert expect_unused_parameters({"strategy": "ddp_spawn"}) == "ddp_spawn_find_unused_parameters_true"
    assert expect_unused_parameters({"accelerator": "cpu", "devices": 2}) == "ddp_find_unused_parameters_true"
    assert expect_unused_parameters({"accelerator": "cpu", "devices": 1}) is None  # one process: untouched
    assert expect_unused_parameters({"strategy": "fsdp", "devices": 2}) == "fsdp"


def test_a_non_finite_step_on_one_rank_is_skipped_on_all():
    from types import SimpleNamespace

    from ldm.trainer.nonfinite import NonFiniteGuard

    class Strategy:  # stands in for the process group: another rank saw a non-finite loss
        def reduce_boolean_decision(self, decision, all=True):
            assert all is False  # "any rank", not "every rank"
            return True

    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)  # finite here
    optimizer = torch.optim.SGD([param], lr=0.1)
    trainer = SimpleNamespace(world_size=2, strategy=Strategy(), optimizers=[optimizer], precision_plugin=None)
    guard = NonFiniteGuard(ckptdir="unused")
    guard.skipping = False
    guard.on_before_optimizer_step(trainer, None, optimizer)
    assert guard.skipping and param.grad is None  # this rank drops its update too
