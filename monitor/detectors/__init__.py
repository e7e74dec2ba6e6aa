"""Streaming detectors: pure objects fed one ``(step, value)`` point at a time.

Each returns a :class:`Detection` (kind, one-line reason with its numbers, data) or None, keeps
O(window) memory, and saves and restores its state with ``state_dict`` /
``load_state_dict``. See docs/detectors.md for how each one decides.
"""

from .base import Detection, Detector
from .divergence import DivergenceConfig, DivergenceDetector
from .oscillation import (
    AlignmentConfig,
    AlignmentDetector,
    OscillationConfig,
    OscillationDetector,
)
from .plateau import PlateauConfig, PlateauDetector
from .spike import SpikeConfig, SpikeDetector

__all__ = [
    "AlignmentConfig",
    "AlignmentDetector",
    "Detection",
    "Detector",
    "DivergenceConfig",
    "DivergenceDetector",
    "OscillationConfig",
    "OscillationDetector",
    "PlateauConfig",
    "PlateauDetector",
    "SpikeConfig",
    "SpikeDetector",
]
