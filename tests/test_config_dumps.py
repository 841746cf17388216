"""Every invocation of a run keeps its own config record, even within the same second."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ldm.trainer.checkpoint_io import AtomicCheckpointIO
from ldm.trainer.rundir import config_order, resume_run, write_configs

NOW = "2026-01-01T00-00-00"


def dump(cfgdir: Path, lr: float, now: str = NOW) -> tuple[Path, Path]:
    return write_configs(cfgdir, now, OmegaConf.create({"model": {"base_learning_rate": lr}}),
                         OmegaConf.create({"trainer": {"max_steps": int(lr * 100)}}))


def test_invocations_in_the_same_second_never_overwrite_each_other(tmp_path):
    cfgdir = tmp_path / "configs"
    first = dump(cfgdir, 0.01)
    recorded = [p.read_bytes() for p in first]
    second = dump(cfgdir, 0.02)
    third = dump(cfgdir, 0.03)
    assert [p.name for p in first] == [f"{NOW}-project.yaml", f"{NOW}-lightning.yaml"]
    assert [p.name for p in second] == [f"{NOW}.1-project.yaml", f"{NOW}.1-lightning.yaml"]
    assert [p.name for p in third] == [f"{NOW}.2-project.yaml", f"{NOW}.2-lightning.yaml"]
    assert [p.read_bytes() for p in first] == recorded
    assert len(list(cfgdir.iterdir())) == 6
    assert OmegaConf.load(third[0]).model.base_learning_rate == 0.03
    assert OmegaConf.load(second[1]).lightning.trainer.max_steps == 2


def test_a_half_taken_name_moves_both_files_on(tmp_path):
    cfgdir = tmp_path / "configs"
    cfgdir.mkdir()
    (cfgdir / f"{NOW}-lightning.yaml").write_text("lightning: {}\n")
    paths = dump(cfgdir, 0.5)
    assert [p.name for p in paths] == [f"{NOW}.1-project.yaml", f"{NOW}.1-lightning.yaml"]
    assert sorted(p.name for p in cfgdir.iterdir()) == [f"{NOW}-lightning.yaml", f"{NOW}.1-lightning.yaml",
                                                          f"{NOW}.1-project.yaml"]


def test_resume_merges_saved_configs_in_invocation_order(tmp_path):
    run_dir = tmp_path / "run"
    cfgdir = run_dir / "configs"
    for lr in [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11]:
        dump(cfgdir, lr)  # 11 invocations in one second: .1 ... .10 must sort numerically
    dump(cfgdir, 0.5, now="2026-01-01T00-00-01")
    (run_dir / "checkpoints").mkdir()
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "optimizer_states": [], "state_dict": {}},
                                         run_dir / "checkpoints" / "last.ckpt")
    resumed = resume_run(str(run_dir), [], now=NOW)
    names = [p.name for p in resumed.base_configs]
    assert names[:4] == [f"{NOW}-lightning.yaml", f"{NOW}-project.yaml", f"{NOW}.1-lightning.yaml",
                         f"{NOW}.1-project.yaml"]
    assert names[-4:-2] == [f"{NOW}.10-lightning.yaml", f"{NOW}.10-project.yaml"]
    assert names[-1] == "2026-01-01T00-00-01-project.yaml"
    assert sorted(resumed.base_configs, key=config_order) == resumed.base_configs
    merged = OmegaConf.merge(*[OmegaConf.load(p) for p in resumed.base_configs])
    assert merged.model.base_learning_rate == 0.5


def test_sampling_reads_a_run_configs_in_invocation_order(tmp_path):
    from ldm.inference.loading import find_run

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    names = ["2026-01-01T00-00-00-project.yaml", "2026-01-01T00-00-00.2-project.yaml",
             "2026-01-01T00-00-00.10-project.yaml", "2026-01-01T00-00-01-project.yaml"]
    for name in names:
        (run / "configs").mkdir(exist_ok=True)
        (run / "configs" / name).write_text("model: {}\n")
    # by name, ".10" would sort before ".2": the tenth invocation's overrides would be merged too early
    assert [p.name for p in find_run(run).configs] == names
