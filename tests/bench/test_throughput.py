"""vitlab bench MODEL: the HF reference is the same model (equal logits), timing is interleaved, MFU arithmetic,
the CLI's table and JSON."""
import json

import pytest
import torch

import vitlab
from vitlab.bench import peak
from vitlab.bench.peak import flops_per_image, matmul_peak, mfu
from vitlab.bench.throughput import BenchConfig, build_reference, format_table, run_bench, time_interleaved
from vitlab.cli import main
from vitlab.errors import VitlabError


def test_hf_reference_is_the_same_model_with_our_weights():
    pytest.importorskip("transformers", reason="the HF reference needs transformers")
    torch.manual_seed(0)
    ours = vitlab.create_model("vit_micro_patch4_32", num_classes=7).eval()
    hf = build_reference("hf", ours).eval()
    assert type(hf.model).__name__ == "ViTForImageClassification"
    assert hf.model.config._attn_implementation == "sdpa"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(x), ours(x), atol=1e-5, rtol=1e-5)


def test_timm_reference_builds_the_same_architecture():
    timm = pytest.importorskip("timm", reason="timm is not installed here (runs on the GPU machine)")
    ours = vitlab.create_model("vit_tiny_patch16_224", num_classes=10)
    ref = build_reference("timm", ours)
    assert isinstance(ref, timm.models.VisionTransformer)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())


def test_steps_are_timed_round_robin_after_their_warm_up():
    calls = []
    steps = {"ours": lambda: calls.append("ours"), "hf": lambda: calls.append("hf")}
    seconds = time_interleaved(steps, warmup=2, repeats=3)
    assert calls == ["ours", "ours", "hf", "hf"] + ["ours", "hf"] * 3
    assert {k: len(v) for k, v in seconds.items()} == {"ours": 3, "hf": 3}


def test_run_bench_measures_ours_and_hf_and_reports_the_ratio():
    pytest.importorskip("transformers", reason="the HF reference needs transformers")
    cfg = BenchConfig("vit_micro_patch2_8", mode="train", precision="bf16", batch_size=4, num_classes=10,
                      compare=("hf",), warmup=1, repeats=2, peak=False)
    r = run_bench(cfg)
    ours, hf = r["timings"]["ours"], r["timings"]["hf"]
    assert len(ours["seconds"]) == len(hf["seconds"]) == 2
    assert ours["images_per_s"] == pytest.approx(4 / ours["latency_ms"] * 1e3)
    assert r["ratios"]["hf"] == pytest.approx(ours["images_per_s"] / hf["images_per_s"])
    assert ours["memory_mb"] > 0 and hf["memory_mb"] > 0
    # counted on the meta device, attention products included: 6 blocks x 2 x 17^2 x 64 beyond the linear layers
    linear = sum(m.in_features * m.out_features for m in vitlab.create_model(
        "vit_micro_patch2_8", num_classes=10).modules() if isinstance(m, torch.nn.Linear))
    linear_macs = 16 * 3 * 64 * 4 + 17 * (linear - 64 * 10) + 64 * 10      # patch conv, tokens x blocks, head
    assert r["macs_per_image"] == linear_macs + 6 * 2 * 17 ** 2 * 64
    table = format_table([r])
    assert "| vit_micro_patch2_8 | train | bf16 | 4 | hf |" in table and f"{r['ratios']['hf']:.2f}x" in table


def test_flops_and_mfu_arithmetic():
    # ViT-B/16: 17.56 GMACs forward -> 35.1 GFLOPs; training = 3 x forward
    assert flops_per_image(17.56e9, train=False) == pytest.approx(35.12e9)
    assert flops_per_image(17.56e9, train=True) == pytest.approx(105.36e9)
    # 100 images/s of ViT-B training on a 100 TFLOP/s peak: 10.5 TFLOP/s used
    assert mfu(100, 17.56e9, 100e12, train=True) == pytest.approx(0.10536)


class _Clock:
    """A perf_counter that moves only when the timed kernel runs: each call costs `step` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step, self.calls = 0.0, step, 0

    def perf_counter(self) -> float:
        return self.now

    def kernel(self) -> None:
        self.calls += 1
        self.now += self.step


def test_rate_is_the_flop_count_over_the_timed_seconds(monkeypatch):
    clock = _Clock(step=5e-4)                                # one 128^3 matmul "takes" 0.5 ms
    monkeypatch.setattr(peak, "time", clock)
    rate = peak._rate(clock.kernel, 2 * 128 ** 3, torch.device("cpu"), repeats=3, min_time_s=0.01)
    # 2 n^3 = 4,194,304 FLOPs in 0.5 ms: 8.388608 GFLOP/s; inner = 0.01 / 0.0005 = 20 matmuls per timed run
    assert rate == pytest.approx(4_194_304 / 5e-4, rel=1e-9) == pytest.approx(8.388608e9, rel=1e-9)
    assert clock.calls == 1 + 1 + 3 * 20                    # warm-up, the probe, three timed runs of 20


def test_matmul_peak_counts_2n3_and_keeps_the_fastest_of_its_matmul_kernels(monkeypatch):
    seen = []

    def fake_rate(kernel, flops, device, repeats, min_time_s):
        seen.append((kernel(), flops))
        return 1e9 * len(seen)                               # the later kernel is the faster one

    monkeypatch.setattr(peak, "_rate", fake_rate)
    torch.manual_seed(0)
    rate = matmul_peak("fp32", "cpu", n=96, repeats=1, min_time_s=0.0)
    torch.manual_seed(0)
    a, b = torch.randn(96, 96), torch.randn(96, 96)          # the operands matmul_peak drew
    assert [flops for _, flops in seen] == [2 * 96 ** 3] * len(seen) == [1_769_472] * len(seen)
    assert rate == 1e9 * len(seen)
    torch.testing.assert_close(seen[0][0], a @ b)            # torch.mm
    if len(seen) > 1:                                        # oneDNN's linear: a @ b^T, the same 2 n^3 FLOPs
        assert len(seen) == 2
        torch.testing.assert_close(seen[1][0], a @ b.T, atol=1e-4, rtol=1e-4)


def test_cli_bench_model_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "vit_micro_patch2_8", "--mode", "infer", "--precision", "fp32", "--batch-size", "2",
                 "--repeats", "1", "--warmup", "0", "--no-peak", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| vit_micro_patch2_8 | infer | fp32 | 2 | ours |" in printed
    saved = json.loads(out.read_text())
    assert saved["results"][0]["config"]["model"] == "vit_micro_patch2_8"


def test_bad_bench_requests_are_one_line_errors(capsys):
    assert main(["bench", "not_a_model"]) == 2
    assert "unknown bench target 'not_a_model'" in capsys.readouterr().err
    with pytest.raises(VitlabError, match="mode must be train or infer"):
        run_bench(BenchConfig("vit_micro_patch2_8", mode="fit"))
    with pytest.raises(VitlabError, match="--compare takes hf or timm"):
        run_bench(BenchConfig("vit_micro_patch2_8", compare=("jax",)))


def test_count_macs_sees_the_cpu_fast_path_on_real_tensors():
    """On real CPU tensors in eval mode the Linears take oneDNN's fused op, which FlopCounterMode cannot see; the
    count must still equal the meta-device count (and the hand count of one Linear)."""
    import torch.nn as nn

    from vitlab import create_model
    from vitlab.bench.flops import count_macs
    from vitlab.layers.cpu_kernels import _tracing
    from vitlab.layers.linear import Linear

    layer = Linear(48, 80).eval()
    assert count_macs(nn.Sequential(layer), (3, 48)) == 3 * 48 * 80
    model = create_model("vit_micro_patch4_32", num_classes=6).eval()
    with torch.device("meta"):
        meta = create_model("vit_micro_patch4_32", num_classes=6).eval()
    assert count_macs(model, (2, 3, 32, 32)) == count_macs(meta, (2, 3, 32, 32)) > 0
    assert not _tracing()                                          # plain_pytorch() left no state behind
