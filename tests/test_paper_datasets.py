"""The paper datasets read tiny fake trees in each documented layout."""
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.config.validate import check_config_tree
from ldm.data.base import DataModuleFromConfig
from ldm.data.folder import BadImageWarning
from ldm.data.layout import LayoutTokenizer
from ldm.util import instantiate_from_config
from tests.reference_data import CONFIGS, load_config

REPO = Path(__file__).resolve().parents[1]
WNIDS = ("n01440764", "n01443537")


def _img(path, w=24, h=20, seed=0, fmt=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _lines(path, entries):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{e}\n" for e in entries))


def _check_image(ex, side):
    assert ex["image"].shape == (side, side, 3) and ex["image"].dtype == np.float32
    assert -1.0 <= ex["image"].min() and ex["image"].max() <= 1.0


# ------------------------------------------------------------------------------ config compatibility

def _data_sections():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        cfg = load_config(str(path.relative_to(CONFIGS)))
        if "data" in cfg:
            yield str(path.relative_to(CONFIGS))


@pytest.mark.parametrize("config", list(_data_sections()))
def test_original_data_sections_resolve_and_validate(config):
    check_config_tree(load_config(config).data, path="data")


# ------------------------------------------------------------------------------ faces

def test_faces_read_the_split_lists(tmp_path, monkeypatch):
    root = tmp_path / "ffhq"
    for i in range(4):
        _img(root / f"{i:05d}.png", seed=i)
    _lines(root / "ffhqtrain.txt", ["00000.png", "00001.png", "00002.png"])
    _lines(root / "ffhqvalidation.txt", ["00003.png"])
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path))  # the default root
    train = instantiate_from_config({"target": "taming.data.faceshq.FFHQTrain", "params": {"size": 16}})
    val = instantiate_from_config({"target": "ldm.data.faceshq.FFHQValidation", "params": {"size": 16}})
    assert (len(train), len(val)) == (3, 1)
    ex = val[0]
    assert set(ex) == {"image", "file_path_", "relpath"} and ex["relpath"] == "00003.png"
    _check_image(ex, 16)


def test_faces_missing_data_names_layout_and_command(tmp_path):
    from ldm.data.faceshq import CelebAHQTrain
    (tmp_path / "celebahq").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        CelebAHQTrain(size=16, root=str(tmp_path / "celebahq"))
    msg = str(err.value)
    assert "celebahqtrain.txt" in msg and "Expected layout" in msg
    assert "python scripts/prepare_faces.py --dataset celebahq" in msg and "\n" in msg


# ------------------------------------------------------------------------------ LSUN

def test_lsun_center_crop_resize_and_flip(tmp_path):
    from ldm.data.lsun import LSUNChurchesTrain, LSUNChurchesValidation
    data = tmp_path / "churches"
    _img(data / "a" / "x.webp", w=30, h=20, fmt="PNG")
    _img(data / "b" / "y.png", w=20, h=20, seed=1)
    _lines(tmp_path / "train.txt", ["a/x.webp", "b/y.png"])
    val = LSUNChurchesValidation(txt_file=str(tmp_path / "train.txt"), data_root=str(data), size=16)
    flipped = LSUNChurchesTrain(txt_file=str(tmp_path / "train.txt"), data_root=str(data), size=16, flip_p=1.0)
    _check_image(val[0], 16)
    np.testing.assert_array_equal(flipped[1]["image"], val[1]["image"][:, ::-1])
    native = LSUNChurchesValidation(txt_file=str(tmp_path / "train.txt"), data_root=str(data))
    assert native[0]["image"].shape == (20, 20, 3)  # size=None: the square center crop
    with pytest.raises(ValueError, match="interpolation"):
        LSUNChurchesValidation(txt_file=str(tmp_path / "train.txt"), data_root=str(data), interpolation="cubic")
    with pytest.raises(FileNotFoundError, match="prepare_lsun.py"):
        LSUNChurchesTrain(txt_file=str(tmp_path / "nope.txt"), data_root=str(data))


# ------------------------------------------------------------------------------ ImageNet

def _imagenet(root):
    _img(root / "train" / WNIDS[0] / "a.JPEG", fmt="JPEG")
    _img(root / "train" / WNIDS[1] / "b.JPEG", seed=1, fmt="JPEG")
    _img(root / "train" / WNIDS[1] / "c.JPEG", seed=2, fmt="JPEG")
    _img(root / "val" / WNIDS[1] / "v.JPEG", seed=3, fmt="JPEG")
    _lines(root / "synset_mapping.txt", [f"{WNIDS[0]} tench, Tinca tinca", f"{WNIDS[1]} goldfish, Carassius auratus"])


def test_imagenet_labels_come_from_the_synset_mapping(tmp_path):
    from ldm.data.imagenet import ImageNetTrain, ImageNetValidation
    _imagenet(tmp_path)
    train = ImageNetTrain(config={"size": 16}, root=str(tmp_path))  # the original config form
    assert len(train) == 3
    ex = train[1]
    _check_image(ex, 16)
    assert (ex["class_label"], ex["synset"], ex["human_label"]) == (1, WNIDS[1], "goldfish, Carassius auratus")
    assert ex["relpath"] == f"{WNIDS[1]}/b.JPEG"
    assert ImageNetValidation(size=16, root=str(tmp_path))[0]["class_label"] == 1
    with pytest.raises(ValueError, match="unknown ImageNet config key 'sise'"):
        ImageNetTrain(config={"sise": 16}, root=str(tmp_path))


def test_imagenet_rejects_folders_missing_from_the_mapping_and_missing_data(tmp_path):
    from ldm.data.imagenet import ImageNetTrain
    _imagenet(tmp_path)
    _img(tmp_path / "train" / "n09999999" / "z.JPEG", fmt="JPEG")
    with pytest.raises(ValueError, match="n09999999"):
        ImageNetTrain(size=16, root=str(tmp_path))
    os.remove(tmp_path / "synset_mapping.txt")
    with pytest.raises(FileNotFoundError, match="synset_mapping.txt") as err:
        ImageNetTrain(size=16, root=str(tmp_path))
    assert "prepare_imagenet.py" in str(err.value)


def test_imagenet_sr_pairs(tmp_path):
    _imagenet(tmp_path)
    params = {"size": 16, "degradation": "pil_nearest", "root": str(tmp_path)}
    train = instantiate_from_config({"target": "ldm.data.imagenet.ImageNetSRTrain", "params": params})
    ex = train[0]
    assert set(ex) == {"image", "LR_image", "file_path_", "relpath"}
    assert ex["image"].shape == (16, 16, 3) and ex["LR_image"].shape == (4, 4, 3)
    assert ex["LR_image"].dtype == np.float32
    from ldm.data.imagenet import ImageNetSRValidation
    val = ImageNetSRValidation(size=16, degradation="bsrgan", root=str(tmp_path))
    np.testing.assert_array_equal(val[0]["LR_image"], val[0]["LR_image"])  # seeded per index
    assert val[0]["LR_image"].shape == (4, 4, 3)


def test_prepare_imagenet_sorts_flat_val_and_writes_lists(tmp_path):
    root = tmp_path / "imagenet"
    _img(root / "train" / WNIDS[0] / "a.JPEG", fmt="JPEG")
    _img(root / "train" / WNIDS[1] / "b.JPEG", fmt="JPEG")
    _img(root / "val" / "ILSVRC2012_val_00000001.JPEG", fmt="JPEG")
    with open(tmp_path / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "PredictionString"], ["ILSVRC2012_val_00000001", f"{WNIDS[1]} 1 2 3 4"]])
    _lines(tmp_path / "LOC_synset_mapping.txt", [f"{WNIDS[0]} tench", f"{WNIDS[1]} goldfish"])
    subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_imagenet.py"), "--root", str(root),
                    "--val-labels", str(tmp_path / "LOC_val_solution.csv"),
                    "--synset-mapping", str(tmp_path / "LOC_synset_mapping.txt")], check=True, capture_output=True)
    assert (root / "val" / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG").is_file()
    assert (root / "val.txt").read_text() == f"{WNIDS[1]}/ILSVRC2012_val_00000001.JPEG\n"
    assert (root / "train.txt").read_text().splitlines() == [f"{WNIDS[0]}/a.JPEG", f"{WNIDS[1]}/b.JPEG"]
    from ldm.data.imagenet import ImageNetValidation
    ex = ImageNetValidation(size=16, root=str(root))[0]
    assert (ex["class_label"], ex["human_label"]) == (1, "goldfish")


def test_prepare_lsun_and_faces_write_lists(tmp_path):
    data = tmp_path / "churches"
    for i in range(5):
        _img(data / f"d{i % 2}" / f"{i}.png", seed=i)
    subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_lsun.py"), "--data-root", str(data),
                    "--train-list", str(tmp_path / "t.txt"), "--val-list", str(tmp_path / "v.txt"),
                    "--val-count", "2"], check=True, capture_output=True)
    train, val = (tmp_path / "t.txt").read_text().split(), (tmp_path / "v.txt").read_text().split()
    assert len(train) == 3 and len(val) == 2 and sorted(train + val) == sorted(
        f"d{i % 2}/{i}.png" for i in range(5))
    faces = tmp_path / "celebahq"
    faces.mkdir()
    for i in range(3):
        np.save(faces / f"imgHQ{i:05d}.npy", np.full((1, 12, 12, 3), i, np.uint8))
    subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_faces.py"), "--dataset", "celebahq",
                    "--root", str(faces), "--val-count", "1", "--convert-npy"], check=True, capture_output=True)
    assert (faces / "celebahqvalidation.txt").read_text() == "imgHQ00002.png\n"
    from ldm.data.faceshq import CelebAHQTrain
    assert len(CelebAHQTrain(size=8, root=str(faces))) == 2


# ------------------------------------------------------------------------------ OpenImages

def _openimages(root):
    _img(root / "train" / "aaa.jpg", w=40, h=32, fmt="JPEG")
    _img(root / "validation" / "bbb.jpg", w=40, h=32, seed=1, fmt="JPEG")
    _img(root / "validation" / "ccc.jpg", w=32, h=32, seed=2, fmt="JPEG")
    ann = root / "annotations"
    ann.mkdir()
    (ann / "oidv7-class-descriptions-boxable.csv").write_text("LabelName,DisplayName\n/m/01,Cat\n/m/02,Dog\n")
    header = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
    (ann / "validation-annotations-bbox.csv").write_text(
        header + "bbb,xclick,/m/02,1,0.0,0.5,0.25,0.75,0,0,0,0,0\n"
                 "bbb,xclick,/m/01,1,0.0,0.05,0.0,1.0,0,0,0,0,0\n"     # outside the center crop
                 "bbb,xclick,/m/01,1,0.5,0.9,0.5,1.0,0,0,0,0,0\n")
    (ann / "train-annotations-bbox.csv").write_text(header + "aaa,xclick,/m/01,1,0.1,0.2,0.1,0.2,0,0,0,0,0\n")


def test_full_openimages_crops(tmp_path):
    from ldm.data.openimages import FullOpenImagesTrain, FullOpenImagesValidation
    _openimages(tmp_path)
    _check_image(FullOpenImagesTrain(size=24, crop_size=16, root=str(tmp_path))[0], 16)
    val = FullOpenImagesValidation(crop_size=16, root=str(tmp_path))
    assert len(val) == 2 and set(val[0]) == {"image", "file_path_", "relpath"}
    _check_image(val[1], 16)


def test_openimages_bbox_tokens_exact(tmp_path):
    from ldm.data.openimages import OpenImagesBBoxValidation
    _openimages(tmp_path)
    ds = instantiate_from_config({"target": "ldm.data.openimages.OpenImagesBBoxValidation",
                                  "params": {"size": 16, "root": str(tmp_path)}})
    assert isinstance(ds, OpenImagesBBoxValidation) and ds.class_names == ["Cat", "Dog"]
    ex = ds[0]  # bbb: 40x32 -> 20x16, center crop x in [2, 18) px -> [0.1, 0.9] of the width
    assert set(ex) == {"image", "coordinates_bbox", "bboxes", "n_objects", "file_path_", "relpath"}
    _check_image(ex, 16)
    tokens = ex["coordinates_bbox"]
    assert tokens.shape == (92,) and tokens.dtype == np.int64
    # largest first: dog (0.1..0.5 -> 0..0.5 in the crop; y 0.25..0.75), then cat (0.5..0.9 -> 0.5..1)
    np.testing.assert_allclose(ex["bboxes"][:2], [[1, 0.0, 0.25, 0.5, 0.75], [0, 0.5, 0.5, 1.0, 1.0]], atol=1e-6)
    assert ex["n_objects"] == 2 and (ex["bboxes"][2:] == -1).all()
    # position = round(63 x) + 64 round(63 y)
    assert tokens[:6].tolist() == [1, 16 * 64, 32 + 47 * 64, 0, 32 + 32 * 64, 63 + 63 * 64]
    assert tokens[-2:].tolist() == [6, 57 + 63 * 64]  # crop window corners (0.1, 0) and (0.9, 1)
    assert (tokens[6:-2] == 8191).all()
    empty = ds[1]  # ccc has no boxes
    assert empty["n_objects"] == 0 and (empty["coordinates_bbox"][:-2] == 8191).all()


def test_openimages_bbox_flip_mirrors_image_and_boxes(tmp_path, monkeypatch):
    from ldm.data.openimages import OpenImagesBBoxValidation
    _openimages(tmp_path)
    plain = OpenImagesBBoxValidation(size=16, root=str(tmp_path))[0]
    monkeypatch.setattr("random.random", lambda: 0.0)  # always flip
    flipped = OpenImagesBBoxValidation(size=16, random_flip=True, root=str(tmp_path))[0]
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    np.testing.assert_allclose(flipped["bboxes"][:2], [[1, 0.5, 0.25, 1.0, 0.75], [0, 0.0, 0.5, 0.5, 1.0]], atol=1e-6)


def test_layout_tokenizer_roundtrip_and_limits():
    tok = LayoutTokenizer(n_classes=601)
    boxes = np.array([[600, 0.0, 0.0, 1.0, 1.0], [5, 1 / 63, 2 / 63, 3 / 63, 4 / 63]], np.float32)
    decoded, crop = tok.decode(tok.encode(boxes))
    np.testing.assert_allclose(decoded, boxes, atol=1e-6)
    assert crop == (0.0, 0.0, 1.0, 1.0) and tok.seq_len == 92
    assert len(tok.decode(tok.encode(np.tile(boxes, (20, 1))))[0]) == 30  # max_objects
    with pytest.raises(ValueError, match="class id"):
        tok.encode(np.array([[601, 0, 0, 1, 1]], np.float32))
    with pytest.raises(ValueError, match="grid"):
        LayoutTokenizer(n_classes=10, no_tokens=1024, grid=64)


def test_superres_openimages(tmp_path):
    from ldm.data.openimages import SuperresOpenImagesAdvancedValidation
    _openimages(tmp_path)
    ds = SuperresOpenImagesAdvancedValidation(size=16, degradation="bsrgan_light", root=str(tmp_path))
    a, b = ds[0], ds[0]
    assert a["image"].shape == (16, 16, 3) and a["LR_image"].shape == (4, 4, 3)
    np.testing.assert_array_equal(a["LR_image"], b["LR_image"])


# ------------------------------------------------------------------------------ COCO

def _coco(root):
    _img(root / "val2017" / "000000000001.jpg", w=32, h=32, fmt="JPEG")
    _img(root / "val2017" / "000000000002.jpg", w=32, h=32, seed=1, fmt="JPEG")
    ann = root / "annotations"
    ann.mkdir(parents=True)
    images = [{"id": 1, "file_name": "000000000001.jpg", "width": 32, "height": 32},
              {"id": 2, "file_name": "000000000002.jpg", "width": 32, "height": 32}]
    (ann / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": [
        {"id": 20, "image_id": 1, "caption": "a second  caption"}, {"id": 10, "image_id": 1, "caption": "A cat.\n"},
        {"id": 30, "image_id": 2, "caption": "a dog"}]}))
    (ann / "instances_val2017.json").write_text(json.dumps({
        "images": images, "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 16, 8], "iscrowd": 0},
                        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32], "iscrowd": 1}]}))


def test_coco_captions_and_boxes(tmp_path):
    from ldm.data.coco import CocoBBoxValidation, CocoCaptionsValidation
    _coco(tmp_path)
    caps = CocoCaptionsValidation(size=16, root=str(tmp_path))
    assert [caps[i]["caption"] for i in range(2)] == ["A cat.", "a dog"]  # first by annotation id
    _check_image(caps[0], 16)
    boxes = CocoBBoxValidation(size=16, root=str(tmp_path))
    assert boxes.class_names == ["person", "car"]
    ex = boxes[0]
    assert ex["n_objects"] == 1  # the crowd box is left out
    np.testing.assert_allclose(ex["bboxes"][0], [1, 0.0, 0.0, 0.5, 0.25])
    assert ex["coordinates_bbox"][:3].tolist() == [1, 0, 32 + 16 * 64]
    with pytest.raises(FileNotFoundError, match="instances_train2017.json|train2017"):
        from ldm.data.coco import CocoBBoxTrain
        CocoBBoxTrain(size=16, root=str(tmp_path))


# ------------------------------------------------------------------------------ captions: shards, TSV, previews

def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png_bytes(seed, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _shards(folder):
    folder.mkdir(parents=True)
    with tarfile.open(folder / "00000.tar", "w") as tar:
        _add(tar, "s/0001.jpg", _png_bytes(0, "JPEG"))
        _add(tar, "s/0001.txt", b"a red  bird\n")
        _add(tar, "s/0002.png", _png_bytes(1))
        _add(tar, "s/0002.json", json.dumps({"caption": "two cats", "url": "x"}).encode())
        _add(tar, "s/0003.txt", b"no image")
    with tarfile.open(folder / "00001.tar", "w") as tar:
        _add(tar, "0004.jpg", b"not a jpeg")
        _add(tar, "0004.txt", b"broken")
        _add(tar, "0005.webp", _png_bytes(2, "WEBP"))
        _add(tar, "0005.txt", b"a boat")


def test_webdataset_shards_and_previews(tmp_path):
    _shards(tmp_path / "previews" / "train")
    ds = instantiate_from_config({"target": "ldm.data.previews.pytorch_dataset.PreviewsTrain",
                                  "params": {"size": 16, "root": str(tmp_path / "previews")}})
    assert len(ds) == 4  # 0003 has no image
    assert [ds[i]["caption"] for i in (0, 1, 3)] == ["a red bird", "two cats", "a boat"]
    _check_image(ds[0], 16)
    with pytest.warns(BadImageWarning, match="00001.tar#2"):
        assert ds[2] is None  # the broken image is skipped, and no other sample served in its place
    assert len(ds.skipped) == 1
    with pytest.raises(FileNotFoundError, match="img2dataset"):
        from ldm.data.laion import LAIONValidation
        LAIONValidation(root=str(tmp_path / "previews"))


def test_conceptual_captions_tsv(tmp_path):
    from ldm.data.laion import ConceptualCaptionsTrain
    _img(tmp_path / "train" / "0" / "a.jpg", fmt="JPEG")
    _img(tmp_path / "train" / "b.png")
    (tmp_path / "train.tsv").write_text("file\tcaption\n0/a.jpg\ta photo of a house\n")
    ds = ConceptualCaptionsTrain(size=16, root=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captions = [ds[i] and ds[i]["caption"] for i in range(len(ds))]
    assert captions == ["a photo of a house", None]  # b.png has no caption: skipped, not replaced
    assert any("no caption" in str(w.message) for w in caught)


# ------------------------------------------------------------------------------ semantic synthesis

def _landscapes(root, n_labels_used=3):
    for name, split in (("p0", "train"), ("p1", "validation")):
        _img(root / "images" / f"{name}.jpg", w=24, h=20, fmt="JPEG")
        seg = np.zeros((20, 24), np.uint8)
        seg[:, 12:] = n_labels_used - 1
        (root / "segmentations").mkdir(parents=True, exist_ok=True)
        Image.fromarray(seg, mode="L").save(root / "segmentations" / f"{name}.png")
        _lines(root / f"{split}.txt", [f"{name}.jpg"])


def test_rfw_segmentation_one_hot(tmp_path):
    from ldm.data.landscapes import RFWValidation
    _landscapes(tmp_path)
    ds = instantiate_from_config({"target": "ldm.data.landscapes.RFWValidation", "params": {
        "size": 16, "crop_size": 12, "segmentation_to_float32": True, "n_labels": 5, "root": str(tmp_path)}})
    assert isinstance(ds, RFWValidation)
    ex = ds[0]
    _check_image(ex, 12)
    seg = ex["segmentation"]
    assert seg.shape == (12, 12, 5) and seg.dtype == np.float32
    np.testing.assert_array_equal(seg.sum(-1), 1.0)
    # 24x20 -> 19x16 (rounded), center crop columns [3, 15): the label edge at x = 12/24 lands at 6.
    labels = seg.argmax(-1)
    assert (labels[:, :6] == 0).all() and (labels[:, 7:] == 2).all()
    assert ds.__class__(n_labels=5, root=str(tmp_path), segmentation_to_float32=False)[0]["segmentation"].dtype == np.float64


def test_segmentation_labels_beyond_n_labels_are_skipped(tmp_path):
    from ldm.data.landscapes import SFLCKRTrain
    _landscapes(tmp_path, n_labels_used=9)
    ds = SFLCKRTrain(size=16, crop_size=12, n_labels=5, root=str(tmp_path))
    with pytest.raises(ValueError, match="none of its 1 image"), pytest.warns(BadImageWarning, match="label id 8"):
        ds[0]


# ------------------------------------------------------------------------------ inpainting

def test_places_inpainting_examples(tmp_path):
    from ldm.data.masks import COVERAGE
    from ldm.data.places import PlacesInpaintingTrain, PlacesInpaintingValidation
    _img(tmp_path / "val" / "a" / "x.jpg", w=40, h=32, fmt="JPEG")
    _img(tmp_path / "train" / "y.jpg", w=40, h=32, fmt="JPEG")
    val = PlacesInpaintingValidation(size=32, mask_kind="hard", root=str(tmp_path))
    ex = val[0]
    assert set(ex) == {"image", "mask", "masked_image", "file_path_", "relpath"}
    _check_image(ex, 32)
    mask = ex["mask"]
    assert mask.shape == (32, 32, 1) and mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    assert COVERAGE["hard"][0] <= mask.mean() <= COVERAGE["hard"][1]
    np.testing.assert_allclose(ex["masked_image"], (1 - mask) * (ex["image"] + 1) - 1, atol=1e-6)
    assert (ex["masked_image"][mask[..., 0] == 1] == -1).all()  # the hole is black, as inpainting_big expects
    keep = mask[..., 0] == 0
    np.testing.assert_allclose(ex["masked_image"][keep], ex["image"][keep], atol=1e-6)
    np.testing.assert_array_equal(val[0]["mask"], mask)  # fixed evaluation masks
    assert PlacesInpaintingTrain(size=16, root=str(tmp_path))[0]["mask"].shape == (16, 16, 1)
    # precomputed masks
    m = np.zeros((32, 40), np.uint8)
    m[:, :20] = 255
    (tmp_path / "val_masks" / "a").mkdir(parents=True)
    Image.fromarray(m).save(tmp_path / "val_masks" / "a" / "x.png")
    from_file = PlacesInpaintingValidation(size=16, use_mask_files=True, root=str(tmp_path))[0]["mask"]
    assert from_file[:, :8].all() and not from_file[:, 8:].any()
    with pytest.raises(FileNotFoundError, match="places2.csail.mit.edu"):
        PlacesInpaintingTrain(root=str(tmp_path / "missing"))


# ------------------------------------------------------------------------------ batching

def test_data_module_collates_layout_and_caption_batches(tmp_path):
    _openimages(tmp_path / "oi")
    _shards(tmp_path / "laion" / "validation")
    dm = DataModuleFromConfig(batch_size=2, num_workers=0, validation={
        "target": "ldm.data.openimages.OpenImagesBBoxValidation", "params": {"size": 16, "root": str(tmp_path / "oi")}},
        test={"target": "ldm.data.laion.LAIONValidation", "params": {"size": 16, "root": str(tmp_path / "laion")}})
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert tuple(batch["image"].shape) == (2, 16, 16, 3)
    assert tuple(batch["coordinates_bbox"].shape) == (2, 92) and str(batch["coordinates_bbox"].dtype) == "torch.int64"
    text = next(iter(dm.test_dataloader()))
    assert text["caption"] == ["a red bird", "two cats"]


# ------------------------------------------------------------------------------ OpenImages box index cache

def _fail_parse(path):
    raise AssertionError(f"{path} was parsed again although its cached index is valid")


def test_openimages_box_index_is_cached_reused_and_invalidated(tmp_path, monkeypatch):
    from ldm.data import openimages_boxes
    from ldm.data.openimages import OpenImagesBBoxValidation
    _openimages(tmp_path)
    csv_path = tmp_path / "annotations" / "validation-annotations-bbox.csv"
    cache = Path(f"{csv_path}.boxindex.npz")
    first = OpenImagesBBoxValidation(size=16, root=str(tmp_path))
    assert cache.is_file()
    with np.load(cache, allow_pickle=False) as z:
        assert z["ids"].tolist() == [b"bbb"] and z["offsets"].tolist() == [0, 3]
        assert int(z["source_size"]) == csv_path.stat().st_size
    expected = first[0]

    monkeypatch.setattr(openimages_boxes, "parse_box_csv", _fail_parse)
    again = OpenImagesBBoxValidation(size=16, root=str(tmp_path))  # served from the cache
    np.testing.assert_array_equal(again[0]["coordinates_bbox"], expected["coordinates_bbox"])
    np.testing.assert_array_equal(again[0]["bboxes"], expected["bboxes"])
    monkeypatch.undo()

    # A CSV of another size: parsed again, the new box is seen, the cache rewritten.
    with open(csv_path, "a") as f:
        f.write("ccc,xclick,/m/01,1,0.25,0.75,0.25,0.75,0,0,0,0,0\n")
    changed = OpenImagesBBoxValidation(size=16, root=str(tmp_path))
    assert changed[1]["n_objects"] == 1 and changed[1]["relpath"] == "ccc.jpg"
    with np.load(cache, allow_pickle=False) as z:
        assert z["ids"].tolist() == [b"bbb", b"ccc"]
    # Same size, new modification time (an edited value): parsed again too.
    text = csv_path.read_text().replace("ccc,xclick,/m/01", "ccc,xclick,/m/02")
    csv_path.write_text(text)
    st = csv_path.stat()
    os.utime(csv_path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    relabelled = OpenImagesBBoxValidation(size=16, root=str(tmp_path))
    assert relabelled[1]["bboxes"][0, 0] == 1  # class 1 = /m/02 (Dog)


def test_openimages_box_csv_parsing_and_cache_fallback(tmp_path, monkeypatch):
    from ldm.data.openimages_boxes import box_index_cache_paths, load_box_index, parse_box_csv
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text('LabelName,"Source, quoted",ImageID,XMin,XMax,YMin,YMax\r\n'
                        '/m/b,"a, b",img2,0.5,0.75,0.0,1.0\r\n'
                        '/m/a,x,img1,0.0,0.5,0.25,0.5\r\n'
                        '/m/a,x,img2,0.0,0.25,0.0,0.125\r\n')
    index = parse_box_csv(str(csv_path))
    assert index.ids.tolist() == [b"img1", b"img2"] and index.offsets.tolist() == [0, 1, 3]
    assert index.label_names == ["/m/b", "/m/a"]
    rows = index.rows({"/m/a": 0, "/m/b": 1})
    np.testing.assert_array_equal(rows, [[0, 0.0, 0.25, 0.5, 0.5], [1, 0.5, 0.0, 0.75, 1.0], [0, 0.0, 0.0, 0.25, 0.125]])
    with pytest.raises(ValueError, match="label '/m/b' of image img2 is not a listed class"):
        index.rows({"/m/a": 0})
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,LabelName,XMin,XMax,YMin\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['YMax'\]"):
        parse_box_csv(str(bad))
    bad.write_text("ImageID,LabelName,XMin,XMax,YMin,YMax\nimg,/m/a,0.1,zero,0.1,0.2\n")
    with pytest.raises(ValueError, match="bad.csv: malformed row"):
        parse_box_csv(str(bad))
    # The folder beside the CSV cannot take the cache: it goes to the user cache instead.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    beside, user = box_index_cache_paths(str(csv_path))
    os.mkdir(beside)  # a directory where the cache file would go
    load_box_index(str(csv_path))
    assert os.path.isfile(user) and user.startswith(str(tmp_path / "user-cache" / "ldm" / "openimages"))
    monkeypatch.setattr("ldm.data.openimages_boxes.parse_box_csv", _fail_parse)
    assert load_box_index(str(csv_path)).ids.tolist() == [b"img1", b"img2"]


# ------------------------------------------------------------------------------ shared plumbing

def test_webdataset_captions_use_the_skip_mixin_not_image_folder(tmp_path):
    from ldm.data.folder import ImageFolder
    from ldm.data.laion import LAIONTrain, WebDatasetCaptions
    from ldm.data.skipping import SkipBadImages
    assert issubclass(WebDatasetCaptions, SkipBadImages) and not issubclass(WebDatasetCaptions, ImageFolder)
    _shards(tmp_path / "laion" / "train")
    ds = LAIONTrain(size=16, root=str(tmp_path / "laion"))
    assert ds.crop == "random" and len(ds) == 4 and ds.skipped == {}
    assert ds.relpath(3) == "00001.tar#3" and ds.path(3) == str(tmp_path / "laion" / "train" / "00001.tar") + "#3"
    with pytest.warns(BadImageWarning):
        ds[2]
    assert list(ds.skipped) == [ds.path(2)]
    ds = WebDatasetCaptions(str(tmp_path / "laion" / "train"), size=None)
    ds._index[:, 2] = 3  # every image member cut to 3 bytes
    with pytest.warns(BadImageWarning), pytest.raises(ValueError, match=r"none of its 4 sample\(s\)"):
        ds[0]


@pytest.mark.parametrize("target, fixed", [
    ("ldm.data.faceshq.FFHQTrain", {"name": "ffhq", "split": "train"}),
    ("ldm.data.imagenet.ImageNetSRValidation", {"split": "validation"}),
    ("ldm.data.openimages.OpenImagesBBoxTrain", {"split": "train"}),
    ("ldm.data.previews.pytorch_dataset.PreviewsValidation", {"name": "previews", "split": "validation"}),
])
def test_named_dataset_variants_have_real_signatures(target, fixed):
    import inspect
    from ldm.config.targets import get_obj_from_str
    cls = get_obj_from_str(target)
    assert f"{cls.__module__}.{cls.__qualname__}" == target
    params = inspect.signature(cls).parameters
    assert not set(fixed) & set(params) and "size" in params and "root" in params
    with pytest.raises(ValueError, match=f"{cls.__name__} fixes"):
        cls(**{next(iter(fixed)): "other"})


def test_variant_defaults_follow_the_original_classes():
    import inspect
    from ldm.data.imagenet import ImageNetSRTrain, ImageNetSRValidation
    from ldm.data.lsun import LSUNBedroomsValidation, LSUNChurchesTrain
    from ldm.data.places import PlacesInpaintingTrain, PlacesInpaintingValidation

    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls).parameters.items()}

    assert defaults(ImageNetSRTrain)["random_crop"] is True and defaults(ImageNetSRTrain)["seed"] is None
    assert defaults(ImageNetSRValidation)["random_crop"] is False and defaults(ImageNetSRValidation)["seed"] == 0
    assert defaults(LSUNChurchesTrain)["flip_p"] == 0.5 and defaults(LSUNBedroomsValidation)["flip_p"] == 0.0
    assert "use_mask_files" not in defaults(PlacesInpaintingTrain)
    assert defaults(PlacesInpaintingValidation)["size"] == 512 and defaults(PlacesInpaintingValidation)["mask_seed"] == 0
