"""Configs cannot run code: only allow-listed targets resolve, whatever the entry point.

Every payload below would create a marker file if it ran; each test asserts that the marker is
absent and that the refusal is a ConfigError naming the config path and the opt-in flag.
"""
from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import ldm.config.targets as targets
from ldm.config import (ALLOWED_TARGETS, LEGACY_TARGETS, ConfigError, canonical_target, check_config_tree,
                        get_obj_from_str, is_allowed, set_trust_all_targets, trust_all_targets)
from ldm.config.allowed_targets import FACTORIES
from ldm.trainer.run import default_callbacks, main
from ldm.trainer.rundir import RunDir
from ldm.util import instantiate_from_config

REPO = Path(__file__).resolve().parents[1]
DEMO_AE = str(REPO / "configs" / "demo" / "autoencoder_kl.yaml")


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_configs(tmp_path: Path) -> dict[str, dict]:
    """target -> params that would create ``tmp_path/pwned`` if the target were built."""
    marker = tmp_path / "pwned"
    pkl = tmp_path / "payload.pkl"
    torch.save({"x": _Payload(marker)}, pkl)
    npy = tmp_path / "payload.npy"
    np.save(npy, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef model():\n    return 1\n")
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "torch.load": {"f": str(pkl), "weights_only": False},
        "torch.hub.load": {"repo_or_dir": str(hub), "model": "model", "source": "local", "trust_repo": True},
        "torch.utils.cpp_extension.load_inline": {"name": "pwned", "cpp_sources": "int f() { return 0; }"},
        "numpy.load": {"file": str(npy), "allow_pickle": True},
        "pickle.loads": {"data": "not bytes, but it must not get that far"},
        "subprocess.run": {"args": ["touch", str(marker)]},
        "subprocess.Popen": {"args": ["touch", str(marker)]},
        "subprocess.check_call": {"args": ["touch", str(marker)]},
        "os.system": {"command": f"touch {marker}"},
        "os.remove": {"path": str(pkl)},
        "builtins.exec": {"source": code},
        "builtins.eval": {"source": code},
        "builtins.open": {"file": str(marker), "mode": "w"},
        # Names under our own package that are not config-buildable classes.
        "ldm.config.targets.set_trust_all_targets": {"value": True},
        "ldm.util.instantiate_from_config": {"config": {"target": "torch.load", "params": {"f": str(pkl)}}},
        "ldm.checkpoint.load_state_dict": {"path": str(pkl)},
        "ldm.checkpoint._restricted_load": {"path": str(pkl)},
        # `main.` used to be trusted as a prefix: it resolved any importable module called main.
        "main.main": {"argv": ["--base", "x.yaml", "-t"]},
        "main.os": {},
    }


PAYLOAD_TARGETS = sorted([
    "torch.load", "torch.hub.load", "torch.utils.cpp_extension.load_inline", "numpy.load", "pickle.loads",
    "subprocess.run", "subprocess.Popen", "subprocess.check_call", "os.system", "os.remove", "builtins.exec",
    "builtins.eval", "builtins.open", "ldm.config.targets.set_trust_all_targets",
    "ldm.util.instantiate_from_config", "ldm.checkpoint.load_state_dict", "ldm.checkpoint._restricted_load",
    "main.main", "main.os"])


def _refusal(target: str, path: str) -> str:
    return rf"^{re.escape(path)}: target '{re.escape(target)}' is not on the allow-list.*--trust-config-targets"


def _untouched(tmp_path: Path) -> None:
    assert not (tmp_path / "pwned").exists()
    assert (tmp_path / "payload.pkl").exists()
    assert targets._trust_all is False


def test_payload_list_is_complete(tmp_path):
    assert sorted(payload_configs(tmp_path)) == PAYLOAD_TARGETS


@pytest.mark.parametrize("target", PAYLOAD_TARGETS)
def test_instantiate_from_config_refuses_payload_targets(target, tmp_path):
    params = payload_configs(tmp_path)[target]
    with pytest.raises(ConfigError, match=_refusal(target, "model.params.cond_stage_config.target")):
        instantiate_from_config({"target": target, "params": params}, path="model.params.cond_stage_config")
    with pytest.raises(ConfigError, match=_refusal(target, "data.params.train.target")):
        check_config_tree({"data": {"target": "main.DataModuleFromConfig",
                                    "params": {"batch_size": 1, "train": {"target": target, "params": params}}}})
    _untouched(tmp_path)


@pytest.mark.parametrize("mode", ["-t", "--dry-run"])
@pytest.mark.parametrize("target", ["torch.load", "torch.hub.load", "numpy.load", "subprocess.run",
                                    "builtins.exec", "ldm.config.targets.set_trust_all_targets"])
def test_main_refuses_payload_targets_before_anything_runs(target, mode, tmp_path, capsys):
    params = payload_configs(tmp_path)[target]
    cfg = tmp_path / "evil.yaml"
    OmegaConf.save(OmegaConf.create({"model": {"target": target, "params": params}}), cfg)
    logdir = tmp_path / "logs"
    assert main(["--base", str(cfg), mode, "--accelerator", "cpu", "-l", str(logdir)]) == 2
    err = capsys.readouterr().err
    assert re.search(_refusal(target, "model.target").replace("^", "config error: "), err), err
    # Deeper in a shipped config, through a command-line override.
    assert main(["--base", DEMO_AE, mode, "--accelerator", "cpu", "-l", str(logdir),
                 f"model.params.lossconfig.target={target}"]) == 2
    err = capsys.readouterr().err
    assert re.search(_refusal(target, "model.params.lossconfig.target").replace("^", "config error: "), err), err
    _untouched(tmp_path)
    assert not logdir.exists()


def test_main_refuses_payload_in_a_lightning_callback(tmp_path, capsys):
    params = payload_configs(tmp_path)["torch.load"]
    cfg = tmp_path / "evil.yaml"
    OmegaConf.save(OmegaConf.create({"lightning": {"callbacks": {"evil": {"target": "torch.load", "params": params}}}}),
                   cfg)
    tiny = ["model.params.ddconfig.resolution=16", "model.params.ddconfig.ch_mult=[1,2]",
            "data.params.train.params.size=16", "data.params.validation.params.size=16"]
    code = main(["--base", DEMO_AE, str(cfg), "-t",
                 "--accelerator", "cpu", "--logger", "none", "-l", str(tmp_path / "logs"), *tiny])
    assert code == 2
    err = capsys.readouterr().err
    assert "config error: lightning.callbacks.evil.target: target 'torch.load' is not on the allow-list" in err
    _untouched(tmp_path)


def test_allow_list_is_exact_names_not_prefixes():
    assert is_allowed("torch.nn.Identity") and not is_allowed("torch.nn.Identityx")
    assert not is_allowed("torch.nn") and not is_allowed("ldm.") and not is_allowed("ldm")
    assert is_allowed("main.DataModuleFromConfig") and not is_allowed("main.DataModuleFromConfigs")
    assert not is_allowed("pytorch_lightning.callbacks.LambdaCallback")


def test_opt_in_still_resolves_anything_and_is_restored(tmp_path):
    with trust_all_targets():
        assert get_obj_from_str("torch.load") is torch.load
    with pytest.raises(ConfigError):
        get_obj_from_str("torch.load")
    set_trust_all_targets(True)
    try:
        assert get_obj_from_str("pickle.loads") is pickle.loads
    finally:
        set_trust_all_targets(False)
    with pytest.raises(ConfigError, match="--trust-config-targets"):
        get_obj_from_str("pickle.loads")


def test_word_vocabulary_names_go_through_the_allow_list():
    from ldm.modules.encoders.modules import WordLevelTokenizer

    assert WordLevelTokenizer("ldm.data.synthetic.caption_vocabulary").vocab_size > 4
    with pytest.raises(ConfigError, match=r"^word_vocab: target 'os.listdir' is not on the allow-list"):
        WordLevelTokenizer("os.listdir")


# -- the allow-list itself ---------------------------------------------------------------------------------
def test_every_allow_listed_name_is_an_existing_class_or_a_listed_factory():
    for name in sorted(ALLOWED_TARGETS):
        obj = get_obj_from_str(name)
        if name in FACTORIES:
            assert inspect.isfunction(obj), name
        else:
            assert inspect.isclass(obj), f"{name} is not a class"
    for legacy, canonical in LEGACY_TARGETS.items():
        assert canonical in ALLOWED_TARGETS, f"legacy {legacy} maps to {canonical}, which is not allowed"


def _yaml_targets(path: Path) -> list[str]:
    return re.findall(r"^\s*-?\s*target:\s*([A-Za-z_][\w.]*)\s*$", path.read_text(encoding="utf-8"), re.M)


def _repository_configs() -> list[Path]:
    found = [*(REPO / "configs").rglob("*.yaml"), *(REPO / "models").glob("*/*/config.yaml"),
             *(REPO / "models").glob("*/config.yaml"),
             *(REPO / "tests" / "reference" / "compvis-configs").rglob("*.yaml")]
    return sorted(set(found))


def test_every_config_in_the_repository_resolves_without_trust():
    configs = _repository_configs()
    assert len(configs) > 40
    names = set()
    for cfg in configs:
        for name in _yaml_targets(cfg):
            names.add(name)
            assert is_allowed(name), f"{cfg.relative_to(REPO)} names {name}, which is not allow-listed"
    for doc in [REPO / "README.md", *(REPO / "docs").rglob("*.md")]:
        for name in _yaml_targets(doc):
            names.add(name)
            assert is_allowed(name), f"{doc.relative_to(REPO)} names {name}, which is not allow-listed"
    run = RunDir(logdir=Path("logs/x"), now="now")
    for name, spec in default_callbacks(run, OmegaConf.create(), OmegaConf.create(), False).items():
        names.add(spec["target"])
        assert is_allowed(spec["target"]), f"default callback {name}: {spec['target']}"
    # The shipped configs also pass the full check (targets and parameters) without trust.
    for cfg in configs:
        config = OmegaConf.load(cfg)
        tree = {k: config[k] for k in ("model", "data") if k in config}
        try:
            check_config_tree(tree)
        except ConfigError as exc:
            assert "allow-list" not in str(exc), f"{cfg.relative_to(REPO)}: {exc}"
    assert {"torch.nn.Identity", "main.DataModuleFromConfig", "ldm.models.diffusion.ddpm.LatentDiffusion"} <= names
    assert all(canonical_target(n) in ALLOWED_TARGETS for n in names)
