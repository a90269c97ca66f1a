"""HST (Hierarchical Side-Tuning): the method, its two side networks and the taps that read the backbone."""

from adapt.methods.hst.method import HST, HSTConfig, HSTModel
from adapt.methods.hst.paper import PaperSideNetwork, Reading
from adapt.methods.hst.taps import meta_through_block

__all__ = ["HST", "HSTConfig", "HSTModel", "PaperSideNetwork", "Reading", "meta_through_block"]
