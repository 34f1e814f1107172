"""Key tables: another library's parameter names against ours, readable side by side and usable both ways.

A table is a list of (foreign, vitlab) name templates. `{i}` stands for a number (a block index), any other
`{name}` for one dotted component (`weight`, `bias`, ...):

    ("encoder.layer.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}")

`rename(state_dict, table)` translates foreign -> vitlab, `rename(state_dict, table, reverse=True)` the other way;
keys no template matches are returned apart, so the caller can report them. Shape work that a rename cannot do
(q/k/v fusion, transposes) lives in small transforms next to the table that needs them. `group_keys` summarises
a list of keys for an error message (used by every converter and by vitlab.checkpoint); `rename_or_raise` is
the converters' strict rename: every key translated, or one error listing those no template knows.
"""
from __future__ import annotations

import re
from collections import defaultdict
from functools import cache

import torch
from torch import Tensor

from ..errors import VitlabError

KeyTable = list[tuple[str, str]]


@cache
def _template_regex(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(rf"(?P<{m.group(1)}>\d+)" if m.group(1) == "i" else rf"(?P<{m.group(1)}>[^.]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out) + r"\Z")


def rename_key(key: str, table: KeyTable, reverse: bool = False) -> str | None:
    """The translated name of `key`, or None when no template of the table matches it."""
    for foreign, ours in table:
        src, dst = (ours, foreign) if reverse else (foreign, ours)
        m = _template_regex(src).match(key)
        if m:
            return dst.format(**m.groupdict())
    return None


def rename(state_dict: dict[str, Tensor], table: KeyTable, reverse: bool = False
           ) -> tuple[dict[str, Tensor], list[str]]:
    """Translate every key through the table. Returns (translated state dict, keys nothing matched)."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for k, v in state_dict.items():
        new = rename_key(k, table, reverse)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    return out, unknown


def rename_or_raise(weights: dict[str, Tensor], table: KeyTable, *, what: str, prefix: str = "",
                    head_table: KeyTable = ()) -> dict[str, Tensor]:
    """Every key translated through the table, or VitlabError "`what`: <the keys nothing matched, grouped>".

    `what` says whose weights and which converter ("ckpt.pth: timm weights this ViT converter does not support").
    With `prefix` (an HF base-model prefix such as "vit"): keys under `prefix.` go through `table` with the prefix
    removed, the others (the task head) through `head_table`; weights without any `prefix.` key (a bare *Model
    save) go through both tables.
    """
    p = prefix + "."
    if prefix and any(k.startswith(p) for k in weights):
        sd, unknown = rename({k[len(p):]: v for k, v in weights.items() if k.startswith(p)}, table)
        heads, unknown_heads = rename({k: v for k, v in weights.items() if not k.startswith(p)}, head_table)
        sd, unknown = {**sd, **heads}, [p + k for k in unknown] + unknown_heads
    else:
        sd, unknown = rename(weights, list(table) + list(head_table))
    if unknown:
        raise VitlabError(f"{what}: {group_keys(sorted(unknown))}")
    return sd


# --- transforms shared by several tables -------------------------------------------------------------------------
QKV_PARTS = ("q", "k", "v")


def fuse_qkv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate separate `<prefix>.q/.k/.v.<param>` into our fused `<prefix>.qkv.<param>` (rows in q, k, v order).

    (dim, dim) x 3 -> (3 * dim, dim); biases (dim,) x 3 -> (3 * dim,). Attention.forward splits the fused output
    as (3, heads, head_dim), which is exactly this concatenation.
    """
    out: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k, v in state_dict.items():
        m = re.match(r"(.*)\.([qkv])\.(weight|bias)\Z", k)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
        else:
            out[k] = v
    for (prefix, param), qkv in parts.items():
        missing = [p for p in QKV_PARTS if p not in qkv]
        if missing:
            raise VitlabError(f"{prefix}: {param} of {', '.join(missing)} missing, cannot fuse q/k/v")
        out[f"{prefix}.qkv.{param}"] = torch.cat([qkv[p] for p in QKV_PARTS], dim=0)
    return out


def split_qkv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of fuse_qkv: `<prefix>.qkv.<param>` -> `<prefix>.q/.k/.v.<param>`."""
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        m = re.match(r"(.*)\.qkv\.(weight|bias)\Z", k)
        if m:
            for name, chunk in zip(QKV_PARTS, v.chunk(3, dim=0)):
                out[f"{m.group(1)}.{name}.{m.group(2)}"] = chunk.contiguous()
        else:
            out[k] = v
    return out


def strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove `prefix` from every key that has it (e.g. DataParallel's `module.`)."""
    return {(k.removeprefix(prefix)): v for k, v in state_dict.items()}


def count_blocks(keys: list[str] | set[str], pattern: str) -> int:
    """Number of blocks: 1 + the largest index `{i}` in keys matching the template `pattern` (0 if none)."""
    rx = _template_regex(pattern)
    idx = [int(m.group("i")) for k in keys if (m := rx.match(k))]
    return max(idx) + 1 if idx else 0


def group_keys(keys: list[str], limit: int = 8) -> str:
    """Summarise keys by pattern: 'blocks.{0..11}.attn.qkv.weight' rather than twelve lines."""
    groups: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        parts = k.split(" ")[0].split(".")
        pattern = ".".join("#" if p.isdigit() else p for p in parts)
        nums = [p for p in parts if p.isdigit()]
        groups[pattern + (" " + " ".join(k.split(" ")[1:]) if " " in k else "")].append(".".join(nums))
    out = []
    for pattern, nums in groups.items():
        if len(nums) > 1 and all(nums):
            idx = sorted({int(n.split(".")[0]) for n in nums})
            rng = f"{{{idx[0]}..{idx[-1]}}}" if idx == list(range(idx[0], idx[-1] + 1)) else "{" + ",".join(
                map(str, idx)) + "}"
            out.append(pattern.replace("#", rng, 1).replace("#", "*"))
        else:
            out.append(pattern.replace("#", nums[0].split(".")[0] if nums and nums[0] else "#", 1))
    shown = ", ".join(out[:limit])
    return shown + (f" (+{len(out) - limit} more)" if len(out) > limit else "")
