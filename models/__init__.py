"""Model families: one explicit mapping from family name to its module.

``models/<family>/config.py`` holds the family's torch-free spec (imported by the orchestrator to
validate job specs); ``models/<family>/__init__.py`` holds ``FAMILY``, which imports torch and is loaded
only where a model is built (workers, ``sciscale plan``).
"""

from __future__ import annotations

import importlib

from models.family import Family

FAMILY_MODULES: dict[str, str] = {
    "pde": "models.pde",
    "weather": "models.weather",
    "atoms": "models.atoms",
}


def model_spec_classes() -> list[type]:
    """The pydantic spec class of every family whose package is present, in mapping order."""
    classes = []
    for module_name in FAMILY_MODULES.values():
        try:
            config = importlib.import_module(f"{module_name}.config")
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # family not installed in this tree
            raise
        classes.append(config.MODEL_SPEC)
    return classes


def load_family(name: str) -> Family:
    """Import a family's package (this loads torch) and return its ``FAMILY``."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY
