"""The text side: tokenizers (HF `tokenizers`), embeddings, text encoder/decoder, greedy and beam decoding."""
from .decoding import beam_search, greedy_decode
from .modules import TextDecoder, TextEncoder, TokenEmbedding, sincos_1d
from .tokenizer import SpecialTokens, TextTokenizer, build_word_level, load_bpe, pad_ids

__all__ = ["beam_search", "greedy_decode", "TextDecoder", "TextEncoder", "TokenEmbedding", "sincos_1d",
           "SpecialTokens", "TextTokenizer", "build_word_level", "load_bpe", "pad_ids"]
