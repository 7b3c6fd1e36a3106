"""edgecompress: search the best compressed version of an image model for a device."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make torch up to 10x slower whenever another process shares the
# cores (measured here: 1.30 s vs 0.135 s per ResNet-8 training step). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from edgecompress.errors import EdgeCompressError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["EdgeCompressError", "__version__"]
