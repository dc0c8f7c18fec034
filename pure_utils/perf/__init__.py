"""Speed: the engine against a naive per-neuron pipeline and the paper-scale dry run of every
stage (``python -m pure_utils.perf``)."""
import importlib


def __getattr__(name: str):
    # the modules of this sub-package are imported on first use
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
