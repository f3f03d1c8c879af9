"""musicnn's published models (Pons & Serra 2019) as course checkpoints.

The ``musicnn==0.1.0`` wheel (ISC licence) holds four TensorFlow 1
checkpoints: ``MTT_musicnn`` and ``MTT_vgg`` (trained on MagnaTagATune's
top-50 tags), ``MSD_musicnn`` and ``MSD_vgg`` (the Million Song Dataset's 50
last.fm tags). ``make`` installs the wheel's files with ``pip install --no-deps
musicnn==0.1.0`` (its own requirements, TensorFlow 1 and NumPy < 1.17, would
break the environment; its ``__init__.py`` is empty, so nothing of it is
imported). :func:`pretrained_checkpoint` reads a model's tensors with
:mod:`helpers.prepare.tf_checkpoint`, after checking the files' SHA-256
against :data:`SOURCE_SHA256`, maps them onto :class:`~helpers.models.pons.
PonsMusicnn` / :class:`~helpers.models.pons.PonsVGG` and saves an ordinary
course checkpoint (model name, tag list, source), once, in
``checkpoints/pretrained/<MODEL>.pt``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import checkpoint_path, in_colab
from ..models import build_model
from ..train import load_checkpoint, model_checkpoint, save_checkpoint
from .tf_checkpoint import read_tensors

__all__ = ["PRETRAINED", "MTT_TAGS", "MSD_TAGS", "PretrainedError", "musicnn_package", "convert",
           "pretrained_checkpoint"]

#: musicnn's MagnaTagATune tags, in the order of its models' outputs.
MTT_TAGS = ("guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
            "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals",
            "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft",
            "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal",
            "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral")
#: musicnn's Million Song Dataset tags (last.fm), in the order of its models' outputs.
MSD_TAGS = ("rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
            "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul",
            "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies",
            "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop",
            "70s", "party", "country", "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal",
            "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy")

#: The published models: name -> (course model, tag list).
PRETRAINED = {"MTT_musicnn": ("musicnn_pons", MTT_TAGS), "MTT_vgg": ("vgg_pons", MTT_TAGS),
              "MSD_musicnn": ("musicnn_pons", MSD_TAGS), "MSD_vgg": ("vgg_pons", MSD_TAGS)}

#: SHA-256 of the wheel's files (musicnn 0.1.0 on PyPI), checked before conversion.
SOURCE_SHA256 = {
    "MTT_musicnn/.index": "da2d7bb670b2b31e9bc441bb1bd75eca31b5b061f963cc1f9630c1aff3238f57",
    "MTT_musicnn/.data-00000-of-00001": "041f3935e981a65cea739842d30c188d3a7d2adf4410955c8668eb3de4a5acab",
    "MTT_vgg/.index": "4b0d3d2d02bbe0919c063c1fb74bfa9018ac3517e362d681b07444d4207a5f5f",
    "MTT_vgg/.data-00000-of-00001": "458f5c8bcecc086a3bba3dce83809df6da6e0a3560a59ddd84711bf3d5fd8303",
    "MSD_musicnn/.index": "87f3e0f3550c8d3bafc840374003e5c8af5eeb5ecf6add61af09a7822d3282c8",
    "MSD_musicnn/.data-00000-of-00001": "8579734ee6388f799ed0def4bbd0d1fdcbeaf213ef2a9dc860917bd76a303de6",
    "MSD_vgg/.index": "50e499238457558bba9f34f8b84d4afb8279afd43520cdf0a4fdf805a49c9ca3",
    "MSD_vgg/.data-00000-of-00001": "9683d756b8311146534f333502ebf4a2a78a3e320c54ab0411dff6186d8375fc",
}
INSTALL = "pip install --no-deps musicnn==0.1.0"


class PretrainedError(RuntimeError):
    """A published model cannot be made available; the message says what to do."""


def musicnn_package() -> Path:
    """The folder of the installed ``musicnn`` package (located, not imported).
    In Colab it is installed first when missing (``pip install --no-deps``)."""
    if importlib.util.find_spec("musicnn") is None and in_colab():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "musicnn==0.1.0"], check=False)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(f"musicnn's published models are not installed: run `{INSTALL}` (make does it; "
                              f"--no-deps: its own requirements would replace NumPy and need TensorFlow 1)")
    return Path(list(spec.submodule_search_locations)[0])


def _checked_prefix(name: str, package: Path) -> str:
    for suffix in (".index", ".data-00000-of-00001"):
        path = package / name / suffix
        if not path.is_file():
            raise PretrainedError(f"{path} is missing: reinstall with `{INSTALL} --force-reinstall`")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != SOURCE_SHA256[f"{name}/{suffix}"]:
            raise PretrainedError(f"{path} has SHA-256 {digest}, not musicnn 0.1.0's: reinstall with `{INSTALL} "
                                  f"--force-reinstall`")
    return f"{package / name}/"                 # the files are named ".index" and ".data-...": the prefix is the folder


def _bn(tensors: dict[str, np.ndarray], tf_name: str, module: str) -> dict[str, np.ndarray]:
    return {f"{module}.weight": tensors[f"{tf_name}/gamma"], f"{module}.bias": tensors[f"{tf_name}/beta"],
            f"{module}.running_mean": tensors[f"{tf_name}/moving_mean"],
            f"{module}.running_var": tensors[f"{tf_name}/moving_variance"]}


def _conv2d(tensors: dict[str, np.ndarray], tf_name: str, module: str) -> dict[str, np.ndarray]:
    # TensorFlow: (height = time, width = mel, in, out); PyTorch on (batch, channel, time, mel): (out, in, time, mel)
    return {f"{module}.weight": tensors[f"{tf_name}/kernel"].transpose(3, 2, 0, 1),
            f"{module}.bias": tensors[f"{tf_name}/bias"]}


def _dense(tensors: dict[str, np.ndarray], tf_name: str, module: str) -> dict[str, np.ndarray]:
    return {f"{module}.weight": tensors[f"{tf_name}/kernel"].T, f"{module}.bias": tensors[f"{tf_name}/bias"]}


def musicnn_state_dict(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """musicnn's TensorFlow variables -> :class:`PonsMusicnn`'s state dict.
    TensorFlow numbers its layers in the order the graph creates them."""
    sd = _bn(tensors, "batch_normalization", "spec_bn")
    branches = ["timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2"]
    for k, branch in enumerate(branches):
        sd |= _conv2d(tensors, f"conv2d{'_' + str(k) if k else ''}", f"{branch}.filters.conv")
        sd |= _bn(tensors, f"batch_normalization_{k + 1}", f"{branch}.filters.bn")
    for k, layer in enumerate(("layer1", "layer2", "layer3")):
        kernel = tensors[f"conv2d_{k + 5}/kernel"]                   # (7, in_channels, 1, out): over (time, channel)
        sd[f"{layer}.conv.weight"] = kernel[:, :, 0, :].transpose(2, 1, 0)
        sd[f"{layer}.conv.bias"] = tensors[f"conv2d_{k + 5}/bias"]
        sd |= _bn(tensors, f"batch_normalization_{k + 6}", f"{layer}.bn")
    sd |= _bn(tensors, "batch_normalization_9", "pool_bn")
    sd |= _dense(tensors, "dense", "dense")
    sd |= _bn(tensors, "batch_normalization_10", "dense_bn")
    sd |= _dense(tensors, "dense_1", "linear")
    return sd


def vgg_state_dict(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """musicnn's VGG variables -> :class:`PonsVGG`'s state dict."""
    sd = _bn(tensors, "batch_normalization", "spec_bn")
    for k in range(1, 6):
        sd |= _conv2d(tensors, f"{k}CNN", f"layer{k}.0")
        sd |= _bn(tensors, f"batch_normalization_{k}", f"layer{k}.2")
    sd |= _dense(tensors, "dense", "linear")
    return sd


def convert(name: str, package: Path | None = None) -> dict:
    """The course checkpoint (a dict, see :func:`helpers.train.model_checkpoint`)
    of the published model ``name`` (one of :data:`PRETRAINED`)."""
    if name not in PRETRAINED:
        raise PretrainedError(f"unknown published model {name!r}: choose one of {', '.join(PRETRAINED)}")
    model_name, tags = PRETRAINED[name]
    tensors = read_tensors(_checked_prefix(name, package or musicnn_package()))
    model = build_model(model_name, n_tags=len(tags))
    sd = (musicnn_state_dict if model_name == "musicnn_pons" else vgg_state_dict)(tensors)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(sd) != expected:
        raise PretrainedError(f"{name}: the conversion does not cover the model: {sorted(set(sd) ^ expected)}")
    for key, value in sd.items():
        if tuple(model.state_dict()[key].shape) != value.shape:
            raise PretrainedError(f"{name}: {key} has shape {value.shape}, the model wants "
                                  f"{tuple(model.state_dict()[key].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
    return model_checkpoint(model.eval(), model_name, list(tags), {}, label=f"{name} (Pons & Serra 2019, musicnn "
                            f"0.1.0)", pretrained=name, source="musicnn 0.1.0 (PyPI), ISC licence",
                            dataset="MagnaTagATune" if name.startswith("MTT") else "Million Song Dataset")


def pretrained_model(name: str, n_tags: int | None = None) -> torch.nn.Module:
    """The published model ``name`` in evaluation mode on the CPU; with
    ``n_tags``, its tag layer replaced by a fresh one for ``n_tags`` tags
    (for transfer learning). ``model.pretrained`` records ``name``: it is part
    of the identity of a training run that starts from these weights."""
    model, _ = load_checkpoint(pretrained_checkpoint(name), device="cpu")
    if n_tags is not None:
        model.new_tag_layer(n_tags)
    model.pretrained = name
    return model


def pretrained_checkpoint(name: str) -> Path:
    """Where the course keeps the converted model ``name``
    (``checkpoints/pretrained/<name>.pt``), converted first if missing."""
    path = checkpoint_path(name, "pretrained")
    if not path.exists():
        save_checkpoint(path, convert(name))
    return path
