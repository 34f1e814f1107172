"""Training: a model-agnostic loop, objectives, optimizer + schedule, EMA, resumable checkpoints."""
from .objectives import ClassificationObjective, DistillationObjective, classification_loss
from .run import TrainConfig, load_run_config, run_training
from .trainer import NonFiniteLoss, Trainer

__all__ = ["ClassificationObjective", "DistillationObjective", "classification_loss", "TrainConfig",
           "load_run_config", "run_training", "NonFiniteLoss", "Trainer"]
