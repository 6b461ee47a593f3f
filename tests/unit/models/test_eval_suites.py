"""The eval-suite contract over the family mapping: every family has one, the types stay torch-free, and
the padding/limit rule every suite uses."""

import subprocess
import sys

import pytest

from models import FAMILY_MODULES, load_family
from models.family import EvalOptions, EvalReport, EvalSuite, real_indices


@pytest.mark.parametrize("name", sorted(FAMILY_MODULES))
def test_every_family_has_an_eval_suite(name):
    suite = load_family(name).eval_suite
    assert isinstance(suite, EvalSuite) and callable(suite.make_transform) and callable(suite.evaluate)


def test_eval_types_do_not_load_torch():
    code = ("import sys; from models.family import EvalOptions, EvalReport, EvalSuite, real_indices; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_real_indices_skip_padding_and_stop_at_max_samples():
    assert real_indices([True, False, True, True], seen=0, max_samples=None) == [0, 2, 3]
    assert real_indices([True, False, True, True], seen=3, max_samples=5) == [0, 2]
    assert real_indices([True, True], seen=5, max_samples=5) == []
    assert EvalOptions() == EvalOptions(max_samples=None, plots=True, physical_checks=True, device="cpu")
    assert EvalReport(scores={}, columns=[], table=[]).figures == {}
