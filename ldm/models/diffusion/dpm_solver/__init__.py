"""DPM-Solver++ sampler class with the original CompVis API (``DPMSolverSampler``)."""
from .sampler import DPMSolverSampler

__all__ = ["DPMSolverSampler"]
