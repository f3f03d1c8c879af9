"""The kernel side of the exercise checks: run a student's answer on given
inputs and return what it gives, as plain data.

A *probe* calls the student's function or class on inputs it is given and
reports the outputs; it judges nothing. The judges, in
:mod:`helpers.course.checks`, compare those outputs with the course's own
answers. In a notebook a check is ``judge(cases, probe(answer, cases))`` in
one process. The grader sends this file's source to a clean kernel after the
submission's exercise cell, calls :func:`run` there with inputs it drew
itself, and reads the returned JSON text (arrays as base64, never pickles).

This file imports only the standard library and numpy at the top (torch
inside the probes that need it), so that a kernel runs it without the course.
"""
from __future__ import annotations

import base64
import json
import traceback

import numpy as np

#: The most one array may hold, in elements, on either side of the wire.
MAX_ELEMENTS = 2_000_000


def encode(value):
    """``value`` as JSON-ready data: numpy arrays (and tensors) become
    ``{"array": base64, "dtype", "shape"}``; lists, tuples and dicts recurse."""
    if hasattr(value, "detach"):                       # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        dtype = "float32" if value.dtype.kind == "f" else "int64"
        array = np.ascontiguousarray(value, dtype=dtype)
        return {"array": base64.b64encode(array.tobytes()).decode("ascii"), "dtype": dtype,
                "shape": list(array.shape)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def decode(value):
    """The inverse of :func:`encode`; raises ``ValueError`` on a malformed array."""
    if isinstance(value, dict) and set(value) == {"array", "dtype", "shape"}:
        if value["dtype"] not in ("float32", "int64"):
            raise ValueError(f"unknown array type {value['dtype']!r}")
        shape = [int(s) for s in value["shape"]]
        if any(s < 0 for s in shape) or int(np.prod(shape)) > MAX_ELEMENTS:
            raise ValueError(f"array of shape {shape} refused")
        array = np.frombuffer(base64.b64decode(value["array"], validate=True), dtype=value["dtype"])
        return array.reshape(shape).copy()
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _raised(e: BaseException) -> str:
    """The last line of an exception, as a traceback ends with it."""
    return traceback.format_exception_only(type(e), e)[-1].strip()[:300]


def probe_top_k_tags(fn, cases: list[dict]) -> list[dict]:
    """``fn(probs, tags, k)`` on each case ``{"probs" (T,), "tags", "k"}``:
    ``{"pairs": [[tag, p], ...]}``, ``{"bad": repr}`` for something else than
    pairs, or ``{"raised": line}`` (and nothing after it)."""
    out = []
    for case in cases:
        try:
            got = list(fn(np.array(case["probs"], dtype=float), list(case["tags"]), int(case["k"])))
        except Exception as e:  # noqa: BLE001 - the student's code may fail in any way
            out.append({"raised": _raised(e)})
            break
        try:
            pairs = [[str(t), float(p)] for t, p in got if isinstance(t, str)]
        except (TypeError, ValueError):
            pairs = []
        out.append({"pairs": pairs} if len(pairs) == len(got) else {"bad": repr(got)[:300]})
    return out


def probe_recall_at_k(fn, cases: list[dict]) -> list[dict]:
    """``fn(sim, labels, k)`` on each case ``{"sim" (N, N), "labels" (N, T), "k"}``:
    ``{"value": float}`` or ``{"raised": line}`` (and nothing after it)."""
    out = []
    for case in cases:
        try:
            out.append({"value": float(fn(np.array(case["sim"], dtype=float), np.array(case["labels"]),
                                          int(case["k"])))})
        except Exception as e:  # noqa: BLE001
            out.append({"raised": _raised(e)})
            break
    return out


def probe_residual_block(block_class, cases: list[dict]) -> list[dict]:
    """Build ``block_class(c_in, c_out, (2, 2))`` for each case ``{"c_in",
    "c_out", "state": {name: array}, "x" (B, c_in, F, T)}``, load ``state``
    (not strictly) and run it in eval mode on ``x``: ``{"missing",
    "unexpected", "output" (B, c_out, F // 2, T // 2)}`` or ``{"raised"}``."""
    import torch

    out = []
    for case in cases:
        try:
            block = block_class(int(case["c_in"]), int(case["c_out"]), (2, 2)).eval()
            state = {k: torch.from_numpy(np.asarray(v)) for k, v in case["state"].items()}
            missing, unexpected = block.load_state_dict(state, strict=False)
            result = {"missing": list(missing), "unexpected": list(unexpected)}
            if not missing and not unexpected:
                with torch.no_grad():
                    result["output"] = block(torch.from_numpy(np.asarray(case["x"], dtype=np.float32)))
            out.append(result)
        except Exception as e:  # noqa: BLE001
            out.append({"raised": _raised(e)})
            break
    return out


def probe_cnn2d(make_model, cases: list[dict]) -> list[dict]:
    """Build the model with ``make_model()`` and run it in eval mode on each
    case's waveforms ``{"wav" (B, samples)}``: the number of ``MaxPool2d``
    layers, each pool's output shape, the output, the trainable parameter
    count, and every layer that holds parameters, in the order they run
    (``{"type", "state": {name: array}}``), so that the judge can run the
    course's Figure 1 network with the student's own weights."""
    import torch
    from torch import nn

    try:
        model = make_model().eval()
        pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    except Exception as e:  # noqa: BLE001
        return [{"raised": _raised(e)}]
    out = []
    for case in cases:
        shapes, layers, seen = [], [], set()

        def record(module, inputs, output):
            if isinstance(module, nn.MaxPool2d):
                shapes.append(list(output.shape[1:]))
            if id(module) not in seen and not list(module.children()) and list(module.parameters()):
                seen.add(id(module))
                layers.append({"type": type(module).__name__,
                               "state": {k: v for k, v in module.state_dict().items() if v.is_floating_point()}})

        hooks = [m.register_forward_hook(record) for m in model.modules()]
        try:
            with torch.no_grad():
                output = model(torch.from_numpy(np.asarray(case["wav"], dtype=np.float32)))
        except Exception as e:  # noqa: BLE001
            out.append({"raised": _raised(e)})
            break
        finally:
            for h in hooks:
                h.remove()
        out.append({"pools": len(pools), "shapes": shapes, "output": output, "layers": layers,
                     "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)})
    return out



def probe_figure1_table(table, cases: list[dict]) -> list[dict]:
    """The rows of ``table`` as ``{"rows": [[name, [C, F, T], parameters], ...]}``,
    or ``{"bad": repr}`` when it is not a list of (name, shape, number) rows."""
    try:
        rows = [[str(name), [int(s) for s in shape], int(params)] for name, shape, params in table]
    except Exception:  # noqa: BLE001 - anything else than rows
        return [{"bad": repr(table)[:200]}]
    return [{"rows": rows}]


def probe_mined_triplet_loss(fn, cases: list[dict]) -> list[dict]:
    """``fn(anchor, positive, negative, keys, margin)`` on each case's tensors
    ``(batch, dim)`` and keys ``(batch,)``: ``{"losses" (batch,)}`` or ``{"raised"}``."""
    import torch

    out = []
    for case in cases:
        try:
            a, p, n = (torch.from_numpy(np.asarray(case[k], dtype=np.float32)) for k in ("anchor", "positive",
                                                                                        "negative"))
            keys = torch.from_numpy(np.asarray(case["keys"], dtype=np.int64))
            with torch.no_grad():
                out.append({"losses": torch.as_tensor(fn(a, p, n, keys, float(case["margin"]))).reshape(-1)})
        except Exception as e:  # noqa: BLE001
            out.append({"raised": _raised(e)})
            break
    return out


def probe_musicnn_front_end(front_end_class, cases: list[dict]) -> list[dict]:
    """Build ``front_end_class(n_mels=...)`` and run it in eval mode on the
    case's ``x`` ``(batch, 1, n_mels, time)``: for each branch of its
    ``timbral`` and ``temporal`` lists, its first convolution's weight shape
    and its output shape; the whole output's shape; then, with the case's
    ``state`` loaded (not strictly), ``missing``, ``unexpected`` and the
    ``output`` ``(batch, channels, time)``."""
    import torch
    from torch import nn

    case = cases[0]
    try:
        model = front_end_class(n_mels=int(case["n_mels"])).eval()
        x = torch.from_numpy(np.asarray(case["x"], dtype=np.float32))
        branches = {}
        with torch.no_grad():
            for kind in ("timbral", "temporal"):
                if hasattr(model, kind):
                    convs = [[m for m in branch.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
                             for branch in getattr(model, kind)]
                    branches[kind] = [{"weight": list(c[0].weight.shape) if c else [], "output": list(b(x).shape)}
                                      for b, c in zip(getattr(model, kind), convs)]
            result = {"branches": branches, "shape": list(model(x).shape)}
            state = {k: torch.from_numpy(np.asarray(v)) for k, v in case["state"].items()}
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError as e:                  # a weight of another shape
                missing, unexpected = [str(e).splitlines()[-1][:200]], []
            result.update(missing=list(missing), unexpected=list(unexpected))
            if not missing and not unexpected:
                result["output"] = model(x)
    except Exception as e:  # noqa: BLE001
        return [{"raised": _raised(e)}]
    return [result]


PROBES = {"top_k_tags": probe_top_k_tags, "recall_at_k": probe_recall_at_k,
          "residual_block": probe_residual_block, "cnn2d": probe_cnn2d, "figure1_table": probe_figure1_table,
          "mined_triplet_loss": probe_mined_triplet_loss, "musicnn_front_end": probe_musicnn_front_end}


def run(name: str, answer, cases_json: str, nonce: str) -> str:
    """The grader's entry point in the kernel: probe ``answer`` on the cases
    (JSON from :func:`encode`) and return ``{"nonce", "outputs"}`` as JSON."""
    try:
        outputs = PROBES[name](answer, decode(json.loads(cases_json)))
    except Exception as e:  # noqa: BLE001 - a broken answer must still give an answer
        outputs = [{"raised": _raised(e)}]
    return json.dumps({"nonce": nonce, "outputs": encode(outputs)})
