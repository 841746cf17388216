"""scripts/reproduce.py: the registry of the paper's rows, the report of what a row is missing
(with the commands that fetch or prepare it), and one row run end to end through the FID
Inception path (a random network in the standard weight-file format) on a tiny checkpoint."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.test_eval_inception import random_inception_weights
from tests.test_inference import write_run
from tests.test_scripts import script

import ldm.eval as E
from ldm.eval.registry import ROWS, PaperRow, find_row

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    return script("reproduce")


def test_registry_rows_point_at_existing_configs_and_hold_the_papers_figures():
    assert len({r.key for r in ROWS}) == len(ROWS)
    for r in ROWS:
        assert (REPO / r.config).is_file(), r.config
        assert (REPO / (r.data or r.config)).is_file()
        assert set(r.paper) <= {"fid", "kid_mean", "isc_mean", "isc_std", "precision", "recall", "psnr", "psnr_std",
                                "ssim", "ssim_std", "lpips", "lpips_std"}
        assert r.released == ("<" not in r.checkpoint)
    assert find_row("tab1-celebahq-ldm4").paper == {"fid": 5.11, "precision": 0.72, "recall": 0.49}
    assert find_row("tab1-celebahq-ldm4").steps == 500
    g = find_row("tab3-cin-ldm4-g")
    assert (g.scale, g.steps, g.paper["fid"], g.paper["isc_mean"]) == (1.5, 250, 3.60, 247.67)
    assert find_row("tab7-big-ft-hard").mask_kind == "hard"
    assert find_row("tab7-big-ft-all").paper == {"fid": 1.50, "lpips": 0.137, "lpips_std": 0.080}
    with pytest.raises(KeyError, match="--list"):
        find_row("tab9")


def test_list_shows_every_row(reproduce, capsys):
    reproduce.main(["--list"])
    out = capsys.readouterr().out
    for r in ROWS:
        assert r.key in out
    assert "fid 2.95, precision 0.66, recall 0.48" in out and "(not released: train sr-imagenet-ldm-vq-4.yaml)" in out


def test_a_row_without_its_inputs_says_what_is_missing_and_how_to_get_it(reproduce, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(E.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as err:
        reproduce.main(["tab4-sr-ldm4"])
    message = str(err.value)
    assert "checkpoint: no released checkpoint" in message and "main.py --base configs/ldm/sr-imagenet" in message
    assert "then pass --ckpt" in message
    assert f"dataset: ImageNetSRValidation: expected '{tmp_path / 'data'}" in message  # the dataset's own message
    monkeypatch.chdir(tmp_path)  # no models/, data/ here
    row = find_row("tab1-celebahq-ldm4")
    monkeypatch.setattr(reproduce, "find_row", lambda key: dataclasses.replace(
        row, config=str(REPO / row.config)))
    with pytest.raises(SystemExit) as err:
        reproduce.main(["tab1-celebahq-ldm4"])
    message = str(err.value)
    assert "`bash scripts/download_models.sh celeba256`" in message
    assert E.INCEPTION_FILENAME in message and E.INCEPTION_URL in message
    assert "FID reference data/eval/celebahq256: not found" in message


def test_a_row_runs_and_prints_ours_beside_the_papers(reproduce, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDM_STATS_CACHE", str(tmp_path / "stats"))
    weights, _ = random_inception_weights(tmp_path)
    run, _ = write_run(tmp_path / "logs", "uncond")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "real.npz", arr_0=rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    row = PaperRow(key="tiny", table="Tab. 1", row="tiny LDM", config=str(next((run / "configs").glob(
        "*-project.yaml"))), checkpoint=str(run / "checkpoints" / "last.ckpt"), released=True, task="samples",
        metrics=("fid",), paper={"fid": 5.11}, dataset="tiny", steps=2, n_samples=2, real=str(tmp_path / "real.npz"))
    monkeypatch.setattr(reproduce, "find_row", lambda key: row)
    results = reproduce.main(["tiny", "--inception-weights", str(weights), "--device", "cpu", "--no-progress",
                              "--fid-features", "64", "--outdir", str(tmp_path / "out"), "--batch_size", "2"])
    out = capsys.readouterr().out
    assert results["feature_extractor"] == "inception-v3-compat-64" and np.isfinite(results["fid"])
    assert f"FID        {results['fid']:>12.4f}          5.11" in out
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 1  # the reference statistics, cached
    assert sum(len(np.load(f)["indices"]) for f in (tmp_path / "out" / "shards").glob("shard-*.npz")) == 2
