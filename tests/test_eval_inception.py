"""The FID Inception path: weight lookup (flag, environment, torch hub cache), the clear error
without the file, and features/scores through torch-fidelity's network, with a randomly
initialised network the test saves in the standard weight-file format."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

import ldm.eval as E


class _RandomInception(FeatureExtractorInceptionV3):
    def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
        return None


def random_inception_weights(folder) -> tuple:
    """A random FID Inception saved as the standard file (a plain state dict, like the release)."""
    torch.manual_seed(0)
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    net = _RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    path = folder / E.INCEPTION_FILENAME
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("weights"))


def test_lookup_order_and_the_missing_file_error(tmp_path, monkeypatch, weights):
    path, _ = weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(E.INCEPTION_WEIGHTS_ENV, raising=False)
    assert E.inception_cache_path() == tmp_path / "torch" / "hub" / "checkpoints" / E.INCEPTION_FILENAME
    with pytest.raises(E.InceptionWeightsMissing) as err:
        E.find_inception_weights()
    message = str(err.value)
    assert E.INCEPTION_FILENAME in message and E.INCEPTION_URL in message
    assert str(E.inception_cache_path()) in message and "--inception-weights" in message
    with pytest.raises(E.InceptionWeightsMissing, match="--inception-weights /no/such.pth"):
        E.find_inception_weights("/no/such.pth")
    monkeypatch.setenv(E.INCEPTION_WEIGHTS_ENV, "/no/env.pth")
    with pytest.raises(E.InceptionWeightsMissing, match="LDM_INCEPTION_WEIGHTS=/no/env.pth"):
        E.find_inception_weights()
    assert E.find_inception_weights(path) == path  # the flag comes first
    monkeypatch.setenv(E.INCEPTION_WEIGHTS_ENV, str(path))
    assert E.find_inception_weights() == path
    monkeypatch.delenv(E.INCEPTION_WEIGHTS_ENV)
    cached = E.inception_cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    assert E.find_inception_weights() == cached


def test_a_file_of_another_network_is_refused(tmp_path):
    other = tmp_path / E.INCEPTION_FILENAME
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match="not the FID Inception weight file"):
        E.InceptionFeatures(other, dims=64)


def test_features_and_scores_through_the_standard_network(weights):
    path, net = weights
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    ext = E.InceptionFeatures(path, dims=2048)
    assert ext.is_inception and ext.name == "inception-v3-compat-2048"
    feats = E.extract_features(ext, [images[:2], images[2:]], progress=False)
    assert feats.features.shape == (3, 2048) and feats.logits.shape == (3, 1008)
    # the same numbers as torch-fidelity's own module with these weights
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                            feature_extractor_weights_path=str(path))
    ref_f, ref_l = reference(x)
    np.testing.assert_allclose(feats.features, ref_f.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats.logits, ref_l.numpy(), rtol=1e-5, atol=1e-6)
    small = E.InceptionFeatures(path, dims=64)
    assert E.extract_features(small, [images[:2]], progress=False).features.shape == (2, 64)
    with pytest.raises(ValueError, match="one of \\(64, 192, 768, 2048\\)"):
        E.InceptionFeatures(path, dims=100)
