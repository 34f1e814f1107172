"""Image captioning with per-word attention (Xu et al. 2015, "Show, Attend and Tell"), on a ViT or a CNN encoder.

    a = Encoder(image)                  (B, N, C): the ViT's patch tokens, or the ResNet's last feature grid flattened
    transformer decoder:  p(y_t | y_<t, a) from masked self-attention + cross-attention to a (vitlab.text)
    LSTM decoder (the paper, §3.1.2, "soft" attention):
        e_ti = w^T tanh(W_a a_i + W_h h_{t-1}),  alpha_t = softmax(e_t)                 (eqs. 4-5, MLP attention)
        z_t = beta_t * sum_i alpha_ti a_i,  beta_t = sigmoid(f_beta(h_{t-1}))             (§4.2.1, the gating scalar)
        h_t = LSTM([E y_{t-1}; z_t], h_{t-1})
        p(y_t) ~ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t))                                  (eq. 7, deep output)
        h_0, c_0 = tanh(MLP(mean_i a_i))    (§3.1.2; `lstm_init` "zeros" or "learned" starts from a constant instead)
    doubly stochastic attention (eq. 14): lambda * sum_i (1 - sum_t alpha_ti)^2 is added to the loss, so every
    image region is looked at about once over the caption.

Every model returns a dict: `logits` (B, T, vocab) and `attention` (B, T, N): for word t, its attention over the
N image tokens (the LSTM's alpha_t; the transformer's last cross-attention layer, heads averaged, when asked for
with return_attention=True, through the shared Attention's explicit path). `num_classes` is the vocabulary size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitlabError
from ..text.modules import TextDecoder, TokenEmbedding
from ..variants import register_model
from .resnet import ResNet, ResNetConfig
from .vit import ViTConfig, VisionTransformer


@dataclass
class CaptionerConfig:
    img_size: int = 64                      # input side in pixels
    in_chans: int = 3
    num_classes: int = 64                   # vocabulary size (the data's tokenizer sets it through num_classes)
    encoder: str = "vit"                    # "vit": patch tokens of a ViT; "resnet": a ResNet's last feature grid
    patch_size: int = 8                     # vit: pixels per patch (64 px / 8 = an 8x8 grid of tokens)
    encoder_dim: int = 64                   # vit: token width; resnet: channels of the last stage
    encoder_depth: int = 1                  # vit: blocks (few: tokens stay local, so attention can point at objects)
    encoder_heads: int = 4                  # vit: heads
    resnet_widths: tuple[int, ...] = (32,)  # resnet: widths of the stages before the last (each after the
                                            # first halves the grid); the ImageNet stem (7x7/2 + pool) first
    resnet_blocks: int = 2                  # resnet: basic blocks per stage
    decoder: str = "transformer"            # "transformer" (vitlab.text.TextDecoder) or "lstm" (the paper's)
    dim: int = 128                          # decoder width (transformer model dim / LSTM hidden and embedding size)
    depth: int = 1                          # transformer decoder layers (one: its cross-attention alone fetches
                                            # the evidence for a word)
    num_heads: int = 4                      # transformer decoder heads
    ffn_dim: int = 256                      # transformer decoder MLP width
    attn_dim: int = 128                     # lstm: width of the MLP attention (W_a, W_h)
    max_len: int = 40                       # longest token sequence (bos + words + eos)
    dropout: float = 0.1
    doubly_stochastic: float = 1.0          # lstm: lambda of eq. 14 (0 = off); the objective reads it
    lstm_init: str = "mean"                 # lstm: h0, c0 = tanh(MLP(mean of the annotations)) as §3.1.2; "zeros" or
                                            # "learned" (a trained constant): the image then reaches the LSTM only
                                            # through its attention
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)   # input normalisation
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    extra: dict[str, Any] = field(default_factory=dict)


class ImageEncoder(nn.Module):
    """image (B, 3, S, S) normalised -> annotation vectors (B, N, encoder_dim), N = grid h * w (row-major)."""

    def __init__(self, cfg: CaptionerConfig) -> None:
        super().__init__()
        self.kind = cfg.encoder
        if cfg.encoder == "vit":
            self.net: nn.Module = VisionTransformer(ViTConfig(
                img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=0,
                dim=cfg.encoder_dim, depth=cfg.encoder_depth, num_heads=cfg.encoder_heads, class_token=False,
                pool="avg", mean=cfg.mean, std=cfg.std))
            side = cfg.img_size // cfg.patch_size
            self.pos = None                                  # the ViT's own position embedding is in its tokens
        elif cfg.encoder == "resnet":
            widths = (*cfg.resnet_widths, cfg.encoder_dim)
            # the ImageNet stem (stride 4) and two stages: an 8x8 grid at 64 px, as the ViT's 8 px patches give
            self.net = ResNet(ResNetConfig(img_size=cfg.img_size, in_chans=cfg.in_chans, num_classes=0,
                                           block="basic", layers=tuple(cfg.resnet_blocks for _ in widths),
                                           widths=widths, stem="imagenet", stem_width=widths[0], mean=cfg.mean,
                                           std=cfg.std))
            side = cfg.img_size // self.net.cfg.stride
            # a convolution's features say little about where they are: a learned position per grid cell (added
            # to the annotations, so both decoders can tell "left of" from "right of")
            self.pos = nn.Parameter(torch.randn(1, side * side, cfg.encoder_dim) * 0.02)
        else:
            raise VitlabError(f"encoder must be 'vit' or 'resnet', got {cfg.encoder!r}")
        self.grid_size = (side, side)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.net.forward_features(x)
        if self.kind == "resnet":
            feats = feats.flatten(2).transpose(1, 2)                         # (B, C, h, w) -> (B, h*w, C)
        return feats if self.pos is None else feats + self.pos.to(feats.dtype)


LSTM_INITS = ("mean", "zeros", "learned")


class SoftAttentionLSTM(nn.Module):
    """The paper's decoder (see the module docstring). ids (B, T) (bos first), feats (B, N, C) ->
    logits (B, T, vocab), alphas (B, T, N).

    init: where h_0, c_0 (B, dim) come from. "mean": tanh of a linear map of the mean annotation (Xu et al. 2015,
    §3.1.2: "predicted by an average of the annotation vectors fed through two separate MLPs"); "zeros": zero
    vectors; "learned": one trained vector each, the same for every image. With "zeros" or "learned" the initial
    state carries nothing of the image, so what the LSTM knows of it comes through z_t, i.e. its attention."""

    def __init__(self, vocab_size: int, dim: int, feat_dim: int, attn_dim: int, dropout: float,
                 init: str = "mean") -> None:
        super().__init__()
        if init not in LSTM_INITS:
            raise VitlabError(f"lstm_init must be one of {', '.join(LSTM_INITS)}, got {init!r}")
        self.init = init
        self.embed = nn.Embedding(vocab_size, dim)
        if init == "mean":
            self.init_h, self.init_c = nn.Linear(feat_dim, dim), nn.Linear(feat_dim, dim)
        elif init == "learned":       # starts at zero, as the "zeros" state, and is trained
            self.h0, self.c0 = nn.Parameter(torch.zeros(1, dim)), nn.Parameter(torch.zeros(1, dim))
        self.att_feat, self.att_hidden = nn.Linear(feat_dim, attn_dim), nn.Linear(dim, attn_dim)
        self.att_score = nn.Linear(attn_dim, 1)
        self.gate = nn.Linear(dim, feat_dim)
        self.cell = nn.LSTMCell(dim + feat_dim, dim)
        self.out_h, self.out_z = nn.Linear(dim, dim), nn.Linear(feat_dim, dim)
        self.out = nn.Linear(dim, vocab_size)
        self.drop = nn.Dropout(dropout)

    def initial_state(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, N, C) -> h_0, c_0 (B, dim) each, as `init` says."""
        B = feats.shape[0]
        if self.init == "mean":
            mean = feats.mean(1)                                             # (B, C)
            return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        if self.init == "learned":
            return self.h0.expand(B, -1).to(feats.dtype), self.c0.expand(B, -1).to(feats.dtype)
        zeros = feats.new_zeros(B, self.cell.hidden_size)
        return zeros, zeros

    def forward(self, ids: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
        B, T = ids.shape                                                     # batch, steps
        h, c = self.initial_state(feats)                                     # (B, dim) each
        keys = self.att_feat(feats)                                          # (B, N, attn_dim): W_a a_i, once
        emb = self.embed(ids)                                                # (B, T, dim)
        logits, alphas = [], []
        for t in range(T):
            e = self.att_score(torch.tanh(keys + self.att_hidden(h)[:, None])).squeeze(-1)   # (B, N)
            alpha = e.softmax(-1)
            z = torch.sigmoid(self.gate(h)) * (alpha[..., None] * feats).sum(1)              # (B, C)
            h, c = self.cell(torch.cat([emb[:, t], z], -1), (h, c))
            logits.append(self.out(self.drop(emb[:, t] + self.out_h(h) + self.out_z(z))))    # (B, vocab)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)


class Captioner(nn.Module):
    """Encoder + decoder. forward(images (B, 3, S, S) normalised, ids (B, T) bos first) ->
    {"logits": (B, T, vocab), "attention": (B, T, N) or None}: logits[:, t] predicts token t + 1 of the caption,
    attention[:, t] is where the decoder looked to predict it. The transformer's attention is recorded only with
    return_attention=True (explicit attention path, same numerics); the LSTM's always comes with it."""

    def __init__(self, cfg: CaptionerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = CaptionerConfig(**{**asdict(cfg or CaptionerConfig()), **kwargs})
        if cfg.decoder not in ("transformer", "lstm"):
            raise VitlabError(f"decoder must be 'transformer' or 'lstm', got {cfg.decoder!r}")
        if cfg.num_classes < 5:
            raise VitlabError(f"a captioner needs a vocabulary (num_classes) of at least 5, got {cfg.num_classes}")
        if not cfg.doubly_stochastic >= 0:                  # NaN too
            raise VitlabError(f"doubly_stochastic (eq. 14's lambda) must be >= 0, got {cfg.doubly_stochastic}")
        if cfg.lstm_init != "mean" and cfg.decoder != "lstm":
            raise VitlabError(f"lstm_init is the LSTM decoder's initial state (§3.1.2); this model has a "
                              f"{cfg.decoder} decoder")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.encoder = ImageEncoder(cfg)
        if cfg.decoder == "transformer":
            embed = TokenEmbedding(cfg.num_classes, cfg.dim, cfg.max_len, positions="learned", dropout=cfg.dropout)
            self.decoder: nn.Module = TextDecoder(embed, cfg.num_classes, cfg.depth, cfg.dim, cfg.num_heads,
                                                  cfg.ffn_dim, cfg.dropout, norm_first=True,
                                                  memory_dim=cfg.encoder_dim, act_layer=nn.GELU)
        else:
            self.decoder = SoftAttentionLSTM(cfg.num_classes, cfg.dim, cfg.encoder_dim, cfg.attn_dim, cfg.dropout,
                                             init=cfg.lstm_init)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the image tokens the decoder attends to."""
        return self.encoder.grid_size

    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) normalised -> annotations (B, N, encoder_dim)."""
        return self.encoder(images)

    def decode(self, ids: Tensor, memory: Tensor, return_attention: bool = False) -> dict[str, Tensor | None]:
        """ids (B, T), memory (B, N, C) -> {"logits": (B, T, vocab), "attention": (B, T, N) or None}."""
        if ids.shape[1] > self.cfg.max_len:
            raise VitlabError(f"{ids.shape[1]} tokens exceed the captioner's max_len {self.cfg.max_len}")
        if self.cfg.decoder == "lstm":
            logits, alphas = self.decoder(ids, memory)
            return {"logits": logits, "attention": alphas}
        if not return_attention:
            return {"logits": self.decoder(ids, memory), "attention": None}
        from ..explain.recording import recording

        cross = self.decoder.decoder.layers[-1].cross_attn
        with recording(cross) as weights:
            logits = self.decoder(ids, memory)
        return {"logits": logits, "attention": weights[-1].mean(1)}          # (B, heads, T, N) -> (B, T, N)

    def forward(self, images: Tensor, ids: Tensor | None = None,
                return_attention: bool = False) -> dict[str, Tensor | None]:
        """ids None: one decoder step on token 0 (what `vitlab info` counts: the encoder and one word's decoder)."""
        if ids is None:
            ids = torch.zeros(images.shape[0], 1, dtype=torch.long, device=images.device)
        return self.decode(ids, self.encode(images), return_attention)

    def step_fn(self, memory: Tensor):
        """The `step(tokens, rows) -> log_probs` of vitlab.text.decoding for images encoded as `memory`."""
        def step(tokens: Tensor, rows: Tensor) -> Tensor:
            logits = self.decode(tokens, memory[rows])["logits"][:, -1]     # (n, vocab)
            return F.log_softmax(logits.float(), -1)

        return step

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos", "encoder.net.pos_embed", "decoder.embed.pos"}


def doubly_stochastic_penalty(alphas: Tensor, token_mask: Tensor) -> Tensor:
    """Eq. 14 of Xu et al. 2015 per image: sum_i (1 - sum_t alpha_ti)^2 over the N image tokens, the sum over t
    taken over real (non-padding) steps only. alphas (B, T, N), token_mask (B, T) bool -> (B,)."""
    total = (alphas * token_mask[..., None].to(alphas.dtype)).sum(1)         # (B, N): attention each token got
    return ((1.0 - total) ** 2).sum(-1)


def is_captioner(model: nn.Module) -> bool:
    return isinstance(model, Captioner)


# --- variants: encoder + decoder; 64 px, an 8x8 grid of image tokens -----------------------------------------------
def _captioner(overrides: dict[str, Any], **defaults: Any) -> Captioner:
    return Captioner(CaptionerConfig(**{**defaults, **overrides}))


@register_model(task="captioning")
def caption_vit_micro_patch8_64(**kw: Any) -> Captioner:
    """ViT (1 block, width 64, 8 px patches) patch tokens + a 1-layer transformer decoder, 64x64."""
    return _captioner(kw, encoder="vit", decoder="transformer")


@register_model(task="captioning")
def caption_resnet_micro_64(**kw: Any) -> Captioner:
    """ResNet grid (ImageNet stem, 2 stages of 2 basic blocks, widths 32-64, stride 8) + a 1-layer transformer
    decoder, 64x64."""
    return _captioner(kw, encoder="resnet", decoder="transformer")


@register_model(task="captioning")
def sat_lstm_resnet_micro_64(**kw: Any) -> Captioner:
    """Show, Attend and Tell as the paper: CNN grid + LSTM with soft attention and eq. 14's regulariser, 64x64."""
    return _captioner(kw, encoder="resnet", decoder="lstm")


@register_model(task="captioning")
def sat_lstm_vit_micro_patch8_64(**kw: Any) -> Captioner:
    """The paper's LSTM with soft attention over ViT patch tokens, 64x64."""
    return _captioner(kw, encoder="vit", decoder="lstm")
