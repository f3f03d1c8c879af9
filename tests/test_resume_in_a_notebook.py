"""A training cell whose kernel dies in the middle of the run (a Colab runtime
that disconnects), run again in a fresh kernel: it resumes after its last
finished epoch and ends with the model of an uninterrupted run.

The cells are notebook 01's own, executed in real kernels in the ``ci``
profile, with one change: 3 epochs instead of 1, so that there is a middle.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import torch

from helpers.course.run import LocalKernelManager

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "01_cnn1d_baseline.ipynb"

THREE_EPOCHS = "from dataclasses import replace\nrecipe = replace(recipe, epochs=3)"
# Kernel 1 hangs for good right after it saved epoch 1, and is killed there.
HANG_AFTER_EPOCH_1 = """
import pathlib, time
import helpers.train
_save = helpers.train.save_checkpoint

def _save_then_hang(path, payload):
    saved = _save(path, payload)
    if pathlib.Path(path).name == "last.pt" and payload.get("epoch") == 1:
        pathlib.Path({marker!r}).touch()
        time.sleep(3600)
    return saved

helpers.train.save_checkpoint = _save_then_hang
"""


def _cells_until_fit() -> list[str]:
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    end = next(i for i, s in enumerate(cells) if "history = fit(" in s)
    return cells[:end + 1]


class Kernel:
    def __init__(self, env: dict[str, str]) -> None:
        self.manager = LocalKernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env, cwd=str(NOTEBOOK.parent))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 300) -> str:
        out: list[str] = []

        def collect(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=collect)
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)

    def start(self, code: str) -> None:
        self.client.execute(code)

    def kill(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def _env(tmp: Path, checkpoints: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_")}
    return {**env, "COURSE_PROFILE": "ci", "COURSE_DATASET": "synthetic", "COURSE_PROGRESS": "0",
            "COURSE_RESULTS": str(tmp / "results.jsonl"), "COURSE_CHECKPOINTS": str(tmp / checkpoints),
            **({"COURSE_DATA": os.environ["COURSE_DATA"]} if os.environ.get("COURSE_DATA") else {})}


def _train(env: dict[str, str], weights: Path) -> str:
    """Notebook 01 up to its training cell, with 3 epochs; saves the model."""
    kernel = Kernel(env)
    try:
        *before, fit_cell = _cells_until_fit()
        for cell in before:
            kernel.run(cell)
        kernel.run(THREE_EPOCHS)
        printed = kernel.run(fit_cell)
        kernel.run(f"import torch\ntorch.save(model.state_dict(), {str(weights)!r})")
        return printed
    finally:
        kernel.kill()


def test_a_killed_training_cell_rerun_in_a_new_kernel_resumes_to_the_uninterrupted_model(tmp_path,
                                                                                        default_synthetic):
    marker = tmp_path / "epoch-1-saved"
    kernel = Kernel(_env(tmp_path, "checkpoints"))
    try:
        *before, fit_cell = _cells_until_fit()
        for cell in before:
            kernel.run(cell)
        kernel.run(THREE_EPOCHS)
        kernel.run(HANG_AFTER_EPOCH_1.format(marker=str(marker)))
        kernel.start(fit_cell)
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline, "epoch 1 of the run never finished"
            time.sleep(0.2)
    finally:
        kernel.kill()                                              # the runtime disconnects
    (run,) = (tmp_path / "checkpoints" / "synthetic" / "runs").iterdir()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1

    printed = _train(_env(tmp_path, "checkpoints"), tmp_path / "resumed.pt")         # the cell, run again
    assert f"cnn1d: resuming the run {run.name} after epoch 1 (of 3)" in printed
    assert "3 epochs at" in printed
    _train(_env(tmp_path, "reference"), tmp_path / "uninterrupted.pt")
    resumed, reference = (torch.load(tmp_path / f, weights_only=True) for f in ("resumed.pt", "uninterrupted.pt"))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in resumed)              # exact on the CPU
    assert "has finished (3 epochs" in _train(_env(tmp_path, "checkpoints"), tmp_path / "again.pt")   # not retrained
