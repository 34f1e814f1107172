"""Semantic segmentation (U-Net, TransUNet, UNETR, SETR): a class per pixel or voxel, CE + Dice, mIoU/Dice/HD95."""
from .task import TASK, SegmentationTask

__all__ = ["TASK", "SegmentationTask"]
