"""Where the project's files live: the repository root and the folders under it.

The one place that knows the layout of the checkout (``pure_utils/`` sits in the repository
root, beside ``data/``, ``notebooks/`` and ``book/``).
"""
from pathlib import Path

#: The repository root (the folder holding ``pure_utils/``).
ROOT = Path(__file__).resolve().parent.parent
#: Shipped data: the models of the controlled benchmark and the paper's numbers.
DATA_DIR = ROOT / "data"
MODELS_DIR = DATA_DIR / "models"
#: Source notebooks and their profiles.
NOTEBOOKS_DIR = ROOT / "notebooks"
PROFILES_DIR = NOTEBOOKS_DIR / "profiles"
