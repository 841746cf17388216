"""Every conditioning encoder built from a reference config has exactly the original's
``cond_stage_model.*`` keys and shapes, so released checkpoints load strictly."""
from __future__ import annotations

import pytest
import torch

from ldm.util import instantiate_from_config
from tests.reference_data import all_manifests, load_config, manifest_for, state_dict_shapes

PREFIX = "cond_stage_model."
FIRST_STAGE_PREFIX = "first_stage_model."
INPAINTING_BIG = "latent-diffusion/models/ldm/inpainting_big/config.yaml"


def _with_prefix(manifest: dict, prefix: str) -> dict[str, list[int]]:
    return {k[len(prefix):]: v for k, v in manifest["state_dict"].items() if k.startswith(prefix)}


def _cases():
    """(source, expected keys) of every manifest whose cond stage is an encoder of its own; the
    ones conditioned through the first stage (`__is_first_stage__`) are listed separately."""
    cases, first_stage_conditioned = [], []
    for source, manifest in all_manifests():
        expected = _with_prefix(manifest, PREFIX)
        if not expected:
            continue
        if isinstance(load_config(source).model.params.cond_stage_config, str):
            first_stage_conditioned.append(source)
        else:
            cases.append(pytest.param(source, expected, id=source.removesuffix(".yaml")))
    return cases, first_stage_conditioned


CASES, FIRST_STAGE_CONDITIONED = _cases()


def test_every_encoder_class_is_covered():
    targets = {str(load_config(c.values[0]).model.params.cond_stage_config.get("target")) for c in CASES}
    assert targets == {
        "ldm.modules.encoders.modules.ClassEmbedder",
        "ldm.modules.encoders.modules.BERTEmbedder",
        "ldm.modules.encoders.modules.SpatialRescaler",
        "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    }


def test_first_stage_as_cond_stage_has_the_autoencoder_keys():
    """inpainting_big encodes its masked-image condition with the first-stage autoencoder itself
    (`__is_first_stage__`): the released checkpoint holds that one module under both prefixes,
    so our first stage built from its config must match the `cond_stage_model.*` keys too."""
    assert FIRST_STAGE_CONDITIONED == [INPAINTING_BIG]
    params = load_config(INPAINTING_BIG).model.params
    assert params.cond_stage_config == "__is_first_stage__"
    manifest = manifest_for(INPAINTING_BIG)
    cond_keys = _with_prefix(manifest, PREFIX)
    assert len(cond_keys) == 185 and cond_keys == _with_prefix(manifest, FIRST_STAGE_PREFIX)
    with torch.device("meta"):
        autoencoder = instantiate_from_config(params.first_stage_config, path="model.params.first_stage_config")
    assert state_dict_shapes(autoencoder) == cond_keys


@pytest.mark.parametrize("source, expected", CASES)
def test_cond_stage_state_dict_matches_manifest(source, expected):
    cond = load_config(source).model.params.cond_stage_config
    # Meta tensors: full-size shapes without allocating the 1.4B-parameter text encoders.
    with torch.device("meta"):
        encoder = instantiate_from_config(cond, path="model.params.cond_stage_config")
    got = state_dict_shapes(encoder)
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected} == expected
