"""unlearnable: make image data unlearnable, test the protection, explain why it works."""

__version__ = "0.1.0"

from .errors import UnlearnableError

__all__ = ["UnlearnableError", "__version__"]
