"""The model speed table of benchmarks/bench_models.py: one row per model,
with its size and measured throughput."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_models import model_table, render  # noqa: E402

from helpers.models import MODEL_NAMES, build_model, count_parameters  # noqa: E402


def test_model_table_has_one_row_per_model():
    rows = model_table(batch_size=2, steps=1, warmup=0, device="cpu")
    assert [r["name"] for r in rows] == list(MODEL_NAMES)
    for r in rows:
        model = build_model(r["name"]) if r["name"] != "linear_projection" else None
        if model is not None:
            assert r["params"] == count_parameters(model)
            assert r["output_shape"] == (2, 50)
        else:
            assert r["params"] == 73_928_706 and r["output_shape"] == (2, 4096)
        assert r["train_clips_per_s"] > 0 and r["infer_clips_per_s"] > 0
        assert r["input_seconds"] == pytest.approx(r["input_samples"] / 16000)
        assert r["device"] == "cpu" and r["amp"] is None
    text = render(rows)
    assert all(name in text for name in MODEL_NAMES) and "train clips/s" in text


@pytest.mark.parametrize("native", [True, False])
def test_model_table_amp_on_cpu(native, monkeypatch):
    """bfloat16 where the CPU computes it natively, float32 (no autocast) where it would be emulated."""
    import helpers.train
    monkeypatch.setattr(helpers.train, "cpu_has_native_bfloat16", lambda *a: native)
    rows = model_table(["cnn1d", "crnn"], n_tags=5, batch_size=2, steps=1, warmup=0, device="cpu", use_amp=True)
    assert [r["amp"] for r in rows] == (["bfloat16", "bfloat16"] if native else [None, None])
    assert all(r["output_shape"] == (2, 5) and r["train_clips_per_s"] > 0 for r in rows)


def test_model_table_rejects_bad_settings():
    with pytest.raises(ValueError, match="batch_size"):
        model_table(["cnn1d"], batch_size=1)
    with pytest.raises(ValueError, match="valid names"):
        model_table(["nope"])


def test_gpu_plan_counts_the_training_flops_of_figure_1():
    """Figure 1's convolutions by hand: 2 * k * k * c_in * c_out * h * w per
    layer forward, about three times that for a training step (forward, and
    the gradients of the input and of the weights)."""
    from bench_gpu_plan import training_flops_per_clip

    shapes = [(1, 64, 96, 188), (64, 128, 24, 47), (128, 128, 8, 15), (128, 64, 2, 5)]
    forward = sum(2 * 9 * c_in * c_out * h * w for c_in, c_out, h, w in shapes) + 2 * 64 * 50
    assert training_flops_per_clip("cnn2d") == pytest.approx(3 * forward, rel=0.05)
