"""Detection (DETR): matcher, set loss, post-processing, COCO evaluation, drawing, and the task itself."""
from .task import MAP_KEYS, DetectionTask, TASK

__all__ = ["MAP_KEYS", "DetectionTask", "TASK"]
