"""Tests of helpers.models: shape tables and parameter counts from the
homework, forward/backward, embeddings, longer inputs, learning, checkpoints,
input errors and the speed table. Kept small (batch 1-2, short inputs where a
model allows them) so that the file runs in well under a minute on 2 cores."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.audio import LogMelSpectrogram
from helpers.models import MODEL_NAMES, Conv2dBlock, ResBlock2d, build_model, count_parameters, layer_shapes, model_options

pytestmark = pytest.mark.filterwarnings("error")   # a warning would break nbval's stderr comparison

CLASSIFIERS = tuple(n for n in MODEL_NAMES if n != "linear_projection")
# A small linear projection where its size does not matter (the real one has 74M parameters).
SMALL = {"linear_projection": {"embedding_dim": 64}}


def waveform(batch: int, n_samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, n_samples, generator=gen)


def make(name: str, n_tags: int = 50, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model(name, n_tags=n_tags, **{**SMALL.get(name, {}), **options})


# ----------------------------------------------------------------------------- names and options

def test_model_names():
    assert MODEL_NAMES == ("cnn1d", "cnn2d", "cnn2d_tuned", "crnn", "musicnn", "short_chunk", "short_chunk_res",
                           "linear_projection")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("fcn")
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_options_are_checked():
    assert model_options("cnn2d_tuned") == {"n_blocks": 5, "residual": False, "dropout": 0.5}
    assert model_options("cnn1d") == {}
    with pytest.raises(ValueError, match="n_blocks"):
        build_model("cnn2d_tuned", depth=4)
    with pytest.raises(ValueError, match="4, 5, 6"):
        build_model("cnn2d_tuned", n_blocks=3)
    with pytest.raises(ValueError, match="dropout"):
        build_model("cnn1d", dropout=0.1)
    with pytest.raises(ValueError, match="n_tags"):
        build_model("cnn1d", n_tags=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_front_end_and_attributes(name):
    model = make(name)
    n_mels = 128 if name.startswith("short_chunk") else 96
    assert model.n_mels == n_mels
    assert model.input_samples == (59049 if name.startswith("short_chunk") else 48000)
    assert isinstance(model.spec, LogMelSpectrogram)
    spec = model.spec
    assert (spec.sample_rate, spec.n_fft, spec.hop_length, spec.f_min, spec.f_max, spec.n_mels) == (
        16000, 512, 256, 0.0, 8000.0, n_mels)
    assert isinstance(model.spec_bn, nn.BatchNorm2d) and model.spec_bn.num_features == 1
    assert list(dict(model.named_children()))[:2] == ["spec", "spec_bn"]


# ----------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("name, n_tags, expected", [
    ("cnn1d", 50, 17_300),                  # the homework's baseline
    ("cnn2d", 50, 299_892),                 # Figure 1 with padding 1
    ("cnn1d", 7, 17_300 - 43 * 33),
    ("cnn2d", 7, 299_892 - 43 * 65),
    # regression values of this implementation (Musicnn's matches Won et al.'s MTAT model)
    ("cnn2d_tuned", 50, 447_732),
    ("crnn", 50, 394_100),
    ("musicnn", 50, 784_300),
    ("short_chunk", 50, 3_687_348),
    ("short_chunk_res", 50, 12_104_244),
])
def test_parameter_counts(name, n_tags, expected):
    assert count_parameters(make(name, n_tags)) == expected


def test_linear_projection_full_size():
    model = make("linear_projection", embedding_dim=4096)
    assert model.embedding_dim == 4096
    assert count_parameters(model) == 2 + 96 * 188 * 4096 + 4096
    assert model.projection.in_features == 96 * 188
    x = waveform(2, 48000)
    out = model(x)
    assert out.shape == (2, 4096)
    out.square().mean().backward()
    assert model.projection.weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.embed(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- shape tables

B96 = [("input", (48000,)), ("spec", (1, 96, 188)), ("spec_bn", (1, 96, 188))]
B128 = [("input", (59049,)), ("spec", (1, 128, 231)), ("spec_bn", (1, 128, 231))]
SHAPES = {
    "cnn1d": B96 + [("layer1", (32, 64)), ("layer2", (32, 22)), ("layer3", (32, 8)), ("global_pool", (32,)),
                    ("linear", (50,))],
    "cnn2d": B96 + [("layer1", (64, 24, 47)), ("layer2", (128, 8, 15)), ("layer3", (128, 2, 5)),
                    ("layer4", (64, 1, 1)), ("global_pool", (64,)), ("linear", (50,))],
    "cnn2d_tuned": B96 + [("layer1", (64, 48, 94)), ("layer2", (128, 24, 47)), ("layer3", (128, 12, 23)),
                          ("layer4", (128, 4, 5)), ("layer5", (64, 1, 1)), ("global_pool", (64,)),
                          ("dropout", (64,)), ("linear", (50,))],
    "crnn": B96 + [("layer1", (64, 48, 94)), ("layer2", (128, 16, 31)), ("layer3", (128, 4, 7)),
                   ("layer4", (128, 1, 1)), ("gru", (1, 32)), ("dropout", (32,)), ("linear", (50,))],
    "musicnn": B96 + [("front_end", (561, 188)), ("layer1", (64, 188)), ("layer2", (64, 188)),
                      ("layer3", (64, 188)), ("global_pool", (1506,)), ("dense", (200,)), ("dropout", (200,)),
                      ("linear", (50,))],
    "short_chunk": B128 + [("layer1", (128, 64, 115)), ("layer2", (128, 32, 57)), ("layer3", (256, 16, 28)),
                           ("layer4", (256, 8, 14)), ("layer5", (256, 4, 7)), ("layer6", (256, 2, 3)),
                           ("layer7", (512, 1, 1)), ("global_pool", (512,)), ("dense", (512,)),
                           ("dropout", (512,)), ("linear", (50,))],
    "short_chunk_res": B128 + [("layer1", (128, 64, 116)), ("layer2", (128, 32, 58)), ("layer3", (256, 16, 29)),
                               ("layer4", (256, 8, 15)), ("layer5", (256, 4, 8)), ("layer6", (256, 2, 4)),
                               ("layer7", (512, 1, 2)), ("global_pool", (512,)), ("dense", (512,)),
                               ("dropout", (512,)), ("linear", (50,))],
    "linear_projection": B96 + [("projection", (64,))],
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer_shapes(name):
    model = make(name)
    model.train()
    assert layer_shapes(model) == SHAPES[name]
    assert model.training            # the mode is restored


@pytest.mark.parametrize("n_blocks, last_layers", [
    (4, [("layer3", (128, 2, 5)), ("layer4", (64, 1, 1))]),
    (6, [("layer4", (128, 6, 11)), ("layer5", (128, 2, 3)), ("layer6", (64, 1, 1))]),
])
def test_tuned_depths(n_blocks, last_layers):
    shapes = dict(layer_shapes(make("cnn2d_tuned", n_blocks=n_blocks)))
    assert [k for k in shapes if k.startswith("layer")] == [f"layer{i}" for i in range(1, n_blocks + 1)]
    for name, shape in last_layers:
        assert shapes[name] == shape
    assert shapes["global_pool"] == (64,)


def test_tuned_residual_blocks():
    model = make("cnn2d_tuned", residual=True, dropout=0.3)
    assert layer_shapes(model) == SHAPES["cnn2d_tuned"]
    assert all(isinstance(getattr(model, f"layer{i}"), ResBlock2d) for i in range(1, 6))
    assert model.dropout.p == 0.3
    shortcut1 = model.layer1.shortcut[0]                              # 1 -> 64 channels: 1x1 conv
    assert isinstance(shortcut1, nn.Conv2d) and shortcut1.kernel_size == (1, 1)
    assert isinstance(model.layer3.shortcut, nn.Identity)             # 128 -> 128
    assert model.layer4.pool.kernel_size == (3, 4)
    plain = make("cnn2d_tuned")
    assert isinstance(plain.layer1, Conv2dBlock)


def test_short_chunk_res_blocks_halve_with_stride():
    model = make("short_chunk_res")
    for i in range(1, 8):
        block = getattr(model, f"layer{i}")
        assert block.conv1.stride == (2, 2) and block.pool is None
        assert block.shortcut[0].kernel_size == (3, 3) and block.shortcut[0].stride == (2, 2)


def test_repr_reads_like_the_homework():
    text = repr(make("cnn2d"))
    assert "(layer1): Conv2dBlock(" in text
    assert "Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" in text
    assert "Conv2d(128, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" in text
    assert "MaxPool2d(kernel_size=(2, 5), stride=(2, 5)" in text
    assert "(linear): Linear(in_features=64, out_features=50, bias=True)" in text
    assert "n_mels=96" in text and "input_samples=48000" in text
    tuned = repr(make("cnn2d_tuned"))
    assert "MaxPool2d(kernel_size=(4, 3), stride=(4, 3)" in tuned and "(dropout): Dropout(p=0.5" in tuned
    musicnn = repr(make("musicnn"))
    for piece in ("kernel_size=(67, 7)", "kernel_size=(38, 7)", "kernel_size=(129,)", "kernel_size=(65,)",
                  "kernel_size=(33,)", "Conv1d(561, 64, kernel_size=(7,), stride=(1,), padding=(3,))",
                  "Linear(in_features=1506, out_features=200, bias=True)"):
        assert piece in musicnn
    assert "GRU(128, 32, num_layers=2, batch_first=True)" in repr(make("crnn"))


# ----------------------------------------------------------------------------- forward, backward, embeddings

@pytest.mark.parametrize("n_tags", [50, 7])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward(name, n_tags):
    model = make(name, n_tags)
    model.train()
    out = model(waveform(2, model.input_samples))
    assert out.shape == (2, n_tags) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    nn.BCEWithLogitsLoss()(out, torch.ones(2, n_tags)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_embedding_is_the_input_of_the_last_linear(name):
    model = make(name).eval()
    x = waveform(2, model.input_samples, seed=3)
    with torch.no_grad():
        z = model.embed(x)
        logits = model(x)
        assert z.shape == (2, model.embedding_dim)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert linears[-1] is model.linear and model.linear.in_features == model.embedding_dim
        torch.testing.assert_close(logits, model.linear(z), rtol=0, atol=0)
        # (batch, 1, samples) is accepted too
        torch.testing.assert_close(model(x[:, None]), logits, rtol=0, atol=0)


# min_samples of each model: its layers' shortest input (or the front end's, 257 samples).
MIN_SAMPLES = {"cnn1d": 257, "cnn2d": 45_824, "cnn2d_tuned": 24_320, "crnn": 24_320, "musicnn": 257,
               "short_chunk": 32_512, "short_chunk_res": 257}


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_longer_and_shortest_inputs(name):
    model = make(name).eval()
    assert model.min_samples == MIN_SAMPLES[name] and model.max_samples is None
    with torch.no_grad():
        assert model(waveform(1, 2 * model.input_samples + 1234)).shape == (1, 50)
        assert model(waveform(1, model.min_samples)).shape == (1, 50)
    with pytest.raises(ValueError, match=f"samples >= {model.min_samples}"):
        model(waveform(1, model.min_samples - 1))


def test_longer_inputs_pool_what_remains():
    shapes = dict(layer_shapes(make("cnn2d"), 6 * 16000))        # 376 frames -> 94 -> 31 -> 10 -> 2
    assert shapes["layer4"] == (64, 1, 2) and shapes["global_pool"] == (64,)
    shapes = dict(layer_shapes(make("short_chunk"), 2 * 59049))  # 462 frames
    assert shapes["layer7"] == (512, 1, 3) and shapes["global_pool"] == (512,)


def test_crnn_gru_steps_grow_with_length():
    model = make("crnn")
    assert dict(layer_shapes(model))["gru"] == (1, 32)              # 3 s: one step
    assert dict(layer_shapes(model, 465_984))["gru"] == (18, 32)    # a whole 29.1 s MTAT clip


# ----------------------------------------------------------------------------- learning

# name: (Adam steps, batch, samples); heavy models use fewer steps and short inputs.
TRAIN = {"cnn1d": (20, 4, 48000), "cnn2d": (20, 4, 48000), "cnn2d_tuned": (15, 2, 24320),
         "crnn": (20, 2, 24320), "musicnn": (10, 2, 16000), "short_chunk": (8, 2, 32512),
         "short_chunk_res": (8, 2, 16000)}


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_training_on_one_batch_reduces_the_loss(name):
    steps, batch, n_samples = TRAIN[name]
    model = make(name, n_tags=10).train()
    gen = torch.Generator().manual_seed(1)
    x = waveform(batch, n_samples, seed=1)
    y = torch.randint(0, 2, (batch, 10), generator=gen).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(2)               # the same dropout mask every step
        loss = nn.BCEWithLogitsLoss()(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    model = make(name, n_tags=7, seed=0)
    n = model.input_samples
    model.train()
    with torch.no_grad():
        model(waveform(2, n, seed=5))       # move the BatchNorm running statistics
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    fresh = make(name, n_tags=7, seed=1)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    fresh.eval()
    x = waveform(1, n, seed=6)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


# ----------------------------------------------------------------------------- input errors

@pytest.mark.parametrize("shape", [(48000,), (2, 2, 48000), (1, 1, 1, 48000), (2, 100), (0, 48000)])
def test_bad_input_shapes(shape):
    model = make("cnn1d")
    with pytest.raises(ValueError, match=r"\(batch, samples\)") as err:
        model(torch.zeros(shape))
    assert str(tuple(shape)) in str(err.value)


def test_bad_inputs_name_the_expected_length():
    with pytest.raises(ValueError, match="samples >= 45824"):
        make("cnn2d")(waveform(2, 40000))
    projection = make("linear_projection")
    assert projection.min_samples == projection.max_samples == 48000
    for n in (47999, 48001):
        with pytest.raises(ValueError, match="samples == 48000"):
            projection(waveform(2, n))
    with pytest.raises(ValueError, match="torch.Tensor"):
        make("cnn1d")([0.0] * 48000)


def test_crnn_reads_long_inputs_as_a_sequence():
    from helpers.models.sota import WON_CRNN_SAMPLES
    model = build_model("crnn", n_tags=5, width=0.25, input_samples=WON_CRNN_SAMPLES).eval()
    assert model.input_samples == WON_CRNN_SAMPLES
    steps = {}
    model.gru.register_forward_hook(lambda m, inputs, out: steps.update(n=inputs[0].shape[1]))
    with torch.no_grad():
        assert model(torch.zeros(1, WON_CRNN_SAMPLES)).shape == (1, 5)
    assert steps["n"] == 18                                   # Won et al.'s 18 steps for 29.1 s
    assert build_model("crnn", n_tags=5).input_samples == 48000
    with pytest.raises(ValueError, match="at least"):
        build_model("crnn", n_tags=5, input_samples=16000)


def _random_statistics(module: nn.Module, seed: int) -> None:
    """Batch norms with running statistics and weights of both signs (some exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g))
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.1)
            bn.weight.data.copy_(torch.randn(n, generator=g))
            bn.weight.data[::7] = 0.0
            bn.bias.data.copy_(torch.randn(n, generator=g))


@pytest.mark.parametrize("seed", [0, 1])
def test_musicnn_filters_normalise_only_their_maxima_in_evaluation(seed):
    """max_after_bn pools before batch norm and ReLU in evaluation: the same
    numbers as normalising every value and then pooling (negative weights
    take the minimum), in training the plain computation."""
    from torch.nn import functional as F

    from helpers.models import TimbralBranch
    from helpers.models.pons import TemporalFilters, TimbralFilters
    torch.manual_seed(seed)
    x = torch.randn(3, 1, 96, 40)
    course = TimbralBranch(8, 38)
    _random_statistics(course, seed)
    pons_timbral, pons_temporal = TimbralFilters(8, 38), TemporalFilters(6, 16)
    for block in (pons_timbral, pons_temporal):
        _random_statistics(block, seed + 10)
    x_tf = x.transpose(2, 3)                                        # (batch, 1, T, 96): Pons's layout
    naive = {
        "course": lambda: course.relu(course.bn(course.conv(x))).amax(dim=2),
        "pons timbral": lambda: pons_timbral.filters(F.pad(x_tf, (0, 0, 3, 3))).amax(dim=3),
        "pons temporal": lambda: pons_temporal.filters(F.pad(x_tf, (0, 0, *pons_temporal.padding))).amax(dim=3),
    }
    fast = {"course": lambda: course(x), "pons timbral": lambda: pons_timbral(x_tf),
            "pons temporal": lambda: pons_temporal(x_tf)}
    with torch.no_grad():
        for mode in ("eval", "train"):
            for block in (course, pons_timbral, pons_temporal):
                block.train(mode == "train")
            for name in naive:
                expected, got = naive[name](), fast[name]()
                assert got.shape == expected.shape, name
                torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=f"{name} in {mode}")


def test_pons_musicnn_evaluation_is_unchanged_by_pooling_first(monkeypatch):
    """The whole published architecture, random weights and statistics: its
    logits equal those of the plain computation."""
    import helpers.models.pons as pons
    torch.manual_seed(0)
    model = build_model("musicnn_pons", n_tags=50).eval()
    _random_statistics(model, 3)
    x = torch.randn(2, model.input_samples)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(pons.ReluBatchNorm2d, "max_over", lambda self, h, dim, conv_max: self(h).amax(dim=dim))
        slow = model(x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_pons_filters_take_the_piecewise_path_only_without_gradients():
    """Frozen filters in evaluation (fine-tuning's front end) take the
    piecewise maxima even while gradients are recorded; filters that learn
    get the plain computation and their gradients; the same numbers."""
    from helpers.models.pons import TimbralFilters, timbral_conv_max
    torch.manual_seed(0)
    block = TimbralFilters(8, 38).eval()
    _random_statistics(block, 5)
    x = torch.randn(5, 1, 40, 96)                 # 5 examples: pieces of 2, 2 and 1
    pieces = []
    course_max_over = block.filters.max_over        # counts the pieces it computes
    block.filters.max_over = lambda h, dim, conv_max: course_max_over(
        h, dim, lambda *args: pieces.append(len(args[0])) or timbral_conv_max(*args))
    learning = block(x)
    assert not pieces and learning.requires_grad
    learning.sum().backward()
    assert block.filters.conv.weight.grad is not None
    block.requires_grad_(False)
    frozen = block(x)
    assert sum(pieces) == 5 and len(pieces) > 1 and not frozen.requires_grad
    torch.testing.assert_close(frozen, learning.detach(), rtol=1e-5, atol=1e-5)
