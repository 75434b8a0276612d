"""Registers the dpo-eval plugin for a checkout, unless an installed dpo-eval already does (entry point)."""

import os
from importlib.metadata import entry_points

_installed = not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") and any(
    ep.name == "dpo_eval" for ep in entry_points(group="pytest11"))
pytest_plugins = [] if _installed else ["fixtures.plugin"]
