"""Data layer: synthetic shapes, robust image folders, image decoding, the Lightning data module."""
from __future__ import annotations

import inspect
import io
import os
import pickle
import random
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset

from ldm.config.errors import ConfigError
from ldm.data.base import DataModuleFromConfig, WrappedDataset, collate_examples, worker_init_fn
from ldm.data.folder import BadImageWarning, ImageFolder, ImageFolderTrain, ImageFolderValidation
from ldm.data.image_io import BadImageError, load_rgb, resize_crop, to_float, to_uint8
from ldm.data.skipping import SkipBadImages
from ldm.data.synthetic import (
    COLOURS,
    SHAPES,
    VALIDATION_OFFSET,
    SyntheticShapes,
    SyntheticShapesTrain,
    SyntheticShapesValidation,
    caption_vocabulary,
    layout_boxes,
)
from ldm.util import instantiate_from_config

# ============================================================================================
# Synthetic shapes
# ============================================================================================


def _assert_examples_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_synthetic_is_a_function_of_seed_and_index():
    a, b = SyntheticShapes(size=16, length=20, seed=3), SyntheticShapes(size=16, length=20, seed=3)
    for i in (0, 7, 19):
        _assert_examples_equal(a[i], b[i])
    _assert_examples_equal(a[-1], a[19])
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    assert not np.array_equal(a[0]["image"], SyntheticShapes(size=16, length=20, seed=4)[0]["image"])
    with pytest.raises(IndexError):
        a[20]


def test_synthetic_identical_through_dataloader_workers():
    ds = SyntheticShapes(size=16, length=8, seed=1)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_examples)
    batches = list(loader)
    expected = collate_examples([ds[i] for i in range(8)])
    for key in ("image", "bboxes", "segmentation", "segmentation_index", "class_label", "n_objects"):
        got = torch.cat([b[key] for b in batches])
        assert torch.equal(got, expected[key]), key
    assert sum((b["caption"] for b in batches), []) == expected["caption"]


@pytest.mark.parametrize("size", [8, 24, 64])
def test_synthetic_shapes_dtypes_and_ranges(size):
    ds = SyntheticShapes(size=size, length=10, max_objects=4)
    for i in range(10):
        ex = ds[i]
        img, seg, idx, boxes = ex["image"], ex["segmentation"], ex["segmentation_index"], ex["bboxes"]
        assert img.shape == (size, size, 3) and img.dtype == np.float32
        assert img.min() >= -1.0 and img.max() <= 1.0
        assert seg.shape == (size, size, 1 + len(SHAPES)) and seg.dtype == np.float32
        assert idx.shape == (size, size) and idx.dtype == np.int64
        assert np.array_equal(seg.sum(-1), np.ones((size, size), np.float32))
        assert np.array_equal(seg.argmax(-1), idx)
        assert boxes.shape == (4, 5) and boxes.dtype == np.float32
        n = ex["n_objects"]
        assert 1 <= n <= 4 and isinstance(ex["class_label"], int)
        assert np.all(boxes[n:] == -1.0)
        assert np.all(boxes[:n, 1:] >= 0) and np.all(boxes[:n, 1:] <= 1)
        assert np.all(boxes[:n, 3] > boxes[:n, 1]) and np.all(boxes[:n, 4] > boxes[:n, 2])


def test_synthetic_scene_is_resolution_independent():
    small, large = SyntheticShapes(size=32, length=5), SyntheticShapes(size=64, length=5)
    for i in range(5):
        a, b = small[i], large[i]
        assert a["caption"] == b["caption"] and a["class_label"] == b["class_label"]
        assert np.allclose(a["bboxes"], b["bboxes"], atol=2 / 32)


def test_synthetic_segmentation_lies_in_bboxes():
    ds = SyntheticShapes(size=32, length=40, max_objects=3)
    for i in range(40):
        ex = ds[i]
        idx, boxes, n = ex["segmentation_index"], ex["bboxes"], ex["n_objects"]
        rows, cols = np.mgrid[0:32, 0:32]
        covered = np.zeros_like(idx, dtype=bool)
        for shape, x0, y0, x1, y1 in boxes[:n]:
            inside = (cols >= round(x0 * 32)) & (cols < round(x1 * 32)) & (rows >= round(y0 * 32)) & (rows < round(y1 * 32))
            mine = inside & (idx == int(shape) + 1)
            assert mine.any(), (i, shape)  # the object is visible inside its box
            covered |= mine
        assert np.array_equal(covered, idx > 0), i  # and no shape pixel lies outside every box


def test_synthetic_captions_match_the_pixels():
    ds = SyntheticShapes(size=64, length=30, colour_jitter=0.0, gradient_prob=0.5)
    vocab = caption_vocabulary()
    assert vocab == sorted(set(vocab))
    for i in range(30):
        ex = ds[i]
        caption, boxes, n = ex["caption"], ex["bboxes"], ex["n_objects"]
        assert set(caption.split()) <= set(vocab)
        objects, background = caption.split(" on ")
        phrases = objects.split(" and ")
        assert len(phrases) == n
        assert ex["human_label"] == SHAPES[int(boxes[0, 0])] == SHAPES[ex["class_label"]]
        for k, phrase in enumerate(phrases):
            words = phrase.split()
            assert words[0] == ("an" if words[1][0] in "aeiou" else "a")
            colour, shape = words[-2], words[-1]
            assert shape == SHAPES[int(boxes[k, 0])]
            x0, y0, x1, y1 = np.round(boxes[k, 1:] * 64).astype(int)
            region = ex["image"][y0:y1, x0:x1][ex["segmentation_index"][y0:y1, x0:x1] == int(boxes[k, 0]) + 1]
            assert np.allclose(np.median(region, axis=0), np.array(COLOURS[colour]) / 127.5 - 1, atol=1e-5)
        bg_words = background.split()
        assert bg_words[-1] == "background"
        if "gradient" not in bg_words:
            bg = ex["image"][ex["segmentation_index"] == 0]
            assert np.allclose(bg, np.array(COLOURS[bg_words[1]]) / 127.5 - 1, atol=1e-5)


def test_synthetic_class_modes():
    few = SyntheticShapes(size=16, length=200, n_classes=3)
    labels = {few[i]["class_label"] for i in range(200)}
    shapes_seen = {int(s) for i in range(200) for s in few[i]["bboxes"][:, 0] if s >= 0}
    assert labels == {0, 1, 2} and shapes_seen == {0, 1, 2}
    pairs = SyntheticShapes(size=16, length=20, n_classes=len(SHAPES) * len(COLOURS))
    for i in range(20):
        ex = pairs[i]
        colour, shape = divmod(ex["class_label"], len(SHAPES))
        assert ex["human_label"] == f"{list(COLOURS)[colour]} {SHAPES[shape]}"
        assert ex["caption"].split(" and ")[0].split(" on ")[0].endswith(ex["human_label"])
    with pytest.raises(ValueError, match="n_classes"):
        SyntheticShapes(n_classes=0)


def test_synthetic_splits_are_disjoint_streams():
    train, val = SyntheticShapesTrain(size=16, length=5), SyntheticShapesValidation(size=16, length=5)
    assert len(train) == 5 and len(val) == 5
    _assert_examples_equal(train[2], SyntheticShapes(size=16, length=5)[2])
    _assert_examples_equal(val[2], SyntheticShapes(size=16, length=5, offset=VALIDATION_OFFSET)[2])
    assert not np.array_equal(train[0]["image"], val[0]["image"])
    with pytest.raises(ValueError, match="offset"):
        SyntheticShapesTrain(offset=3)


def test_synthetic_super_resolution_and_inpainting_keys():
    ex = SyntheticShapes(size=16, length=2, lr_factor=4, inpainting_masks=True)[1]
    assert ex["LR_image"].shape == (4, 4, 3) and ex["LR_image"].dtype == np.float32
    assert np.allclose(ex["LR_image"][1, 2], ex["image"][4:8, 8:12].mean(axis=(0, 1)), atol=1e-6)
    mask = ex["mask"]
    assert mask.shape == (16, 16, 1) and set(np.unique(mask)) == {0.0, 1.0}
    assert 0.05 <= mask.mean() <= 0.6
    assert np.allclose(ex["masked_image"], (1 - mask) * (ex["image"] + 1) - 1, atol=1e-6)
    assert (ex["masked_image"][mask[..., 0] == 1] == -1).all()  # black hole, as inpainting_big expects
    with pytest.raises(ValueError, match="lr_factor"):
        SyntheticShapes(size=16, lr_factor=3)


def test_synthetic_layout_tokens_follow_the_layout_dataset_scheme():
    plain = SyntheticShapes(size=32, length=40, max_objects=3)
    tokens = SyntheticShapes(size=32, length=40, max_objects=3, layout_tokens=True, layout_grid=16, layout_vocab=257)
    assert "coordinates_bbox" not in plain[0]
    orders = set()
    for i in range(40):
        ex, ref = tokens[i], plain[i]
        seq = ex.pop("coordinates_bbox")
        _assert_examples_equal(ex, ref)  # opt-in: every other key is unchanged
        assert seq.dtype == np.int64 and seq.shape == (3 * 3 + 2,)
        boxes = layout_boxes(ex)
        areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
        assert len(boxes) == ex["n_objects"] and np.all(np.diff(areas) <= 0)  # largest first
        assert sorted(map(tuple, boxes.tolist())) == sorted(map(tuple, ex["bboxes"][:ex["n_objects"]].tolist()))
        orders.add(np.array_equal(boxes, ex["bboxes"][:ex["n_objects"]]))
        expected = []
        for c, x0, y0, x1, y1 in boxes:  # class, top-left, bottom-right on the 16 x 16 grid
            expected += [int(c), round(x0 * 15) + 16 * round(y0 * 15), round(x1 * 15) + 16 * round(y1 * 15)]
        expected += [256] * (9 - len(expected)) + [0, 255]  # padding, then the full-image crop window
        assert seq.tolist() == expected, i
    assert orders == {True, False}  # the drawing order is not always the size order (item 32 here)
    with pytest.raises(ValueError, match="layout_grid=20, layout_vocab=257"):
        SyntheticShapes(layout_tokens=True, layout_grid=20)


def test_synthetic_is_fast():
    ds = SyntheticShapes(size=64, length=100)
    ds[0]
    start = time.perf_counter()
    for i in range(50):
        ds[i]
    assert (time.perf_counter() - start) / 50 < 5e-3


# ============================================================================================
# Image decoding
# ============================================================================================


def _write_png48(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


GRAY = np.tile(np.array([[0, 100], [200, 255]], np.uint8), (8, 8))
RGBA = np.tile(np.array([[[200, 100, 0, 128], [10, 20, 30, 255]], [[50, 60, 70, 0], [255, 255, 255, 255]]],
                        np.uint8), (8, 8, 1))
RGBA_ON_WHITE = np.tile(np.array([[[227, 177, 127], [10, 20, 30]], [[255, 255, 255], [255, 255, 255]]],
                                 np.uint8), (8, 8, 1))
G16 = np.tile(np.array([[0, 1000], [32896, 65535]], np.uint16), (8, 8))
G16_8BIT = np.tile(np.array([[0, 3], [128, 255]], np.uint8), (8, 8))
C48 = np.tile(np.array([[[65535, 32896, 1000], [0, 257, 65280]]], np.uint16), (16, 8, 1))
C48_8BIT = np.tile(np.array([[[255, 128, 3], [0, 1, 255]]], np.uint8), (16, 8, 1))
PALETTE = [10, 20, 30, 200, 100, 50] + [0] * 762


def _palette_image() -> Image.Image:
    img = Image.new("P", (16, 16))
    img.putpalette(PALETTE)
    img.paste(1, (0, 0, 8, 16))
    return img


def test_load_rgb_conversions(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / "g.png")
    Image.fromarray(RGBA).save(tmp_path / "a.png")
    Image.fromarray(G16).save(tmp_path / "g16.png")
    _write_png48(tmp_path / "c48.png", C48)
    _palette_image().save(tmp_path / "p.png")
    _palette_image().save(tmp_path / "pt.png", transparency=1)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.array_equal(load_rgb(tmp_path / "g.png"), np.repeat(GRAY[..., None], 3, 2))
    assert np.array_equal(load_rgb(tmp_path / "a.png"), RGBA_ON_WHITE)
    assert np.array_equal(load_rgb(tmp_path / "g16.png"), np.repeat(G16_8BIT[..., None], 3, 2))
    assert np.array_equal(load_rgb(tmp_path / "c48.png"), C48_8BIT)
    pal = load_rgb(tmp_path / "p.png")
    assert pal.dtype == np.uint8 and (pal[:, :8] == (200, 100, 50)).all() and (pal[:, 8:] == (10, 20, 30)).all()
    assert (load_rgb(tmp_path / "pt.png")[:, :8] == 255).all()  # transparent palette entry -> white
    assert (load_rgb(tmp_path / "c.tif") == (255, 0, 0)).all()


def test_load_rgb_applies_exif_orientation(tmp_path):
    arr = np.arange(16 * 24 * 3, dtype=np.uint32).reshape(16, 24, 3).astype(np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "r.png", exif=exif)
    assert np.array_equal(load_rgb(tmp_path / "r.png"), np.rot90(arr, -1))


def test_load_rgb_errors(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    Image.fromarray(GRAY).save(tmp_path / "small.png")
    buf = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf)
    (tmp_path / "cut.jpg").write_bytes(buf.read_bytes()[:-2000])  # the scan data ends early
    with pytest.raises(BadImageError, match="not a readable image") as e:
        load_rgb(tmp_path / "junk.jpg")
    assert e.value.path == str(tmp_path / "junk.jpg")
    with pytest.raises(BadImageError, match="too small: 16x16"):
        load_rgb(tmp_path / "small.png", min_size=17)
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(tmp_path / "cut.jpg")


def test_resize_crop_and_value_range():
    arr = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    center = resize_crop(arr, 20, "center")
    assert center.shape == (20, 20, 3)
    full = np.asarray(Image.fromarray(arr).resize((30, 20), Image.Resampling.BICUBIC))
    assert np.abs(center.astype(int) - full[:, 5:25]).max() <= 1
    assert resize_crop(arr, 20, "none").shape == (20, 30, 3)
    assert resize_crop(arr, 20, "random").shape == (20, 20, 3)
    assert resize_crop(arr, None, "center") is arr
    x = to_float(np.array([0, 255, 51], np.uint8))
    assert x.dtype == np.float32 and x[0] == -1.0 and x[1] == 1.0
    assert np.array_equal(to_uint8(to_float(arr)), arr)


# ============================================================================================
# ImageFolder
# ============================================================================================


def _messy_folder(root: Path) -> dict[str, np.ndarray]:
    """Good images and every kind of bad one; returns the expected RGB of each good file."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "a_good.png")
    (root / "b_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "c_full.jpg")
    (root / "d_truncated.jpg").write_bytes((root / "c_full.jpg").read_bytes()[:-2000])
    (root / "c_full.jpg").unlink()
    Image.fromarray(GRAY).save(root / "e_gray.png")
    Image.fromarray(RGBA).save(root / "f_rgba.png")
    Image.fromarray(G16).save(root / "g_16bit.png")
    _palette_image().save(root / "h_palette.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "i_tiny.png")
    (root / "notes.md").write_text("not an image")
    (root / "._a_good.png").write_bytes(b"macOS resource fork")
    return {"a_good.png": rgb, "e_gray.png": np.repeat(GRAY[..., None], 3, 2), "f_rgba.png": RGBA_ON_WHITE,
            "g_16bit.png": np.repeat(G16_8BIT[..., None], 3, 2)}


def test_image_folder_skips_bad_files_and_converts_the_rest(tmp_path):
    expected = _messy_folder(tmp_path / "data")
    ds = ImageFolder(str(tmp_path / "data"), size=None, crop="none", min_size=8)
    names = [Path(ds.path(i)).name for i in range(len(ds))]
    assert names == ["a_good.png", "b_corrupt.jpg", "d_truncated.jpg", "e_gray.png", "f_rgba.png",
                     "g_16bit.png", "h_palette.png", "i_tiny.png"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = [ds[i] for i in range(len(ds))]
        second = [ds[i] for i in range(len(ds))]
    warned = [str(w.message) for w in caught if issubclass(w.category, BadImageWarning)]
    bad = ["b_corrupt.jpg", "d_truncated.jpg", "i_tiny.png"]
    assert len(warned) == 3 and all(any(str(tmp_path / "data" / b) in m for m in warned) for b in bad)
    assert sorted(Path(p).name for p in ds.skipped) == bad
    assert "too small" in ds.skipped[str(tmp_path / "data" / "i_tiny.png")]
    assert "truncated" in ds.skipped[str(tmp_path / "data" / "d_truncated.jpg")]
    # A bad index yields None (dropped by the collate function), never another file in its place.
    assert [e and e["relpath"] for e in first] == ["a_good.png", None, None, "e_gray.png",
                                                   "f_rgba.png", "g_16bit.png", "h_palette.png", None]
    assert [e and e["relpath"] for e in second] == [e and e["relpath"] for e in first]
    by_name = {e["relpath"]: e for e in first if e is not None}
    for name, rgb in expected.items():
        img = by_name[name]["image"]
        assert img.dtype == np.float32 and np.array_equal(img, to_float(rgb)), name
    assert by_name["a_good.png"]["file_path_"] == str(tmp_path / "data" / "a_good.png")


def test_image_folder_resizes_crops_and_batches(tmp_path):
    _messy_folder(tmp_path / "data")
    ds = ImageFolder(str(tmp_path / "data"), size=12, crop="random", flip=True)
    with pytest.warns(BadImageWarning):
        batch = collate_examples([ds[i] for i in range(len(ds))])
    # 8 files, 3 of them bad: the batch holds the 5 readable ones, none twice.
    assert batch["image"].shape == (5, 12, 12, 3) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert len(set(batch["file_path_"])) == 5 and isinstance(batch["relpath"][0], str)


def test_image_folder_empty_and_unreadable_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"empty.*no usable images: found 0 image file\(s\).*1 x \.txt"):
        ImageFolder(str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"broken")
    (bad / "y.jpg").write_bytes(b"broken too")
    ds = ImageFolder(str(bad))
    with pytest.warns(BadImageWarning), pytest.raises(ValueError, match=r"bad'?: none of its 2 image file\(s\)"):
        ds[0]
    assert len(ds.skipped) == 2
    with pytest.raises(ValueError, match="not a directory"):
        ImageFolder(str(tmp_path / "missing"))


def _classes_folder(root: Path) -> None:
    for rel in ("dogs/b.png", "cats/a.png", "dogs/sub/c.png", "stray.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), len(rel), np.uint8)).save(root / rel)
    (root / "cats" / "a.txt").write_text("a  cat\nsitting ")
    (root / "dogs" / "b.txt").write_text("a dog")


def test_image_folder_labels_and_sidecar_captions(tmp_path):
    _classes_folder(tmp_path)
    with pytest.warns(BadImageWarning, match="directly in the root"):
        ds = ImageFolder(str(tmp_path), size=8, labels_from_subfolders=True)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 3
    got = [(ds[i]["relpath"], ds[i]["class_label"], ds[i]["human_label"]) for i in range(3)]
    assert got == [("cats/a.png", 0, "cats"), ("dogs/b.png", 1, "dogs"), ("dogs/sub/c.png", 1, "dogs")]
    with pytest.warns(BadImageWarning, match="without a sidecar caption"):
        cap = ImageFolder(str(tmp_path), size=8, captions="sidecar")
    assert [(cap[i]["relpath"], cap[i]["caption"]) for i in range(len(cap))] == [
        ("cats/a.png", "a cat sitting"), ("dogs/b.png", "a dog")]
    assert "class_label" not in cap[0]
    flat = ImageFolder(str(tmp_path), size=8, recursive=False)
    assert len(flat) == 1 and flat[0]["relpath"] == "stray.png"


def test_image_folder_splits(tmp_path):
    for i in range(40):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    train = ImageFolderTrain(str(tmp_path), size=8, val_fraction=0.25)
    val = ImageFolderValidation(str(tmp_path), size=8, val_fraction=0.25)
    t = {train[i]["relpath"] for i in range(len(train))}
    v = {val[i]["relpath"] for i in range(len(val))}
    assert not t & v and len(t | v) == 40 and 3 <= len(v) <= 20
    assert train.crop == "random" and train.flip and val.crop == "center" and not val.flip
    again = ImageFolderValidation(str(tmp_path), size=8, val_fraction=0.25)
    assert [again[i]["relpath"] for i in range(len(again))] == [val[i]["relpath"] for i in range(len(val))]
    other = ImageFolderValidation(str(tmp_path), size=8, val_fraction=0.25, split_seed=1)
    assert {other[i]["relpath"] for i in range(len(other))} != v
    listing = tmp_path / "val.list"
    listing.write_text("# held out\n03.png\n./17.png\n\n")
    listed = ImageFolderValidation(str(tmp_path), size=8, file_list=str(listing))
    assert [listed[i]["relpath"] for i in range(len(listed))] == ["03.png", "17.png"]
    listing.write_text("03.png\nnope.png\n")
    with pytest.raises(ValueError, match=r"val\.list.*nope\.png"):
        ImageFolderTrain(str(tmp_path), file_list=str(listing))


# ============================================================================================
# DataModuleFromConfig
# ============================================================================================


def _data_config(**overrides) -> dict:
    cfg = {
        "target": "main.DataModuleFromConfig",
        "params": {
            "batch_size": 4,
            "num_workers": 0,
            "train": {"target": "ldm.data.synthetic.SyntheticShapesTrain",
                      "params": {"size": 16, "length": 10, "max_objects": 2}},
            "validation": {"target": "ldm.data.synthetic.SyntheticShapesValidation",
                           "params": {"size": 16, "length": 6, "max_objects": 2}},
        },
    }
    cfg["params"].update(overrides)
    return cfg


def test_datamodule_from_omegaconf_yields_batches():
    data = instantiate_from_config(OmegaConf.create(_data_config()), path="data")
    assert isinstance(data, DataModuleFromConfig)
    assert set(data.dataset_configs) == {"train", "validation"}
    assert is_overridden("train_dataloader", data) and is_overridden("val_dataloader", data)
    assert not is_overridden("test_dataloader", data)
    data.prepare_data()
    data.setup("fit")
    assert isinstance(data.datasets["train"], SyntheticShapesTrain) and len(data.datasets["validation"]) == 6
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == torch.float32
    assert batch["segmentation"].shape == (4, 16, 16, 9) and batch["bboxes"].shape == (4, 2, 5)
    assert batch["class_label"].dtype == torch.int64 and batch["class_label"].shape == (4,)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 4
    assert all(isinstance(c, str) for c in batch["caption"] + batch["human_label"])
    val = list(data.val_dataloader())
    assert [b["image"].shape[0] for b in val] == [4, 2]
    assert val[0]["caption"] == [data.datasets["validation"][i]["caption"] for i in range(4)]


def test_datamodule_defaults_and_wrap():
    data = DataModuleFromConfig(batch_size=3, wrap=True, train=_data_config()["params"]["train"])
    assert data.num_workers == min(6, os.cpu_count())
    data.setup()
    assert isinstance(data.datasets["train"], WrappedDataset) and len(data.datasets["train"]) == 10
    assert not is_overridden("val_dataloader", data)


def test_datamodule_config_errors_name_the_path():
    cfg = _data_config()
    cfg["params"]["train"]["params"]["sizee"] = 16
    with pytest.raises(ConfigError) as e:
        instantiate_from_config(OmegaConf.create(cfg), path="data")
    assert e.value.path == "data.params.train.params.sizee"
    cfg = _data_config()
    cfg["params"]["validation"]["params"]["size"] = "big"
    with pytest.raises(ConfigError, match=r"^data\.params\.validation\.params\.size"):
        instantiate_from_config(OmegaConf.create(cfg), path="data")
    with pytest.raises(ConfigError, match=r"^data\.params\.test: expected a dataset config"):
        DataModuleFromConfig(batch_size=2, test={"params": {}})


def test_datamodule_image_folder_with_workers_is_reproducible(tmp_path):
    _classes_folder(tmp_path)
    (tmp_path / "stray.png").unlink()
    cfg = _data_config(num_workers=2, use_worker_init_fn=True, batch_size=3, validation=None)
    cfg["params"]["train"] = {"target": "ldm.data.folder.ImageFolderTrain",
                              "params": {"root": str(tmp_path), "size": 8, "labels_from_subfolders": True}}
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        data = instantiate_from_config(OmegaConf.create(cfg), path="data")
        data.setup("fit")
        runs.append(next(iter(data.train_dataloader())))
    assert torch.equal(runs[0]["image"], runs[1]["image"]) and runs[0]["relpath"] == runs[1]["relpath"]
    assert sorted(runs[0]["relpath"]) == ["cats/a.png", "dogs/b.png", "dogs/sub/c.png"]
    assert runs[0]["human_label"] == [p.split("/")[0] for p in runs[0]["relpath"]]


def test_collate_strings_arrays_and_none():
    batch = collate_examples([{"a": np.array(["x", "y"]), "b": None, "c": np.ones(2, np.float32), "d": "s"},
                              {"a": np.array(["z", "w"]), "b": None, "c": np.zeros(2, np.float32), "d": "t"}])
    assert [list(x) for x in batch["a"]] == [["x", "y"], ["z", "w"]] and batch["b"] == [None, None]
    assert torch.equal(batch["c"], torch.tensor([[1.0, 1.0], [0.0, 0.0]])) and batch["d"] == ["s", "t"]


def test_worker_init_fn_seeds_numpy_and_random_from_torch():
    torch.manual_seed(123)
    worker_init_fn(0)
    draws = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert draws == (np.random.random(), random.random())


# ============================================================================================
# Image sources, public hooks, skipping mixin, file lists, named variants
# ============================================================================================


def test_load_rgb_accepts_path_bytes_and_file_objects(tmp_path):
    Image.fromarray(RGBA).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    with open(tmp_path / "a.png", "rb") as f:
        from_stream = load_rgb(f)
        assert not f.closed  # the caller's stream stays the caller's
    for decoded in (load_rgb(data), load_rgb(bytearray(data)), load_rgb(io.BytesIO(data)), from_stream):
        assert np.array_equal(decoded, RGBA_ON_WHITE)
    with pytest.raises(BadImageError, match="too small") as e:
        load_rgb(data, min_size=17, name="shard.tar#3")
    assert e.value.path == "shard.tar#3"
    with pytest.raises(BadImageError) as e:
        load_rgb(b"\x89PNG broken")
    assert e.value.path == "<11 bytes>" and "not a readable image" in e.value.reason
    with pytest.raises(BadImageError, match="file not found"):
        load_rgb(tmp_path / "missing.png")


def test_decode_image_is_load_rgb_on_bytes(tmp_path):
    from ldm.data.laion import decode_image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    assert np.array_equal(decode_image(jpeg, "x#0", draft_size=16), load_rgb(jpeg, draft_size=16))
    assert decode_image(jpeg, "x#0", draft_size=16).shape == (16, 16, 3)  # DCT-domain 1/4 scale
    with pytest.raises(BadImageError, match="truncated") as e:  # same error classes as files
        decode_image(jpeg[:-2000], "x#0")
    assert e.value.path == "x#0"


class _Squares(ImageFolder):
    """A subclass using only the public hooks."""

    def transform(self, arr):
        return arr[:8, :8]

    def caption(self, j):
        return f"file {self.relpath(j)}"


def test_image_folder_public_hooks(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((12, 16, 3), 10 * i, np.uint8)).save(tmp_path / f"{i}.png")
    ds = _Squares(str(tmp_path), size=None)
    assert [ds.relpath(j) for j in range(3)] == ["0.png", "1.png", "2.png"]
    assert ds.path(1) == str(tmp_path / "1.png")
    assert ds.read_image(2).shape == (12, 16, 3) and ds.read_image(2).dtype == np.uint8
    ex = ds[2]
    assert list(ex) == ["caption", "image", "file_path_", "relpath"]
    assert ex["caption"] == "file 2.png" and np.array_equal(ex["image"], np.full((8, 8, 3), to_float(np.uint8(20))))


class _EveryOther(SkipBadImages, Dataset):
    """Items are their index; odd items are bad."""

    def __init__(self, n: int):
        super().__init__()
        self.root, self.n = "numbers", n

    def __len__(self):
        return self.n

    def path(self, j):
        return f"numbers#{j}"

    def load_example(self, j):
        if j % 2:
            raise BadImageError(self.path(j), "odd")
        return {"value": j}


def test_skip_bad_images_mixin():
    ds = _EveryOther(5)
    with pytest.warns(BadImageWarning) as caught:
        assert [ds[i] and ds[i]["value"] for i in range(5)] == [0, None, 2, None, 4]
    assert [str(w.message) for w in caught] == ["skipping image numbers#1: odd", "skipping image numbers#3: odd"]
    assert ds[-3]["value"] == 2 and ds[-4] is None and ds.skipped == {"numbers#1": "odd", "numbers#3": "odd"}
    with pytest.raises(IndexError):
        ds[5]
    with pytest.warns(BadImageWarning), pytest.raises(ValueError, match="_OnlyBad 'numbers': none of its 1 "):
        _OnlyBad()[0]


class _OnlyBad(_EveryOther):
    def __init__(self):
        super().__init__(1)

    def load_example(self, j):
        raise BadImageError(self.path(j), "odd")


def test_file_list_as_paths_without_scanning(tmp_path, monkeypatch):
    for rel in ("a/1.png", "a/2.png", "b/3.png", "c/4.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / rel)

    def no_scan(*args):
        raise AssertionError("a file_list dataset must not scan the folder")

    monkeypatch.setattr("ldm.data.folder._scan", no_scan)
    ds = ImageFolder(str(tmp_path), size=8, file_list=["b/3.png", "./a/1.png", "a/1.png"], labels_from_subfolders=True)
    assert [ds.relpath(j) for j in range(len(ds))] == ["a/1.png", "b/3.png"]
    # Class indices come from the class folders, so every list of the same root agrees on them.
    assert ds.classes == ["a", "b", "c"] and [ds[j]["class_label"] for j in range(2)] == [0, 1]
    assert ImageFolder(str(tmp_path), size=8, file_list=["c/4.png"], labels_from_subfolders=True)[0]["class_label"] == 2
    with pytest.raises(ValueError, match=r"\[2 path\(s\)\] names 1 file\(s\) not found.*'a/9.png'"):
        ImageFolder(str(tmp_path), file_list=["a/1.png", "a/9.png"])
    with pytest.raises(ValueError, match="not images by their extension"):
        ImageFolder(str(tmp_path), file_list=["a/1.txt"])
    with pytest.raises(ValueError, match="outside root"):
        ImageFolder(str(tmp_path), file_list=["../x.png"])
    lazy = ImageFolder(str(tmp_path), size=8, file_list=["a/1.png", "a/9.png"], verify_file_list=False)
    assert len(lazy) == 2
    with pytest.warns(BadImageWarning, match="9.png: file not found"):
        assert lazy[1] is None  # the missing file is skipped: no other file takes its place


def test_named_variants_fix_the_split_and_pickle(tmp_path):
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    sig = inspect.signature(ImageFolderTrain)
    assert "split" not in sig.parameters and sig.parameters["crop"].default == "random"
    assert sig.parameters["flip"].default is True and inspect.signature(ImageFolderValidation).parameters["flip"].default is False
    with pytest.raises(ValueError, match="ImageFolderTrain fixes split='train'; use ImageFolder"):
        ImageFolderTrain(str(tmp_path), split="validation")
    ds = ImageFolderValidation(str(tmp_path), size=8, val_fraction=0.5)
    clone = pickle.loads(pickle.dumps(ds))
    assert type(clone) is ImageFolderValidation and ImageFolderValidation.__module__ == "ldm.data.folder"
    assert [clone.relpath(j) for j in range(len(clone))] == [ds.relpath(j) for j in range(len(ds))]
    with pytest.raises(ConfigError, match="split"):
        instantiate_from_config({"target": "ldm.data.folder.ImageFolderTrain",
                                 "params": {"root": str(tmp_path), "split": "train"}}, path="data")
    with pytest.raises(ConfigError, match=r"data\.params\.flip"):
        instantiate_from_config({"target": "ldm.data.folder.ImageFolderTrain",
                                 "params": {"root": str(tmp_path), "flip": "yes"}}, path="data")
