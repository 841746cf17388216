"""A folder with many bad files: every readable image is served exactly once per epoch, none twice,
and the bad ones are counted and named."""
from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from ldm.data.base import DataModuleFromConfig, collate_examples
from ldm.data.folder import ImageFolder
from ldm.data.skipping import BadImageWarning


def _png(rng: np.random.Generator, side: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rng: np.random.Generator, side: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def mostly_bad_folder(root: Path) -> tuple[list[str], list[str]]:
    """(good names, bad names): bad files cluster in runs, so a replacement scheme would repeat
    the good file after each run several times."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    good, bad = [], []
    for k in range(10):
        name = f"{k:02d}_a_good.png"
        (root / name).write_bytes(_png(rng))
        good.append(name)
        if k % 2 == 0:
            for kind, data in (("b_truncated.png", _png(rng)[:60]), ("c_empty.jpg", b""),
                               ("d_noise.jpg", rng.integers(0, 256, 300, dtype=np.uint8).tobytes()),
                               ("e_truncated.jpg", _jpeg(rng)[:100])):
                (root / f"{k:02d}_{kind}").write_bytes(data)
                bad.append(f"{k:02d}_{kind}")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(root / "99_tiny.png")
    bad.append("99_tiny.png")
    return good, bad


def served(loader) -> Counter:
    counts: Counter = Counter()
    for batch in loader:
        if batch is None:  # a batch of bad files only: Lightning skips it
            continue
        assert len(batch["relpath"]) == batch["image"].shape[0]
        counts.update(batch["relpath"])
    return counts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_readable_image_exactly_once_per_epoch(tmp_path, num_workers):
    good, bad = mostly_bad_folder(tmp_path / "data")
    ds = ImageFolder(str(tmp_path / "data"), size=8, min_size=8)
    assert len(ds) == len(good) + len(bad) == 31
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=num_workers, collate_fn=collate_examples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        for _ in range(2):  # two epochs: the second, with bad files already known, is the same
            assert served(loader) == Counter({name: 1 for name in good})
    if num_workers == 0:
        assert sorted(Path(p).name for p in ds.skipped) == sorted(bad)
        assert "too small" in ds.skipped[str(tmp_path / "data" / "99_tiny.png")]


def test_datamodule_training_loader_serves_each_readable_image_once(tmp_path):
    good, bad = mostly_bad_folder(tmp_path / "data")
    data = DataModuleFromConfig(batch_size=3, num_workers=0, train={
        "target": "ldm.data.folder.ImageFolderTrain", "params": {"root": str(tmp_path / "data"), "size": 8,
                                                                 "min_size": 8, "val_fraction": 0.0}})
    data.setup("fit")
    with pytest.warns(BadImageWarning) as caught:
        assert served(data.train_dataloader()) == Counter({name: 1 for name in good})
    assert sorted(Path(str(w.message).split(": ")[0].removeprefix("skipping image ")).name
                  for w in caught if issubclass(w.category, BadImageWarning)) == sorted(bad)
    assert len(data.datasets["train"].skipped) == len(bad)


def test_bad_items_are_none_and_collate_drops_them(tmp_path):
    good, bad = mostly_bad_folder(tmp_path / "data")
    ds = ImageFolder(str(tmp_path / "data"), size=8, min_size=8, crop="center")
    with pytest.warns(BadImageWarning, match="skipping image .*00_b_truncated.png"):
        items = [ds[i] for i in range(len(ds))]
    assert [it["relpath"] for it in items if it is not None] == good
    assert sum(it is None for it in items) == len(bad)
    assert collate_examples([None, None]) is None
    batch = collate_examples([None, items[0], None])
    assert batch["relpath"] == [good[0]] and batch["image"].shape == (1, 8, 8, 3)


def test_a_folder_of_only_bad_files_still_stops_with_a_clear_error(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for k in range(3):
        (root / f"{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = ImageFolder(str(root), size=8)
    with pytest.warns(BadImageWarning), pytest.raises(ValueError, match=r"none of its 3 image file\(s\) could be read"):
        ds[1]


@pytest.mark.parametrize("model_class", ["ldm.models.diffusion.ddpm.DDPM",
                                         "ldm.models.autoencoder.AutoencoderKL", "ldm.models.autoencoder.VQModel"])
def test_a_validation_batch_of_only_bad_files_is_skipped(model_class):
    # Lightning skips a None training batch itself, but hands a None validation batch to the model.
    from ldm.config.targets import get_obj_from_str

    cls = get_obj_from_str(model_class)

    class Probe:  # the checks that run before the batch is read
        def _require_trainable_loss(self):
            pass

    assert cls.validation_step(Probe(), None, 0) is None
