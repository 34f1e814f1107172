"""Explain: what a vision transformer attends to, as numbers and pictures.

    attention_maps(model, x)          softmax weights of every block, recorded on the explicit attention path
    attention_rollout / rollout_map   Abnar & Zuidema 2020
    attention_distances               mean attention distance per layer and head (ViT Fig. 7 right)
    position_embedding_similarity     ViT Fig. 7 centre
    patch_embedding_components        ViT Fig. 7 left
    patch_logits                      the head on every patch token
    itti_koch                         bottom-up saliency and fixations (Itti, Koch & Niebur 1998)
    explain(model, images, out_dir)   all of it as PNGs + index.html
"""
from .distance import attention_distances, mean_attention_distance, patch_distances
from .filters import patch_embedding_components
from .patch_logits import patch_logits
from .pos_embed import position_embedding_similarity
from .recording import attention_maps, record_attention, recording
from .report import ExplainOptions, explain, model_input, save_rollout_figure
from .rollout import attention_rollout, classifier_attention, fuse_heads, rollout_map
from .saliency import itti_koch

__all__ = [
           "ExplainOptions",
           "attention_distances",
           "attention_maps",
           "attention_rollout",
           "classifier_attention",
           "explain",
           "fuse_heads",
           "itti_koch",
           "mean_attention_distance",
           "model_input",
           "patch_distances",
           "patch_embedding_components",
           "patch_logits",
           "position_embedding_similarity",
           "record_attention",
           "recording",
           "rollout_map",
           "save_rollout_figure",
]
