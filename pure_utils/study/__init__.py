"""The paper's study and the chapters' logic: profiles, the setting of a profile, tables,
ablations, the model family, report helpers and the verdicts (sentences chosen by the numbers)."""
from ..registry import lazy_submodules

# the modules of this sub-package are imported on first use
__getattr__ = lazy_submodules(__name__)
