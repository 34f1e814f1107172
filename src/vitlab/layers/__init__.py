"""The shared layers every vitlab model is built from."""
from .attention import Attention, explicit_attention, split_fused_heads, split_heads
from .drop import DropPath, drop_path, drop_path_rates
from .init import init_transformer_
from .linear import Linear, freeze_for_inference
from .mlp import Mlp
from .patch_embed import PatchEmbed, to_2tuple
from .pos_embed import resample_pos_embed, sincos_2d

__all__ = ["Attention", "explicit_attention", "split_heads", "split_fused_heads", "DropPath", "drop_path",
           "drop_path_rates", "Mlp", "PatchEmbed", "to_2tuple", "resample_pos_embed", "sincos_2d", "init_transformer_",
           "Linear", "freeze_for_inference"]
