"""r2m: fine-tune CLIP deepfake-detection specialists and merge them with R²M.

Subpackages are imported lazily by their users; importing :mod:`r2m` itself is cheap.
"""

__version__ = "0.1.0"
