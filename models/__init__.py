"""Model families: one explicit mapping from family name to its module.

``models/<family>/config.py`` holds the family's torch-free spec (imported by the orchestrator to
validate job specs); ``models/<family>/__init__.py`` holds ``FAMILY``, which imports torch and is loaded
only where a model is built (workers, ``sciscale plan``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from dataclasses import replace

from models.family import Family, Mismatch

FAMILY_MODULES: dict[str, str] = {
    "pde": "models.pde",
    "weather": "models.weather",
    "atoms": "models.atoms",
}


def model_spec_classes() -> list[type]:
    """The pydantic spec class of every family whose package is present, in mapping order."""
    return [_load_config(name).MODEL_SPEC for name in FAMILY_MODULES if _config_path(name).exists()]


def _config_path(family: str, module: str = "config") -> Path:
    return Path(__file__).resolve().parent / family / f"{module}.py"


def _load_config(family: str):
    return _load_module(family, "config")


def _load_module(family: str, module: str):
    """Import ``models.<family>.<module>`` (config, preflight) without running the family package's
    ``__init__`` (which imports torch): the orchestrator validates specs torch-free. The module is registered
    under its real name, so a later ``import models.<family>`` reuses it and the spec classes stay the same."""
    name = f"{FAMILY_MODULES[family]}.{module}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _config_path(family, module))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def check_data(model_spec, split: str, url: str, manifest, where: str = "") -> list[Mismatch]:
    """Whether ``model_spec`` fits one dataset of ``split`` (train or val): the family's torch-free check in
    ``models/<family>/preflight.py``, run by the driver before anything starts and by the workers' transforms.
    A problem of the dataset itself (field "data") is reported at ``where`` (e.g. data.train[0].url)."""
    module = _load_module(model_spec.family, "preflight")
    return [replace(m, dataset=url, field=where or m.field if m.field == "data" else m.field)
            for m in module.check(model_spec, split, manifest)]


def load_family(name: str) -> Family:
    """Import a family's package (this loads torch) and return its ``FAMILY``."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY
