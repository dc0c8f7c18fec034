"""Glue helpers of the book's notebooks."""
import numpy as np
import pytest
import torch

from pure_utils.report import _plain, compare_word


def test_numpy_scalars_become_python_numbers():
    assert type(_plain(np.float64(0.5))) is float
    assert type(_plain(np.int64(3))) is int
    assert _plain("x") == "x"


def test_compare_word():
    assert compare_word(2, 1) == "above"
    assert compare_word(1, 2) == "below"
    assert compare_word(1, 1) == "equal to"
    assert compare_word(float("nan"), 1) == "not comparable with"
