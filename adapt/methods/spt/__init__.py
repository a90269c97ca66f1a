"""SPT, sensitivity-aware parameter-efficient tuning: the method (method.py), its setup from the
task (sensitivity.py, then allocation.py) and its sparse deltas (sparse.py)."""

from adapt.methods.spt.method import SPT, SPTConfig

__all__ = ["SPT", "SPTConfig"]
