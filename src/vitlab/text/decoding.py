"""Greedy and beam-search decoding for any autoregressive text model.

A model is seen through one function, `step(tokens, rows) -> log_probs`: tokens (N, t) are N prefixes (bos
first), rows (N,) the batch item each prefix belongs to (a translation model indexes its encoder memory with it, a
captioner its image features), log_probs (N, V) the next token's log-probabilities. No KV cache: each step reruns
the prefix (the sentences here are short).

Beam search (Wu et al. 2016, as Vaswani et al. 2017 use it): scores are sum log p / lp(length),
lp = ((5 + length) / 6) ** length_penalty; a hypothesis ends at eos; the search stops for an item once no live
beam can beat its `beam_size` finished ones (exact for length_penalty >= 0), or at max_len.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Step = Callable[[Tensor, Tensor], Tensor]


def length_norm(length: int, length_penalty: float) -> float:
    """GNMT's lp(length) = ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** length_penalty


@torch.no_grad()
def greedy_decode(step: Step, batch_size: int, bos_id: int, eos_id: int, max_len: int,
                  device: torch.device | str = "cpu") -> list[list[int]]:
    """The most probable next token at each step, for `batch_size` items at once. Returns the generated ids per
    item (no bos; eos not included), at most max_len tokens."""
    tokens = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_len):
        nxt = step(tokens, rows).argmax(-1)                                   # (B,)
        nxt = nxt.masked_fill(done, eos_id)
        tokens = torch.cat([tokens, nxt[:, None]], 1)                         # (B, t + 1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return [_until_eos(row[1:].tolist(), eos_id) for row in tokens]


@torch.no_grad()
def beam_search(step: Step, batch_size: int, bos_id: int, eos_id: int, max_len: int, beam_size: int = 4,
                length_penalty: float = 0.6, device: torch.device | str = "cpu") -> list[list[int]]:
    """The best hypothesis per item under the length-normalised score (see the module docstring). Returns the
    generated ids per item (no bos, no eos)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    K = beam_size
    tokens = torch.full((batch_size * K, 1), bos_id, dtype=torch.long, device=device)   # (B*K, t)
    rows = torch.arange(batch_size, device=device).repeat_interleave(K)              # (B*K,)
    scores = torch.full((batch_size, K), float("-inf"), device=device)
    scores[:, 0] = 0.0                           # one live beam at the start, so the K beams are not K copies
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    active = [True] * batch_size
    for t in range(1, max_len + 1):
        logp = step(tokens, rows).float()                                     # (B*K, V)
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(batch_size, K, V)).view(batch_size, K * V)   # (B, K*V)
        top, idx = cand.topk(min(2 * K, K * V), dim=-1)                      # (B, 2K)
        new_tokens, new_scores = tokens.view(batch_size, K, -1).clone(), torch.full_like(scores, float("-inf"))
        next_ids = torch.full((batch_size, K), eos_id, dtype=torch.long, device=device)
        for b in range(batch_size):
            if not active[b]:
                continue
            live = 0
            for rank, (s, j) in enumerate(zip(top[b].tolist(), idx[b].tolist())):
                if s == float("-inf"):
                    break
                beam, token = divmod(j, V)
                if token == eos_id:
                    if rank < K:         # an eos past the first K candidates would have pushed out a better one
                        prefix = tokens[b * K + beam, 1:].tolist()
                        finished[b].append((s / length_norm(t, length_penalty), prefix))
                    continue
                new_tokens[b, live] = tokens[b * K + beam]
                next_ids[b, live], new_scores[b, live] = token, s
                live += 1
                if live == K:
                    break
            best_live = new_scores[b].max().item()
            kept = sorted(finished[b], key=lambda h: -h[0])[:K]
            finished[b] = kept
            # the best a live beam can still reach: its score only falls, lp(length) grows at most to lp(max_len)
            bound = best_live / length_norm(max_len, length_penalty) if best_live < 0 else best_live
            if len(kept) == K and kept[-1][0] >= bound or best_live == float("-inf"):
                active[b] = False
        tokens = torch.cat([new_tokens.view(batch_size * K, -1), next_ids.view(-1, 1)], 1)   # (B*K, t + 1)
        scores = new_scores
        if not any(active):
            break
    results = []
    for b in range(batch_size):
        hyps = list(finished[b])
        if active[b]:                # max_len reached: the live beams compete as they are
            for k in range(K):
                s = scores[b, k].item()
                if s > float("-inf"):
                    hyps.append((s / length_norm(tokens.shape[1] - 1, length_penalty),
                                 tokens[b * K + k, 1:].tolist()))
        results.append(max(hyps, key=lambda h: h[0])[1] if hyps else [])
    return results


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[:ids.index(eos_id)] if eos_id in ids else ids
