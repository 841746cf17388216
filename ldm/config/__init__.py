"""Configuration: loading and merging YAML, resolving targets safely, validating parameters."""
from ldm.config.errors import ConfigError
from ldm.config.targets import (
    LEGACY_TARGETS,
    TRUSTED_PREFIXES,
    canonical_target,
    get_obj_from_str,
    set_trust_all_targets,
    trust_all_targets,
)
from ldm.config.validate import check_config_tree, check_params

__all__ = [
    "ConfigError",
    "LEGACY_TARGETS",
    "TRUSTED_PREFIXES",
    "canonical_target",
    "check_config_tree",
    "check_params",
    "get_obj_from_str",
    "set_trust_all_targets",
    "trust_all_targets",
]
