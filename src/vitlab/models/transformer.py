"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017), for translation.

    source ids (B, S) -> TokenEmbedding (x sqrt(d), + sinusoidal positions) -> N encoder layers -> memory (B, S, d)
    target ids (B, T) -> TokenEmbedding -> N decoder layers (masked self-attention, cross-attention to the memory,
                         FFN) -> linear (tied to the target embedding, §3.4) -> logits (B, T, vocab)

Post-LN (the paper's: LayerNorm after each residual sum) or pre-LN (`norm_first`, Xiong et al. 2020: before each
sub-layer; trains without a long warm-up). One vocabulary for both languages shares the source embedding, the
target embedding and the output projection (§3.4, as the paper's shared BPE); `share_embeddings=False` gives the
source its own embedding (and vocabulary size). Decoding: greedy or beam search (beam 4, length penalty 0.6, §6.1)
through vitlab.text.decoding. Label smoothing (0.1, §5.4) is the task's loss; the warm-up schedule is
`vitlab train --schedule noam`.

    model = create_model("transformer_tiny", num_classes=tokenizer.vocab_size)
    out = model(src, tgt_in, src_mask)            # {"logits": (B, T, vocab)}
    ids = model.generate(src, src_mask, beam_size=4)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..registry import register_model
from ..text.decoding import beam_search, greedy_decode
from ..text.modules import TextDecoder, TextEncoder, TokenEmbedding


@dataclass
class TransformerConfig:
    num_classes: int = 1000            # target vocabulary size (the output layer's width)
    src_vocab_size: int | None = None  # source vocabulary; None: the target's (one joint vocabulary)
    dim: int = 512                     # d_model
    encoder_depth: int = 6             # N encoder layers
    decoder_depth: int = 6             # N decoder layers
    num_heads: int = 8                 # h
    ffn_dim: int = 2048                # d_ff, the FFN's hidden width
    dropout: float = 0.1               # P_drop: on sub-layer outputs and on the embedding sums (§5.4)
    norm_first: bool = False           # False: post-LN as the paper; True: pre-LN
    share_embeddings: bool = True      # source embedding = target embedding = output projection (needs one vocab)
    max_len: int = 128                 # positions (tokens per sentence, bos and eos included)
    pad_id: int = 0                    # the tokenizer's padding id (vitlab.text builds vocabularies with pad 0)
    bos_id: int = 1
    eos_id: int = 2
    beam_size: int = 4                 # inference defaults (§6.1): beam width and length penalty alpha
    length_penalty: float = 0.6


class EncoderDecoderTransformer(nn.Module):
    """src (B, S) long, tgt (B, T) long (bos first), src_mask (B, S) bool True = token -> {"logits": (B, T, V)}.
    A tokenizer (vitlab.text.TextTokenizer), when attached as `model.tokenizer`, lets `translate` take text."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.num_heads:
            raise ValueError(f"dim {cfg.dim} is not divisible by num_heads {cfg.num_heads}")
        if cfg.share_embeddings and cfg.src_vocab_size not in (None, cfg.num_classes):
            raise ValueError(f"share_embeddings needs one vocabulary; got source {cfg.src_vocab_size} and target "
                             f"{cfg.num_classes} tokens")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        tgt_embed = TokenEmbedding(cfg.num_classes, cfg.dim, cfg.max_len, dropout=cfg.dropout)
        src_embed = tgt_embed if cfg.share_embeddings else TokenEmbedding(
            cfg.src_vocab_size or cfg.num_classes, cfg.dim, cfg.max_len, dropout=cfg.dropout)
        self.encoder = TextEncoder(src_embed, cfg.encoder_depth, cfg.dim, cfg.num_heads, cfg.ffn_dim, cfg.dropout,
                                   norm_first=cfg.norm_first)
        self.decoder = TextDecoder(tgt_embed, cfg.num_classes, cfg.decoder_depth, cfg.dim, cfg.num_heads,
                                   cfg.ffn_dim, cfg.dropout, norm_first=cfg.norm_first, tie_output=True)
        self.tokenizer = None          # attached by the translation task (run_training, checkpoint loading)
        self._init_weights()

    def _init_weights(self) -> None:
        # Xavier-uniform linear layers as the reference implementations (tensor2tensor, torch.nn.Transformer);
        # embeddings keep TokenEmbedding's N(0, d^-0.5), which the sqrt(d) scale brings to unit variance
        for name, p in self.named_parameters():
            if p.dim() > 1 and ".tok." not in f".{name}":
                nn.init.xavier_uniform_(p)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src (B, S) -> memory (B, S, dim)."""
        return self.encoder(src, self._mask(src, src_mask))

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """tgt (B, T) (bos first), memory (B, S, dim) -> logits (B, T, vocab)."""
        return self.decoder(tgt, memory, src_mask)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None) -> dict[str, Tensor]:
        src_mask = self._mask(src, src_mask)
        return {"logits": self.decode(tgt, self.encode(src, src_mask), src_mask)}

    @torch.no_grad()
    def generate(self, src: Tensor, src_mask: Tensor | None = None, *, beam_size: int | None = None,
                 length_penalty: float | None = None, max_len: int | None = None) -> list[list[int]]:
        """Target ids per sentence (no bos, no eos): greedy when beam_size is 1, else beam search (defaults:
        the config's). max_len: new tokens at most (default 2 S + 10, within the position table)."""
        beam_size = self.cfg.beam_size if beam_size is None else beam_size
        length_penalty = self.cfg.length_penalty if length_penalty is None else length_penalty
        limit = self.cfg.max_len - 1
        max_len = min(limit, 2 * src.shape[1] + 10 if max_len is None else max_len)
        src_mask = self._mask(src, src_mask)
        memory = self.encode(src, src_mask)                                   # (B, S, dim)

        def step(tokens: Tensor, rows: Tensor) -> Tensor:
            logits = self.decode(tokens, memory[rows], src_mask[rows])[:, -1]     # (N, vocab)
            return logits.float().log_softmax(-1)

        B, c = src.shape[0], self.cfg
        if beam_size == 1:
            return greedy_decode(step, B, c.bos_id, c.eos_id, max_len, device=src.device)
        return beam_search(step, B, c.bos_id, c.eos_id, max_len, beam_size=beam_size,
                           length_penalty=length_penalty, device=src.device)

    def translate(self, texts: list[str], **kw: object) -> list[str]:
        """Sentences -> translations, through the attached tokenizer (vitlab.text.TextTokenizer)."""
        if self.tokenizer is None:
            from ..errors import VitlabError

            raise VitlabError("this model has no tokenizer: load a trained run directory (vitlab train writes one)")
        device = next(self.parameters()).device
        src, mask = self.tokenizer.encode_batch(texts)
        ids = self.generate(src.to(device), mask.to(device), **kw)             # type: ignore[arg-type]
        return [self.tokenizer.decode(i) for i in ids]

    def _mask(self, src: Tensor, src_mask: Tensor | None) -> Tensor:
        return src != self.cfg.pad_id if src_mask is None else src_mask


def _build(cfg: TransformerConfig, **kw: object) -> EncoderDecoderTransformer:
    from dataclasses import replace

    unknown = [k for k in kw if k not in TransformerConfig.__dataclass_fields__]
    if unknown:
        raise TypeError(f"unexpected argument(s) {', '.join(unknown)}")
    return EncoderDecoderTransformer(replace(cfg, **kw))


@register_model(task="translation")
def transformer_tiny(**kw: object) -> EncoderDecoderTransformer:
    """d 128, 2 + 2 layers, 4 heads: numbers-en-fr on a CPU in minutes."""
    return _build(TransformerConfig(dim=128, encoder_depth=2, decoder_depth=2, num_heads=4, ffn_dim=512), **kw)


@register_model(task="translation")
def transformer_small(**kw: object) -> EncoderDecoderTransformer:
    """d 256, 3 + 3 layers, 4 heads."""
    return _build(TransformerConfig(dim=256, encoder_depth=3, decoder_depth=3, num_heads=4, ffn_dim=1024), **kw)


@register_model(task="translation")
def transformer_base(**kw: object) -> EncoderDecoderTransformer:
    """The paper's base model (Table 3): d 512, 6 + 6 layers, 8 heads, d_ff 2048."""
    return _build(TransformerConfig(), **kw)
