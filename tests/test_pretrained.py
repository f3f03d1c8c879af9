"""musicnn's published models in PyTorch: the TensorFlow checkpoint reader,
the conversion, and the port against the original.

The reference (``tests/data/musicnn_reference.npz``, see ``tests/data/
SOURCE.md``) is what Pons & Serra's own musicnn 0.1.0 computes, under
TensorFlow, for a real MagnaTagATune clip: the course must give the same
taggrams without TensorFlow. The wheel's files are installed by ``make``
(``pip install --no-deps musicnn==0.1.0``).
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.__main__ import main
from helpers.audio import LogMelSpectrogram, load_audio, mel_filterbank
from helpers.models import build_model, count_parameters
from helpers.models.pons import PATCH_FRAMES, musicnn_front_end, tf_same_padding
from helpers.prepare import musicnn as pretrained
from helpers.prepare.tf_checkpoint import CheckpointError, read_index, read_tensors
from helpers.tagging import Tagger
from helpers.train import model_checkpoint, save_checkpoint

DATA = Path(__file__).resolve().parent / "data"
CLIP = DATA / "joram-moments_of_clarity-08-solipsism-59-88.mp3"
PUBLISHED_TOP10 = ["techno", "electronic", "synth", "fast", "beat", "drums", "no vocals", "no vocal", "dance",
                   "ambient"]                                  # musicnn's README, MTT_musicnn on this clip


@pytest.fixture(scope="module")
def package() -> Path:
    return pretrained.musicnn_package()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "musicnn_reference.npz"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, package) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pretrained")
    out = {}
    for name in pretrained.PRETRAINED:
        out[name] = save_checkpoint(folder / f"{name}.pt", pretrained.convert(name, package))
    return out


def test_the_index_lists_every_tensor_and_their_bytes_tile_the_data_file(package):
    for name in pretrained.PRETRAINED:
        index = read_index(f"{package / name}/")
        position = 0
        for info in sorted(index.values(), key=lambda i: i["offset"]):
            assert info["offset"] == position and info["size"] == np.prod(info["shape"]) * info["dtype"].itemsize
            position += info["size"]
        assert position == (package / name / ".data-00000-of-00001").stat().st_size
    index = read_index(f"{package / 'MTT_musicnn'}/")
    assert index["conv2d/kernel"]["shape"] == (7, 38, 1, 204) and index["conv2d_2/kernel"]["shape"] == (128, 1, 1, 51)
    assert index["dense/kernel"]["shape"] == (1506, 200) and index["beta1_power"]["shape"] == ()


def test_files_that_are_not_a_checkpoint_are_refused(package, tmp_path):
    good = (package / "MTT_vgg" / ".index").read_bytes()
    for name, data in {"short": good[:20], "magic": good[:-8] + bytes(8), "cut": good[:len(good) // 2]}.items():
        (tmp_path / f"{name}.index").write_bytes(data)
        with pytest.raises(CheckpointError):
            read_index(tmp_path / name)
    shutil.copy(package / "MTT_vgg" / ".index", tmp_path / "ok.index")
    (tmp_path / "ok.data-00000-of-00001").write_bytes(b"\0" * 100)       # far too short for its tensors
    with pytest.raises(CheckpointError, match="does not fit"):
        read_tensors(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="no tensor named"):
        read_tensors(f"{package / 'MTT_vgg'}/", ["no/such/tensor"])


def test_conversion_covers_every_layer_with_the_published_parameter_counts(converted, package):
    for name, path in converted.items():
        tensors = read_tensors(f"{package / name}/")
        trainable = sum(v.size for k, v in tensors.items()
                        if not any(s in k for s in ("Adam", "_power", "moving_")))
        ckpt = torch.load(path, weights_only=True)
        model = build_model(ckpt["model_name"], n_tags=len(ckpt["tags"]))
        assert count_parameters(model) == trainable == (787_159 if "musicnn" in name else 605_748)
        assert ckpt["tags"] == list(pretrained.MTT_TAGS if name.startswith("MTT") else pretrained.MSD_TAGS)
        assert ckpt["pretrained"] == name


def test_a_changed_source_file_is_refused(package, tmp_path):
    copy = tmp_path / "musicnn"
    shutil.copytree(package / "MTT_vgg", copy / "MTT_vgg")
    data = bytearray((copy / "MTT_vgg" / ".data-00000-of-00001").read_bytes())
    data[1000] ^= 1
    (copy / "MTT_vgg" / ".data-00000-of-00001").write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="SHA-256"):
        pretrained.convert("MTT_vgg", copy)


def test_tensorflow_same_padding_puts_the_extra_frame_at_the_end():
    assert tf_same_padding(128) == (63, 64) and tf_same_padding(32) == (15, 16) and tf_same_padding(7) == (3, 3)


def test_slaney_filterbank_has_equal_areas_and_the_front_end_matches_librosa(reference):
    fb = mel_filterbank(16000, 512, 96, 0.0, 8000.0, mel_scale="slaney", norm="slaney").numpy()
    hz = np.linspace(0, 8000, 257)
    wide = (fb > 0).sum(0) >= 8                                         # filters sampled by enough bins
    areas = (fb[1:] + fb[:-1]).sum(0) / 2 * (hz[1] - hz[0])
    assert wide.sum() >= 20 and np.allclose(areas[wide], 1.0, atol=0.02)   # Slaney normalisation: unit area
    htk = LogMelSpectrogram()
    assert torch.equal(htk.mel_fb, mel_filterbank())                    # the course's default is unchanged
    wav = torch.from_numpy(load_audio(CLIP))[None]
    ours = musicnn_front_end()(wav)[0, 0].T.numpy()
    want = reference["input/log_mel"]                                   # librosa, through float16 (musicnn's)
    assert ours.shape == (1821, 96)
    assert np.abs(ours[:len(want)] - want).max() < 5e-4                 # float16's rounding, nothing more


def test_the_port_gives_the_original_taggrams(converted, reference):
    wav = load_audio(CLIP)
    for name, path in converted.items():
        result = Tagger(path, hop_seconds=3.0).tag_waveform(wav)
        want = reference[f"{name}/taggram"]
        assert result.taggram.shape == want.shape == (9, 50)              # musicnn's non-overlapping patches
        assert np.abs(result.taggram - want).max() < 2e-4, name
        assert np.abs(result.probs - want.mean(0)).max() < 2e-5, name
        if "musicnn" in name:
            emb = Tagger(path).model
            assert emb.patch_frames == PATCH_FRAMES
    top = Tagger(converted["MTT_musicnn"], hop_seconds=3.0).tag_file(CLIP).top(10)
    assert [t for t, _ in top] == PUBLISHED_TOP10


def test_penultimate_features_match_on_the_originals_input(converted, reference):
    model = Tagger(converted["MTT_musicnn"]).model
    x = torch.from_numpy(np.ascontiguousarray(reference["input/log_mel"][:PATCH_FRAMES].T))[None, None]
    with torch.no_grad():
        z = model.features(model.spec_bn(x))[0].numpy()
    assert np.abs(z - reference["MTT_musicnn/penultimate"][0]).max() < 1e-4


def test_the_command_line_tags_with_mtt_musicnn_out_of_the_box(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_CHECKPOINTS", str(tmp_path / "checkpoints"))
    assert main(["tag", str(CLIP), "--top", "50", "--json", "--with-taggram", "--with-embedding"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert [t["tag"] for t in result["top_tags"]][:10] == PUBLISHED_TOP10 and len(result["top_tags"]) == 50
    assert len(result["taggram"]["probabilities"]) == 9 and result["taggram"]["starts_s"][1] == 2.992
    assert len(result["embedding"]) == 200
    assert (tmp_path / "checkpoints" / "pretrained" / "MTT_musicnn.pt").is_file()      # converted once, kept
    assert main(["tag", str(CLIP), "--model", "MSD_vgg", "--top", "3"]) == 0
    assert "model vgg_pons" in capsys.readouterr().out


def test_a_model_of_the_synthetic_set_warns_on_real_audio(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "syn.pt", model_checkpoint(build_model("cnn1d", n_tags=3), "cnn1d",
                                                                   ["a", "b", "c"], dataset="synthetic"))
    assert main(["tag", str(CLIP), "--model", str(ckpt)]) == 0
    assert "synthetic dataset" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a tiny bundle, written here

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _block(entries: list[tuple[bytes, bytes]], restart_every: int = 2) -> bytes:
    """An SSTable block: prefix-compressed keys, restart points every ``restart_every`` entries."""
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_every == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    for r in restarts:
        out += struct.pack("<I", r)
    return bytes(out + struct.pack("<I", len(restarts)))


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], entries_per_block: int = 2,
                 compression: int = 0) -> None:
    """A TensorFlow tensor bundle as TensorFlow writes it (uncompressed), for the reader's tests;
    ``compression`` is the type byte written after each data block (1: snappy)."""
    dtypes = {np.dtype("<f4"): 1, np.dtype("<i4"): 3, np.dtype("<i8"): 9, np.dtype("<f8"): 2}
    data, rows = bytearray(), [(b"", _field(1, 1))]                      # the header: one shard, little-endian
    for name in sorted(tensors):
        array = np.asarray(tensors[name]).copy(order="C")          # (ascontiguousarray makes a scalar 1-d)
        shape = b"".join(_field(2, _field(1, d)) for d in array.shape)
        rows.append((name.encode(), _field(1, dtypes[array.dtype]) + _field(2, shape) + _field(4, len(data))
                     + _field(5, array.nbytes)))
        data += array.tobytes()
    index_file, index_entries = bytearray(), []
    for start in range(0, len(rows), entries_per_block):
        chunk = rows[start:start + entries_per_block]
        block = _block(chunk)
        index_entries.append((chunk[-1][0], _varint(len(index_file)) + _varint(len(block))))
        index_file += block + bytes([compression]) + b"\0\0\0\0"          # compression type, CRC (not checked)
    meta = _block([])
    meta_handle = _varint(len(index_file)) + _varint(len(meta))
    index_file += meta + b"\0\0\0\0\0"
    index_block = _block(index_entries)
    index_handle = _varint(len(index_file)) + _varint(len(index_block))
    index_file += index_block + b"\0\0\0\0\0"
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(bytes(index_file + footer))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def test_the_reader_on_a_tiny_bundle_written_here(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"conv/kernel": rng.standard_normal((3, 5, 1, 2)).astype(np.float32),
               "conv/kernelB": rng.standard_normal(7).astype(np.float32),      # shares a prefix with the last key
               "dense/bias": np.arange(4, dtype=np.float32), "global_step": np.array(12, dtype=np.int64),
               "scalar": np.array(0.5, dtype=np.float64), "table": np.arange(6, dtype=np.int32).reshape(2, 3)}
    write_bundle(tmp_path / "model.ckpt", tensors)
    index = read_index(tmp_path / "model.ckpt")
    assert sorted(index) == sorted(tensors)
    assert index["conv/kernel"]["shape"] == (3, 5, 1, 2) and index["global_step"]["shape"] == ()
    read = read_tensors(tmp_path / "model.ckpt")
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype and np.array_equal(read[name], array), name
    assert list(read_tensors(tmp_path / "model.ckpt", ["table"])) == ["table"]
    write_bundle(tmp_path / "compressed", tensors, compression=1)
    with pytest.raises(CheckpointError, match="compressed"):
        read_index(tmp_path / "compressed")
