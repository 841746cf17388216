"""Non-finite steps: NaN losses and inf gradients injected at chosen steps are skipped (nothing the
update would change changes), counted in the logs, and too many in a row stop the run with a
checkpoint that resumes. Kills and preemption signals are in test_exact_resume.py.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.fault_injection import RecordAround
from tests.test_exact_resume import STEPS, resume, the_run, train


def inject(kind: str, steps: list[int]) -> list[str]:
    target = {"nan_loss": "tests.fault_injection.PoisonBatches", "inf_grad": "tests.fault_injection.InfGradient"}[kind]
    return [f"lightning.callbacks.fault.target={target}",
            f"lightning.callbacks.fault.params.steps=[{','.join(map(str, steps))}]"]


def record(steps: list[int]) -> list[str]:
    return ["lightning.callbacks.record.target=tests.fault_injection.RecordAround",
            f"lightning.callbacks.record.params.steps=[{','.join(map(str, steps))}]"]


def changed(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def logged(rundir: Path, column: str) -> list[float]:
    with open(rundir / "csv" / "metrics.csv") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


@pytest.mark.slow
@pytest.mark.parametrize("model, fault, bad, good", [
    ("ldm", "nan_loss", [3, 6], 4),
    ("ldm", "inf_grad", [5], 4),
    ("autoencoder", "nan_loss", [4], 6),   # two optimizer steps per batch: generator and discriminator
])
def test_nonfinite_steps_are_skipped_and_counted(model, fault, bad, good, tmp_path):
    RecordAround.instances.clear()
    assert train(model, tmp_path, *inject(fault, bad), *record([*bad, good])) == 0
    (rec,) = RecordAround.instances
    for step in bad:  # weights, EMA, batch-norm statistics and optimizer moments as before the batch
        assert not changed(rec.before[step], rec.after[step]), step
    assert changed(rec.before[good], rec.after[good])  # a good batch does change them
    rundir = the_run(tmp_path)
    assert torch.load(rundir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS
    assert logged(rundir, "train/nonfinite_skipped")[-1] == len(bad)
    assert all(torch.isfinite(v).all() for k, v in
               torch.load(rundir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].items()
               if v.is_floating_point())


@pytest.mark.slow
def test_too_many_nonfinite_steps_in_a_row_stop_with_a_checkpoint_that_resumes(tmp_path, capsys):
    RecordAround.instances.clear()
    code = train("ldm", tmp_path, *inject("nan_loss", list(range(4, STEPS))), *record([4]),
                 "lightning.callbacks.nonfinite_guard.params.max_consecutive=3")
    assert code == 3
    rundir = the_run(tmp_path)
    last = rundir / "checkpoints" / "last.ckpt"
    err = capsys.readouterr().err
    assert ("Stopping at step 7: 3 consecutive batches had a non-finite loss or gradients (max_consecutive=3, "
            "set with lightning.callbacks.nonfinite_guard.params.max_consecutive). "
            f"The last good state is saved in {last}") in err
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 7
    before = RecordAround.instances[0].before[4]
    assert not changed({k: v for k, v in before.items() if k.startswith("model.")},
                       {f"model.{k}": v for k, v in state["state_dict"].items()})
    # With the cause removed, the run continues from there to the end.
    assert resume(rundir, "lightning.callbacks.fault=null") == 0
    assert torch.load(last, weights_only=True)["global_step"] == STEPS
