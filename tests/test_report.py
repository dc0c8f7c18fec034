"""Glue helpers of the book's notebooks."""
import numpy as np

from pure_utils.study.report import _plain, difference_sentence, interval


def test_numpy_scalars_become_python_numbers():
    assert type(_plain(np.float64(0.5))) is float
    assert type(_plain(np.int64(3))) is int
    assert _plain("x") == "x"


def test_interval_and_difference_sentence():
    assert interval(0.634, 0.53, 0.7249) == "0.63 [0.53, 0.72]"
    assert interval(float("nan"), 0, 1) == "n/a"
    row = dict(a="PURE (gxa)", b="activations (mean)", mean=0.05, ci_low=-0.02, ci_high=0.11, n=15,
               n_excluded=0, p_value=0.2134, word="no detectable difference")
    text = difference_sentence(row, "ARI")
    assert text == ("PURE (gxa) minus activations (mean), ARI: 0.05 [-0.02, 0.11] over 15 neurons "
                    "(Wilcoxon p = 0.21): no detectable difference")
    row.update(ci_low=0.01, word="higher", n_excluded=2)
    assert difference_sentence(row, "ARI").endswith("2 left out for a missing value (Wilcoxon "
                                                    "p = 0.21): PURE (gxa) is higher")


def test_table_formats_numbers_kept_as_objects():
    import pandas as pd
    from pure_utils.study.report import table
    # a record of mixed numbers, transposed: every column holds Python numbers as objects
    frame = pd.DataFrame({"unit 1": {"concepts": ["red circle"], "n": 45, "with": 2.8292,
                                     "without": 0.0769}}).T
    assert (frame.dtypes == object).all()
    html = table(frame).to_html()
    assert "2.83" in html and "0.0769" in html and "2.8292" not in html and ">45<" in html
    words = table(pd.DataFrame({"flag": [True, False], "name": ["a", 1.23456]})).to_html()
    assert "True" in words and "1.23456" in words  # booleans and mixed columns stay as they are
