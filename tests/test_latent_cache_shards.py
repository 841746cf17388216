"""The latent cache as WebDataset-style tar shards: the same examples, batches and loss as the
default format, standard tar samples, split between ranks, and damage skipped and counted."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from ldm.data import latent_cache as lc
from ldm.data.base import collate_examples
from ldm.data.laion import index_tar
from ldm.data.resumable import EpochSampler
from ldm.data.skipping import BadImageWarning
from ldm.util import instantiate_from_config
from tests.test_latent_cache import DEMO, REPO, TINY, VQ_FIRST_STAGE, setup_model


@pytest.fixture(scope="module", params=["kl", "vq"])
def caches(request, tmp_path_factory):
    """The same model's cache in both formats: train has 8 examples, in tar shards of 4."""
    config, model = setup_model(VQ_FIRST_STAGE if request.param == "vq" else ())
    model.train()
    pt, tar = tmp_path_factory.mktemp("pt"), tmp_path_factory.mktemp("tar")
    lc.build_cache(model, config, pt, batch_size=4)
    lc.build_cache(model, config, tar, batch_size=4, shard_size=4, format="tar")
    return request.param, config, model, pt, tar


def test_tar_cache_gives_the_same_examples_batches_and_loss(caches):
    variant, config, model, pt, tar = caches
    entry = json.loads((tar / lc.MANIFEST).read_text())["splits"]["train"]
    assert entry["format"] == "tar" and entry["length"] == 8
    assert [s["file"] for s in entry["shards"]] == ["train/shard-00000.tar", "train/shard-00001.tar"]
    assert json.loads((pt / lc.MANIFEST).read_text())["fingerprint"] == \
        json.loads((tar / lc.MANIFEST).read_text())["fingerprint"]
    a, b = lc.CachedLatents(str(pt), "train"), lc.CachedLatents(str(tar), "train")
    assert (a.format, b.format, len(a), len(b)) == ("pt", "tar", 8, 8)
    assert (lc.COND_KEY in b[0]) == (variant == "vq")
    for i in range(8):
        x, y = a[i], b[i]
        assert sorted(x) == sorted(y)
        for k in x:
            assert type(x[k]) is type(y[k])
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (i, k)
            else:
                assert x[k] == y[k], (i, k)
    losses = []
    for ds in (a, b):
        batch = collate_examples([ds[i] for i in range(4)])
        torch.manual_seed(1)
        losses.append(model.shared_step(batch)[0])
    assert torch.equal(losses[0], losses[1])
    # main.py --latent-cache reads the tar cache through the same target.
    data = lc.cached_data_config(config, model, tar)
    assert data.params.train.target == "ldm.data.latent_cache.CachedLatents"
    assert instantiate_from_config(data.params.train).format == "tar"


def test_tar_shards_are_webdataset_samples(caches):
    """Read with nothing but ``tarfile``: members grouped by key (the name up to the first dot),
    each sample's members adjacent, keys in example order, .npy arrays and a .json of the rest."""
    variant, _, _, _, tar = caches
    cached = lc.CachedLatents(str(tar), "train")
    samples: OrderedDict[str, dict] = OrderedDict()
    for shard in sorted((tar / "train").glob("*.tar")):
        with tarfile.open(shard) as t:
            previous = None
            for m in t:
                key, ext = m.name.split(".", 1)
                assert key == previous or key not in samples, f"{m.name}: the sample's members are not adjacent"
                previous = key
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    assert list(samples) == [f"{i:09d}" for i in range(8)]
    latents = ["latent.npy", "latent_cond.npy"] if variant == "vq" else ["latent_mean.npy", "latent_std.npy"]
    for i, parts in enumerate(samples.values()):
        assert {*latents, "class_label.npy"} <= set(parts)
        for ext, data in parts.items():
            if ext.endswith(".npy"):
                expected = cached[i][ext[:-4]].numpy()
                np.testing.assert_array_equal(np.load(io.BytesIO(data)), expected, strict=True)
            else:
                assert ext == "json" and json.loads(data) == {
                    k: v for k, v in cached[i].items() if not isinstance(v, torch.Tensor)}


def test_two_ranks_split_the_tar_cache_without_overlap(caches):
    _, _, _, pt, tar = caches
    cached, reference = lc.CachedLatents(str(tar), "train"), lc.CachedLatents(str(pt), "train")
    shares = [[i for i, _ in EpochSampler(len(cached), shuffle=True, seed=3, num_replicas=2, rank=r)]
              for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 4
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == list(range(8))
    for i in shares[1]:
        assert torch.equal(cached[i]["class_label"], reference[i]["class_label"])


def test_corrupt_member_and_truncated_shard_are_skipped_and_counted(caches, tmp_path):
    variant, _, _, pt, tar = caches
    key = lc.LATENT_KEY if variant == "vq" else lc.MEAN_KEY
    damaged = tmp_path / "cache"
    shutil.copytree(tar, damaged)
    shard0, shard1 = damaged / "train" / "shard-00000.tar", damaged / "train" / "shard-00001.tar"
    # Example 1: its latent .npy loses the .npy magic bytes.
    offset, _ = index_tar(str(shard0))[0]["000000001"][f".{key}.npy"]
    with open(shard0, "r+b") as f:
        f.seek(offset)
        f.write(b"broken")
    # Shard 1 is cut inside example 6's first member: examples 6 and 7 are lost.
    cut, _ = index_tar(str(shard1))[0]["000000006"][".class_label.npy"]
    with open(shard1, "r+b") as f:
        f.truncate(cut + 10)
    with pytest.warns(BadImageWarning, match="shard-00001.tar: unreadable after"):
        cached = lc.CachedLatents(str(damaged), "train")
    assert len(cached) == 6 and cached.left_out == 2 and len(cached.damaged_shards) == 1
    reference = lc.CachedLatents(str(pt), "train")
    with pytest.warns(BadImageWarning, match=rf"shard-00000\.tar#000000001.*corrupt member \.{key}\.npy"):
        examples = [cached[i] for i in range(6)]
    assert examples[1] is None
    assert list(cached.skipped) == [f"{shard0}#000000001"]
    for i in (0, 2, 3, 4, 5):
        assert torch.equal(examples[i][key], reference[i][key])
    assert len(collate_examples(examples[:4])[key]) == 3  # the bad example is dropped from its batch


def test_cache_script_writes_tar_shards(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cache_latents", REPO / "scripts" / "cache_latents.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "cache"
    assert script.main(["--base", DEMO, *TINY, "--out", str(out), "--batch-size", "4", "--splits", "train",
                        "--format", "tar"]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["shard-00000.tar"]
    cached = lc.CachedLatents(str(out), "train")
    assert cached.format == "tar" and len(cached) == 8 and cached[7][lc.MEAN_KEY].shape == (3, 4, 4)
    with pytest.raises(SystemExit):
        script.parse_args(["--base", DEMO, "--out", str(out), "--format", "zip"])
