"""Config loading, merging, overrides, validation errors and the target allow-list."""
from __future__ import annotations

import textwrap
from typing import Optional, Sequence

import pytest
import torch
from omegaconf import OmegaConf

from ldm.config import (ConfigError, check_config_tree, check_params, extra_targets, get_obj_from_str,
                        trust_all_targets)
from ldm.config.loading import apply_overrides, load_experiment, merge_configs
from ldm.util import instantiate_from_config


class Toy(torch.nn.Module):
    """A module with the constructor shape the validator must understand."""

    def __init__(self,
                 width: int,
                 scale: float = 1.0,
                 name: str = "toy",
                 mult: Sequence[int] = (1, 2),
                 extra: Optional[dict] = None,
                 flag: bool = False):
        super().__init__()
        self.width, self.scale, self.name, self.mult, self.extra, self.flag = width, scale, name, mult, extra, flag


class ToyChild(Toy):
    def __init__(self, depth: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth


Toy.__module__ = ToyChild.__module__ = "ldm.tests_toy"  # validated like the package's own classes


@pytest.fixture(autouse=True)
def _register_toy(monkeypatch):
    import sys
    import types
    mod = types.ModuleType("ldm.tests_toy")
    mod.Toy, mod.ToyChild = Toy, ToyChild
    monkeypatch.setitem(sys.modules, "ldm.tests_toy", mod)
    with extra_targets("ldm.tests_toy.Toy", "ldm.tests_toy.ToyChild"):
        yield


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_merge_left_to_right_and_dotlist_overrides(tmp_path):
    a = write(tmp_path, "a.yaml", """
        model:
          base_learning_rate: 1.0e-4
          target: ldm.tests_toy.Toy
          params: {width: 4, mult: [1, 2, 4]}
        data: {target: x.y, params: {batch_size: 2}}
    """)
    b = write(tmp_path, "b.yaml", """
        model:
          params: {width: 8}
    """)
    cfg = merge_configs([a, b])
    assert cfg.model.params.width == 8 and list(cfg.model.params.mult) == [1, 2, 4]
    assert cfg.model.base_learning_rate == 1e-4
    cfg = apply_overrides(cfg, ["model.params.scale=0.5", "data.params.batch_size=16", "model.params.mult=[3,3]"])
    assert cfg.model.params.scale == 0.5 and cfg.data.params.batch_size == 16
    assert list(cfg.model.params.mult) == [3, 3]
    model = instantiate_from_config(cfg.model)
    assert (model.width, model.scale, list(model.mult)) == (8, 0.5, [3, 3])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        merge_configs([tmp_path / "missing.yaml"])
    bad = write(tmp_path, "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: cannot parse YAML"):
        merge_configs([bad])
    odd = write(tmp_path, "odd.yaml", "modle: {}\n")
    with pytest.raises(ConfigError, match="odd.yaml: modle: unknown top-level section"):
        merge_configs([odd])
    nomodel = write(tmp_path, "nomodel.yaml", "data: {}\n")
    with pytest.raises(ConfigError, match="no `model` section"):
        load_experiment([nomodel])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        apply_overrides(OmegaConf.create(), ["model.params.width"])
    with pytest.raises(ConfigError, match="must start with one of"):
        apply_overrides(OmegaConf.create(), ["trainer.max_steps=3"])


def test_unknown_missing_and_mistyped_params_name_the_config_path():
    node = {"target": "ldm.tests_toy.Toy", "params": {"width": 4, "widht": 5}}
    with pytest.raises(ConfigError, match=r"^model\.params\.widht: unexpected parameter\(s\) \['widht'\]"):
        check_config_tree({"model": node})
    with pytest.raises(ConfigError, match=r"^model\.params: missing required parameter\(s\) \['width'\]"):
        check_config_tree({"model": {"target": "ldm.tests_toy.Toy", "params": {}}})
    with pytest.raises(ConfigError, match=r"^model\.params\.width: expected int .* got str 'four'"):
        check_config_tree({"model": {"target": "ldm.tests_toy.Toy", "params": {"width": "four"}}})
    with pytest.raises(ConfigError, match=r"^model\.params\.flag: expected bool"):
        check_config_tree({"model": {"target": "ldm.tests_toy.Toy", "params": {"width": 1, "flag": 1}}})
    with pytest.raises(ConfigError, match=r"^model\.params\.mult: expected"):
        check_config_tree({"model": {"target": "ldm.tests_toy.Toy", "params": {"width": 1, "mult": [1, "x"]}}})
    # ints are accepted for floats, None for Optional, lists for sequences
    check_params(Toy, {"width": 1, "scale": 2, "extra": None, "mult": [1]}, "model")


def test_nested_nodes_are_checked_with_their_path():
    cfg = {"model": {"target": "ldm.tests_toy.Toy",
                     "params": {"width": 2, "extra": {"inner": {"target": "ldm.tests_toy.Toy",
                                                                "params": {"width": 1, "colour": 3}}}}}}
    with pytest.raises(ConfigError, match=r"^model\.params\.extra\.inner\.params\.colour: unexpected"):
        check_config_tree(cfg)


def test_kwargs_forwarding_accepts_parent_parameters():
    check_params(ToyChild, {"depth": 3, "width": 2, "scale": 0.1}, "model")
    with pytest.raises(ConfigError, match="unexpected"):
        check_params(ToyChild, {"depth": 3, "width": 2, "nope": 1}, "model")
    obj = instantiate_from_config({"target": "ldm.tests_toy.ToyChild", "params": {"width": 2, "depth": 5}})
    assert (obj.width, obj.depth) == (2, 5)


def test_unknown_targets_are_clear_errors():
    with extra_targets("ldm.nowhere.Thing", "ldm.util.Nope"):
        with pytest.raises(ConfigError, match=r"^model\.target: unknown target 'ldm\.nowhere\.Thing': module"):
            check_config_tree({"model": {"target": "ldm.nowhere.Thing"}})
        with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
            get_obj_from_str("ldm.util.Nope")
    with pytest.raises(ConfigError, match="expected key `target`"):
        instantiate_from_config({"params": {}}, path="model")


@pytest.mark.parametrize("target", ["os.system", "subprocess.Popen", "builtins.eval", "numpy.load"])
def test_targets_outside_the_allow_list_are_refused(target, tmp_path):
    with pytest.raises(ConfigError, match="not on the allow-list"):
        instantiate_from_config({"target": target, "params": {"command": f"touch {tmp_path}/pwned"}})
    with pytest.raises(ConfigError, match="--trust-config-targets"):
        check_config_tree({"data": {"target": target}})
    assert not (tmp_path / "pwned").exists()


def test_explicit_opt_in_allows_foreign_targets():
    with trust_all_targets():
        assert get_obj_from_str("collections.OrderedDict") is __import__("collections").OrderedDict
    with pytest.raises(ConfigError):
        get_obj_from_str("collections.OrderedDict")


def test_sentinels_and_legacy_names():
    assert instantiate_from_config("__is_unconditional__") is None
    assert instantiate_from_config("__is_first_stage__") is None
    from ldm.config.targets import LEGACY_TARGETS, canonical_target
    assert canonical_target("main.DataModuleFromConfig") == "ldm.data.base.DataModuleFromConfig"
    assert all(v.startswith("ldm.") for v in LEGACY_TARGETS.values())


def test_yaml_python_tags_are_not_executed(tmp_path):
    evil = write(tmp_path, "evil.yaml", "model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        merge_configs([evil])
