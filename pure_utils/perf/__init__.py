"""Speed: the engine against a naive per-neuron pipeline and the paper-scale dry run of every
stage (``python -m pure_utils.perf``)."""
from ..registry import lazy_submodules

# the modules of this sub-package are imported on first use
__getattr__ = lazy_submodules(__name__)
