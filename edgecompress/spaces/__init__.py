"""What can be searched: compression configs, experiment configs and search spaces."""

from __future__ import annotations

from edgecompress.spaces.config import ALLOWED_BITS, CompressionConfig
from edgecompress.spaces.experiment import ExperimentConfig, load_experiment, parse_experiment
from edgecompress.spaces.space import SearchSpace

__all__ = [
    "ALLOWED_BITS",
    "CompressionConfig",
    "ExperimentConfig",
    "SearchSpace",
    "load_experiment",
    "parse_experiment",
]
