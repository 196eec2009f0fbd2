"""robustmoe-bench: train and honestly evaluate the adversarial robustness of sparse MoE-CNNs."""
from __future__ import annotations

__version__ = "0.1.0"

from .models import create_model, list_models  # noqa: E402  (registers every architecture)
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .zoo import load_model  # noqa: E402

__all__ = ["__version__", "create_model", "list_models", "load_checkpoint", "load_model", "save_checkpoint"]
