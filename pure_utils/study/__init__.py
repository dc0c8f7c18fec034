"""The paper's study and the chapters' logic: profiles, the setting of a profile, tables,
ablations, the model family, report helpers and the verdicts (sentences chosen by the numbers)."""
import importlib


def __getattr__(name: str):
    # the modules of this sub-package are imported on first use
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
