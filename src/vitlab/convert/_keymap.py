"""Key tables: another library's parameter names against ours, readable side by side and usable both ways.

A table is a list of (foreign, vitlab) name templates. `{i}` stands for a number (a block index), any other
`{name}` for one dotted component (`weight`, `bias`, ...):

    ("encoder.layer.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}")

`rename(state_dict, table)` translates foreign -> vitlab, `rename(state_dict, table, reverse=True)` the other way;
keys no template matches are returned apart, so the caller can report them. Shape work that a rename cannot do
(q/k/v fusion, transposes) lives in small transforms next to the table that needs them.
"""
from __future__ import annotations

import re
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
