"""Access to the original configs and state-dict manifests vendored under tests/reference."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

REFERENCE = Path(__file__).resolve().parent / "reference"
CONFIGS = REFERENCE / "compvis-configs"
MANIFESTS = REFERENCE / "state-dicts"


def manifest_for(config_rel: str) -> dict:
    """Manifest of the original model built from ``config_rel`` (path below compvis-configs)."""
    name = config_rel.removesuffix(".yaml").replace("/", "__") + ".json"
    return json.loads((MANIFESTS / name).read_text())


def all_manifests() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(MANIFESTS.glob("*.json")):
        data = json.loads(f.read_text())
        out.append((data["source"], data))
    return out


def load_config(config_rel: str):
    return OmegaConf.load(CONFIGS / config_rel)


def state_dict_shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}
