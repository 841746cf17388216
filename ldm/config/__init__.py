"""Configuration: loading and merging YAML, resolving targets safely, validating parameters."""
from ldm.config.allowed_targets import ALLOWED_TARGETS
from ldm.config.errors import ConfigError
from ldm.config.targets import (
    LEGACY_TARGETS,
    canonical_target,
    extra_targets,
    get_obj_from_str,
    is_allowed,
    set_trust_all_targets,
    trust_all_targets,
)
from ldm.config.validate import check_config_tree, check_params

__all__ = [
    "ALLOWED_TARGETS",
    "ConfigError",
    "LEGACY_TARGETS",
    "canonical_target",
    "check_config_tree",
    "check_params",
    "extra_targets",
    "get_obj_from_str",
    "is_allowed",
    "set_trust_all_targets",
    "trust_all_targets",
]
