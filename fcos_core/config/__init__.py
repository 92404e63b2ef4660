"""Config loading: YAML -> overrides -> ${references} -> schema validation -> Node tree."""

from fcos_core.config.resolve import ResolvedConfig, load_config

__all__ = ["ResolvedConfig", "load_config"]
