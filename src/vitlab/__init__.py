"""vitlab: the vision-transformer family as taught, trainable on a laptop CPU and loadable from existing checkpoints."""
from .errors import VitlabError
from .layers.linear import freeze_for_inference
from .registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "freeze_for_inference", "VitlabError", "__version__"]
