"""Old import paths of names that moved to another module, kept working with a warning."""
import importlib
import warnings


def moved_names(module: str, moved: dict):
    """A module ``__getattr__`` that finds ``moved`` names (name -> new module) in their new home.

    The new module is imported only when an old path is used, so a module never depends on the
    modules its former names moved to.
    """
    def __getattr__(name):
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to pure_utils.{target}.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(f"pure_utils.{target}"), name)

    return __getattr__
