"""BSR / bicubic degradations, the resampling they share, and the inpainting masks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.data.masks import COVERAGE, MASK_KINDS, MaskGenerator, make_mask, mask_coverage
from ldm.data.superres import DEGRADATIONS, SuperResolutionPair
from ldm.modules.image_degradation import (BSR, BSR_LIGHT, bicubic_downsample, bsr_degrade, degradation_fn_bsr,
                                           degradation_fn_bsr_light, resize)


def _photo(h=64, w=64, seed=0):
    """Smooth gradients plus texture, like a photo rather than white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200 + 20
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ BSR

@pytest.mark.parametrize("shape,sf", [((64, 64), 4), ((70, 53), 4), ((40, 36), 2), ((33, 65), 3)])
@pytest.mark.parametrize("config", [BSR, BSR_LIGHT], ids=["full", "light"])
def test_bsr_output_shape_is_exactly_downscaled(shape, sf, config):
    for seed in range(4):  # different random step orders and branches
        lr = bsr_degrade(_photo(*shape), sf, np.random.default_rng(seed), config)
        assert lr.shape == (shape[0] // sf, shape[1] // sf, 3)
        assert lr.dtype == np.uint8


def test_bsr_is_deterministic_given_a_seed():
    img = _photo()
    a = bsr_degrade(img, 4, np.random.default_rng(7))
    b = bsr_degrade(img, 4, np.random.default_rng(7))
    c = bsr_degrade(img, 4, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(degradation_fn_bsr(img, 4, np.random.default_rng(7))["image"], a)
    np.testing.assert_array_equal(degradation_fn_bsr_light(img, 4, np.random.default_rng(7))["image"],
                                  bsr_degrade(img, 4, np.random.default_rng(7), BSR_LIGHT))


def test_light_degradation_stays_closer_to_the_clean_downsample():
    img = _photo(64, 64, seed=1)
    clean = bicubic_downsample(img, 4).astype(np.float64)
    err = {name: np.mean([np.abs(bsr_degrade(img, 4, np.random.default_rng(s), cfg) - clean).mean()
                          for s in range(8)]) for name, cfg in (("full", BSR), ("light", BSR_LIGHT))}
    assert err["light"] < err["full"]
    assert err["light"] < 20  # mild: a few grey levels on average


def test_bsr_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        bsr_degrade(np.zeros((16, 16, 3), np.float32), 4)
    with pytest.raises(ValueError, match="sf=8"):
        bsr_degrade(np.zeros((4, 16, 3), np.uint8), 8)


# ------------------------------------------------------------------------------ resampling

def test_bicubic_x4_exact_shape_and_constant_preserved():
    assert bicubic_downsample(_photo(64, 48)).shape == (16, 12, 3)
    assert bicubic_downsample(_photo(66, 50)).shape == (16, 12, 3)  # crops to a multiple of 4 first
    flat = np.full((32, 32, 3), 93, np.uint8)
    np.testing.assert_array_equal(bicubic_downsample(flat), np.full((8, 8, 3), 93, np.uint8))


def _torch_resize(x, size, **kw):
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    return F.interpolate(t, size=size, **kw)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [(9, 7), (80, 61), (12, 29)])
@pytest.mark.parametrize("method,kw", [("nearest", dict(mode="nearest")),
                                       ("bilinear", dict(mode="bilinear", align_corners=False)),
                                       ("bicubic", dict(mode="bicubic", align_corners=False))])
def test_cv_style_resize_matches_torch(size, method, kw):
    x = np.random.default_rng(0).random((37, 29, 3))
    np.testing.assert_allclose(resize(x, size, method), _torch_resize(x, size, **kw), atol=1e-12)


def test_area_and_antialiased_bicubic_match_torch():
    x = np.random.default_rng(1).random((48, 40, 3))
    np.testing.assert_allclose(resize(x, (12, 10), "area"), _torch_resize(x, (12, 10), mode="area"), atol=1e-12)
    # torch renormalises truncated taps at the border where we replicate the edge: compare inside.
    ours = resize(x, (12, 10), "matlab_bicubic")
    ref = _torch_resize(x, (12, 10), mode="bicubic", antialias=True)
    np.testing.assert_allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-12)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_superresolution_pair_for_every_degradation(degradation):
    pair = SuperResolutionPair(32, degradation, downscale_f=4, min_crop_f=0.5, max_crop_f=1.0)
    ex = pair(_photo(48, 40), np.random.default_rng(0))
    assert set(ex) == {"image", "LR_image"}
    assert ex["image"].shape == (32, 32, 3) and ex["LR_image"].shape == (8, 8, 3)
    for v in ex.values():
        assert v.dtype == np.float32 and v.min() >= -1.0 and v.max() <= 1.0


def test_superresolution_pair_validates_its_parameters():
    with pytest.raises(ValueError, match="degradation"):
        SuperResolutionPair(32, "gaussian")
    with pytest.raises(ValueError, match="divisible"):
        SuperResolutionPair(30, "bicubic", downscale_f=4)
    with pytest.raises(ValueError, match="min_crop_f"):
        SuperResolutionPair(32, "bicubic", min_crop_f=0.8, max_crop_f=0.5)


# ------------------------------------------------------------------------------ masks

@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_coverage_lies_in_the_kind_range(kind):
    lo, hi = COVERAGE[kind]
    for seed in range(12):
        m = make_mask(kind, 64, np.random.default_rng(seed))
        assert m.shape == (64, 64) and m.dtype == np.float32
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert lo <= mask_coverage(m) <= hi, (kind, seed, mask_coverage(m))


def test_hard_split_is_40_to_50_percent_and_strokes_grow_with_kind():
    assert COVERAGE["hard"] == (0.40, 0.50)
    cov = {k: [mask_coverage(make_mask(k, 48, np.random.default_rng(s))) for s in range(16)]
           for k in ("thin", "medium", "thick", "hard")}
    assert all(0.4 <= c <= 0.5 for c in cov["hard"])
    assert np.mean(cov["thin"]) < np.mean(cov["medium"]) < np.mean(cov["thick"])


def test_masks_are_deterministic_per_seed_and_index():
    gen = MaskGenerator("mixed", seed=3)
    np.testing.assert_array_equal(gen(40, index=5), MaskGenerator("mixed", seed=3)(40, index=5))
    assert not np.array_equal(gen(40, index=5), gen(40, index=6))
    np.testing.assert_array_equal(make_mask("thick", (24, 40), np.random.default_rng(1)),
                                  make_mask("thick", (24, 40), np.random.default_rng(1)))
    assert make_mask("thick", (24, 40), np.random.default_rng(1)).shape == (24, 40)
    with pytest.raises(ValueError, match="unknown mask kind"):
        MaskGenerator("round")
