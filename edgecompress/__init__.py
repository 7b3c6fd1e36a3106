"""edgecompress: search the best compressed version of an image model for a device."""

from __future__ import annotations

from edgecompress.errors import EdgeCompressError

__version__ = "0.1.0"
__all__ = ["EdgeCompressError", "__version__"]
