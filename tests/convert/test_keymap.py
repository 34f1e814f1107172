"""The converters' one strict rename (rename_or_raise) and the key summary in their errors (group_keys)."""
import pytest
import torch

from vitlab.convert._keymap import group_keys, rename_or_raise
from vitlab.errors import VitlabError

BODY = [("encoder.layer.{i}.output.dense.{p}", "blocks.{i}.mlp.fc2.{p}"), ("layernorm.{p}", "norm.{p}")]
HEAD = [("classifier.{p}", "head.{p}")]


def _sd(*keys):
    return {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}


def test_prefix_goes_through_the_body_table_the_rest_through_the_head_table():
    sd = _sd("vit.encoder.layer.3.output.dense.weight", "vit.layernorm.bias", "classifier.weight")
    out = rename_or_raise(sd, BODY, prefix="vit", head_table=HEAD, what="x")
    assert out.keys() == {"blocks.3.mlp.fc2.weight", "norm.bias", "head.weight"}
    assert out["blocks.3.mlp.fc2.weight"] is sd["vit.encoder.layer.3.output.dense.weight"]   # tensors untouched


def test_a_bare_base_model_save_goes_through_both_tables():
    out = rename_or_raise(_sd("layernorm.weight", "classifier.bias"), BODY, prefix="vit", head_table=HEAD, what="x")
    assert out.keys() == {"norm.weight", "head.bias"}


def test_unknown_keys_raise_one_line_naming_them_grouped_with_their_prefix():
    sd = _sd(*[f"vit.encoder.layer.{i}.attention.gamma" for i in range(4)], "pooler.dense.weight",
             "vit.layernorm.weight")
    with pytest.raises(VitlabError) as e:
        rename_or_raise(sd, BODY, prefix="vit", head_table=HEAD, what="ck: weights this ViT converter does not know")
    assert str(e.value) == ("ck: weights this ViT converter does not know: pooler.dense.weight, "
                            "vit.encoder.layer.{0..3}.attention.gamma")


def test_without_prefix_a_single_table():
    assert rename_or_raise(_sd("layernorm.weight"), BODY, what="x").keys() == {"norm.weight"}
    with pytest.raises(VitlabError, match=r"^t: classifier\.weight$"):
        rename_or_raise(_sd("classifier.weight"), BODY, what="t")


def test_group_keys_summarises_ranges_gaps_and_the_overflow():
    assert group_keys([f"blocks.{i}.attn.qkv.weight" for i in range(12)]) == "blocks.{0..11}.attn.qkv.weight"
    assert group_keys(["blocks.0.x", "blocks.2.x", "blocks.5.x"]) == "blocks.{0,2,5}.x"
    assert group_keys([f"k{i}" for i in range(10)], limit=3) == "k0, k1, k2 (+7 more)"
