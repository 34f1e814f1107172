"""vitlab: the vision-transformer family as taught, trainable on a laptop CPU and loadable from existing checkpoints."""
from .errors import VitlabError
from .registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "VitlabError", "__version__"]
