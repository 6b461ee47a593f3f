"""`sciscale data convert NAME --help` shows the module docstring's first line: it must be a whole sentence."""

import argparse
import importlib

import pytest

from data.converters import CONVERTER_MODULES

MODULES = sorted(CONVERTER_MODULES.values()) + ["data.generators.emt"]


@pytest.mark.parametrize("module_name", MODULES)
def test_help_has_a_complete_summary_and_whole_option_texts(module_name):
    module = importlib.import_module(module_name)
    lines = (module.__doc__ or "").strip().splitlines()
    assert lines and lines[0].endswith(".") and (len(lines) == 1 or not lines[1].strip()), \
        f"{module_name}: the docstring's first line is what the CLI shows; it must be one whole sentence"
    parser = argparse.ArgumentParser(prog=module_name, description=lines[0])  # as orchestrator/cli.py builds it
    module.add_arguments(parser)
    for action in parser._actions:
        assert action.help and not action.help.rstrip().endswith((",", ":", "(", "-")), (module_name, action.dest)
    assert lines[0] in " ".join(parser.format_help().split())
