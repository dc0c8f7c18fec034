"""Conversion of tensors and array-likes to NumPy arrays (shared by the numerical modules)."""
import numpy as np


def as_numpy(x, dtype=np.float64) -> np.ndarray:
    """``x`` (a torch tensor on any device, an array or a list) as an ``ndarray`` of ``dtype``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)
