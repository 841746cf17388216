"""ldm.eval metrics against independent computations: FID against the closed form for Gaussians
and a scipy ``sqrtm`` computation, KID and precision/recall on constructed cases with known
answers, PSNR and SSIM against scikit-image and exact cases, statistics files and pairing."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

import ldm.eval as E
from ldm.eval import metrics as M


def _sqrtm_fid(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's matrix square root (pytorch-fid's computation)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _stats(mu, sigma) -> M.Statistics:
    return M.Statistics(mu=np.asarray(mu, float), sigma=np.asarray(sigma, float), count=100, fingerprint="",
                        extractor="x", dims=len(mu))


def test_fid_closed_form_for_commuting_gaussians():
    # diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 4) ** 2
    assert E.fid(_stats(mu1, np.diag(a)), _stats(mu2, np.diag(b))) == pytest.approx(expected, rel=1e-10)
    assert E.fid(_stats(mu1, np.diag(a)), _stats(mu1, np.diag(a))) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_gaussian_features_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    d = 16
    A, B = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    x = rng.normal(size=(4000, d)) @ A.T + 0.3
    y = rng.normal(size=(3000, d)) @ B.T
    sx, sy = E.Statistics.from_features(x.astype(np.float32)), E.Statistics.from_features(y.astype(np.float32))
    np.testing.assert_allclose(sx.sigma, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-12)
    assert E.fid(sx, sy) == pytest.approx(_sqrtm_fid(sx.mu, sx.sigma, sy.mu, sy.sigma), rel=1e-6)
    # and the population value for the distributions the features were drawn from
    population = _sqrtm_fid(np.full(d, 0.3), A @ A.T, np.zeros(d), B @ B.T)
    assert E.fid(sx, sy) == pytest.approx(population, rel=0.05)


def test_fid_refuses_features_of_different_networks_or_sizes():
    with pytest.raises(ValueError, match="different dimension"):
        E.fid(_stats([0, 0], np.eye(2)), _stats([0, 0, 0], np.eye(3)))
    a, b = _stats([0, 0], np.eye(2)), _stats([0, 0], np.eye(2))
    b.extractor = "other"
    with pytest.raises(ValueError, match="different networks"):
        E.fid(a, b)


def test_kid_on_constant_sets_and_against_the_mmd_formula():
    # k(a, b) = (a.b / d + 1)^3: constant sets 0 and c*1 give k = 1, (c^2 + 1)^3 and 1, so MMD^2 = (c^2 + 1)^3 - 1
    zeros, ones = np.zeros((12, 5)), np.ones((12, 5))
    assert E.kid(zeros, zeros.copy(), subsets=2, subset_size=12) == (0.0, 0.0)
    assert E.kid(zeros, ones, subsets=4, subset_size=6) == (pytest.approx(7.0), pytest.approx(0.0))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 1.0
    # Bińkowski et al. 2018's unbiased estimator (within-set terms without the diagonal), written out
    k = lambda a, b: (a @ b.T / 5 + 1.0) ** 3  # noqa: E731
    m = 30
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
           - 2 * kxy.mean())
    mean, std = E.kid(x, y, subsets=2, subset_size=30)  # the whole sets: every subset is the set itself
    assert mean == pytest.approx(mmd, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_precision_recall_on_constructed_sets():
    # real: 8 points on a line, spacing 1 -> every 3-NN radius is 3 (ends) or 2 (middle)
    real = np.arange(8, dtype=np.float32)[:, None] * np.array([[1.0, 0.0]], dtype=np.float32)
    inside = np.array([[3.5, 0.0], [0.0, 1.0], [7.0, 0.5]], dtype=np.float32)     # within a real ball
    outside = np.array([[20.0, 0.0], [3.5, 10.0]], dtype=np.float32)               # far from all
    fake = np.concatenate([inside, outside])
    precision, recall = E.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(3 / 5)
    # fake 3-NN radii: fake points far apart, radii large for the outliers; real points near the
    # inside points are covered; recall counts real points inside some fake ball
    d = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    radii = np.sort(d, axis=1)[:, 3]
    covered = (np.linalg.norm(real[:, None] - fake[None], axis=-1) <= radii[None]).any(axis=1)
    assert recall == pytest.approx(covered.mean())
    assert E.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    with pytest.raises(ValueError, match="k=3 needs more than 3"):
        E.precision_recall(real[:3], fake)


def test_inception_score_bounds():
    uniform = np.zeros((20, 7))
    assert E.inception_score(uniform, splits=2)[0] == pytest.approx(1.0)
    confident = np.full((70, 7), -50.0)
    confident[np.arange(70), np.arange(70) % 7] = 50.0  # one-hot predictions, classes balanced
    assert E.inception_score(confident, splits=1)[0] == pytest.approx(7.0, rel=1e-6)


def _images(seed, n=3, h=24, w=20):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_psnr_and_ssim_match_scikit_image():
    x = _images(0)
    noise = np.random.default_rng(1).integers(-40, 41, x.shape)
    y = np.clip(x.astype(int) + noise, 0, 255).astype(np.uint8)
    psnr = E.psnr_values(x, y)
    ssim = E.ssim_values(x, y)
    for i in range(len(x)):
        assert psnr[i] == pytest.approx(sk_psnr(x[i], y[i], data_range=255), rel=1e-6)
        assert ssim[i] == pytest.approx(sk_ssim(x[i], y[i], channel_axis=2, gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, data_range=255), rel=1e-9)


def test_psnr_exact_and_ssim_of_identical_images():
    x = np.zeros((1, 16, 16, 3), np.uint8)
    y = x.copy()
    y[0, 0, 0, 0] = 255  # MSE = 255^2 / 768 -> PSNR = 10 log10(768)
    assert E.psnr_values(x, y)[0] == pytest.approx(10 * np.log10(768.0), rel=1e-6)
    z = _images(2, n=1)
    assert E.ssim_values(z, z)[0] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        E.ssim_values(x[:, :8, :8], y[:, :8, :8])


def test_lpips_values_per_image():
    from ldm.modules.losses.lpips import LPIPS

    with pytest.warns(UserWarning, match="RANDOM"):
        net = LPIPS(pretrained=False).eval()
    x, y = _images(3, n=2, h=32, w=32), _images(4, n=2, h=32, w=32)
    v = E.lpips_values(x, y, net)
    assert v.shape == (2,)
    assert E.lpips_values(x, x, net) == pytest.approx([0.0, 0.0], abs=1e-7)
    ref = net(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1,
              torch.from_numpy(y).permute(0, 3, 1, 2).float() / 127.5 - 1).flatten().numpy()
    np.testing.assert_allclose(v, ref, rtol=1e-6)


def test_statistics_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    s = E.Statistics.from_features(rng.normal(size=(10, 4)), "folder:abc", "net-4")
    path = s.save(tmp_path / "ref.npz")
    assert E.Statistics.is_statistics_file(path)
    t = E.Statistics.load(path)
    np.testing.assert_array_equal(t.mu, s.mu)
    np.testing.assert_array_equal(t.sigma, s.sigma)
    assert (t.count, t.fingerprint, t.extractor, t.dims) == (10, "folder:abc", "net-4", 4)
    np.savez(tmp_path / "other.npz", mu=np.zeros(2), sigma=np.eye(2))
    with pytest.raises(ValueError, match="not a statistics file"):
        E.Statistics.load(tmp_path / "other.npz")


def test_image_sets_pair_by_sorted_name_and_refuse_mismatches(tmp_path):
    imgs = _images(5, n=3, h=12, w=12)
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name, arr in zip(["b.png", "sub/c.png", "a.png"], imgs):
        Image.fromarray(arr).save(tmp_path / "a" / name)
    folder = E.open_images(tmp_path / "a")
    assert folder.names == ["a.png", "b.png", "sub/c.png"]
    np.testing.assert_array_equal(np.concatenate(list(folder.batches(2))), imgs[[2, 0, 1]])
    np.savez(tmp_path / "s.npz", arr_0=imgs[[2, 0, 1]])
    arrays = E.open_images(tmp_path / "s.npz")
    E.check_paired(folder, arrays)
    assert M.psnr_values(next(folder.batches(3)), next(arrays.batches(3))).tolist() == [np.inf] * 3
    np.savez(tmp_path / "short.npz", arr_0=imgs[:2])
    with pytest.raises(ValueError, match="same size: --real .* has 3 images, --fake .* has 2"):
        E.check_paired(folder, E.open_images(tmp_path / "short.npz"))
    np.savez(tmp_path / "big.npz", arr_0=_images(6, n=3, h=16, w=12))
    with pytest.raises(ValueError, match="12x12, --fake .* is 16x12"):
        E.check_paired(folder, E.open_images(tmp_path / "big.npz"))
    Image.fromarray(_images(7, n=1, h=10, w=12)[0]).save(tmp_path / "a" / "d.png")
    with pytest.raises(ValueError, match="d.png is 10x12 but .*a.png is 12x12"):
        list(E.open_images(tmp_path / "a").batches(8))
    with pytest.raises(FileNotFoundError, match="--fake .*nope"):
        E.open_images(tmp_path / "nope")
