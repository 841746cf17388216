"""WebDataset-style tar shards at scale: labels and extra keys, corrupt samples skipped and counted,
a shard cut short, and the training loader splitting them between ranks and workers and resuming
mid-epoch on each rank."""
from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import collate_examples
from ldm.data.laion import WebDatasetCaptions
from ldm.data.resumable import EpochSampler, ResumableDataLoader, SeededItems
from ldm.data.skipping import BadImageWarning
from tests.fake_data_trees import add_member as add

N_GOOD = 17  # labelled samples with a readable image
BAD = {5: "corrupt image", 11: "no label"}


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_shards(folder: Path) -> None:
    """19 samples keyed 000..018 over 3 shards (7 per shard); sample 5's image is corrupt, sample 11
    has no label; a member without image; a fourth shard cut short after its first sample."""
    folder.mkdir(parents=True)
    for s in range(3):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for k in range(s * 7, min(19, (s + 1) * 7)):
                add(tar, f"{k:03d}.png", b"\x89PNG broken" if k == 5 else png(10 * k))
                add(tar, f"{k:03d}.json", json.dumps({"caption": f"sample {k}", "url": f"u{k}"}).encode())
                if k != 11:
                    add(tar, f"{k:03d}.cls", f"{k % 4}\n".encode())
            add(tar, f"x{s}.txt", b"a caption without an image")
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        add(tar, "100.png", png(250))
        add(tar, "100.json", json.dumps({"caption": "sample 100"}).encode())
        add(tar, "100.cls", b"1")
        add(tar, "101.png", png(251))
        add(tar, "101.cls", b"2")
    (folder / "00003.tar").write_bytes(whole.getvalue()[:3 * 512 + 100])  # cut inside sample 100


def values(batch) -> list[int]:
    """Sample keys back from the images (each image is one grey level, 10 * key)."""
    grey = (batch["image"][:, 0, 0, 0] + 1.0) * 127.5
    return [int(round(float(v))) // 10 for v in grey]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards") / "train"
    write_shards(folder)
    return folder


def test_shards_examples_labels_extra_keys_and_damage_counted(shard_dir):
    with pytest.warns(BadImageWarning, match="00003.tar: unreadable after"):
        ds = WebDatasetCaptions(str(shard_dir), size=None)
    assert len(ds) == 19  # 19 samples in the three intact shards; the cut shard's last sample is dropped
    assert ds.left_out == 3 and len(ds.damaged_shards) == 1 and ds.has_labels and ds.has_captions
    ex = ds[2]
    assert ex["caption"] == "sample 2" and ex["class_label"] == 2 and json.loads(ex["metadata"])["url"] == "u2"
    assert ex["image"].shape == (12, 12, 3) and ex["relpath"] == "00000.tar#2"
    with pytest.warns(BadImageWarning):
        assert ds[5] is None and ds[11] is None
    assert set(ds.skipped) == {ds.path(5), ds.path(11)}
    assert "no .cls label" in ds.skipped[ds.path(11)]
    batch = collate_examples([ds[0], ds[5], ds[3]])  # the corrupt sample drops out of its batch
    assert batch["class_label"].tolist() == [0, 3] and batch["caption"] == ["sample 0", "sample 3"]


def loader(shard_dir: Path, world: int, rank: int, workers: int = 0) -> ResumableDataLoader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        ds = WebDatasetCaptions(str(shard_dir), size=None)
    return ResumableDataLoader(SeededItems(ds), batch_size=3, collate_fn=collate_examples, num_workers=workers,
                               sampler=EpochSampler(len(ds), shuffle=True, seed=3, num_replicas=world, rank=rank))


def served(dl) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        return [k for batch in dl for k in values(batch)]


def test_ranks_and_workers_split_the_shards_and_each_rank_resumes_mid_epoch(shard_dir):
    world = 2
    shares = [loader(shard_dir, world, r) for r in range(world)]
    seen = [served(dl) for dl in shares]
    for dl, share in zip(shares, seen):  # each rank skipped and counted the bad samples it met
        assert len(share) + len(dl.dataset.dataset.skipped) == 19 // world
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) + sum(len(dl.dataset.dataset.skipped) for dl in shares) == 18
    assert (set(seen[0]) | set(seen[1])) <= set(range(19)) - set(BAD)
    # Two workers per rank: the same samples, in the same order.
    assert [served(loader(shard_dir, world, r, workers=2)) for r in range(world)] == seen
    # Mid-epoch resume on every rank from the one saved position (rank 0's).
    first = loader(shard_dir, world, 0)
    it = iter(first)
    next(it)
    state = first.state_dict()
    assert state == {"epoch": 0, "batches": 1, "world_size": 2}
    for r in range(world):
        restored = loader(shard_dir, world, r)
        restored.load_state_dict(state)
        rest = served(restored)
        full = served(loader(shard_dir, world, r))
        assert rest == full[len(full) - len(rest):] and len(rest) < len(full)
