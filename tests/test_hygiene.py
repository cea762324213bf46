"""Tests run away from the checkout (tests/conftest.py), so none can write files into it."""

import os
from pathlib import Path

from tests.conftest import ROOT


def test_each_test_runs_in_its_own_tmp_path(tmp_path):
    assert Path.cwd() == tmp_path
    assert not Path.cwd().resolve().is_relative_to(ROOT)


def test_subprocesses_import_this_checkout():
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
