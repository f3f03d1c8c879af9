"""Where a submission runs: a throwaway folder, a kernel with limits, and a
fingerprint of the course's files.

- :func:`workspace` fills a fresh folder with a copy of the course's
  ``helpers`` package and of its committed metadata (``data/*.txt``: the
  tag list, the checksums), and, for a whole notebook, of the dataset, laid
  out as the course is (``course/helpers``, ``course/data``,
  ``course/notebooks``) so that a notebook's set-up cell imports the copy.
- :class:`Kernel` starts a kernel in that folder through
  ``kernel_launcher.py``, which sets the :class:`Limits` on the kernel's
  process (address space, tasks, file size, CPU time) and, when the grader
  runs as root, drops to the ``nobody`` user. The kernel's environment holds
  only what a notebook needs, never the grader's variables. Each execution
  has a time limit and the kernel's output a size cap; :meth:`Kernel.stop`
  kills the kernel's whole process group.
- :func:`fingerprint` lists the size and modification time of every file
  under some folders, to notice a submission that wrote outside its folder.

This is no security sandbox: see the README's grading section.
"""
from __future__ import annotations

import os
import pwd
import queue
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .run import LocalKernelManager

LAUNCHER = Path(__file__).with_name("kernel_launcher.py")
MEMORY_WORDS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "out of memory")
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Limits:
    """What one kernel may use: ``timeout`` seconds per execution, ``memory``
    bytes of address space per process, ``tasks`` processes and threads
    beyond those its user already has, ``file_size`` bytes per written file,
    ``cpu`` CPU seconds per process, ``output`` bytes of output in all."""

    timeout: float = 600
    memory: int = 8 * 2**30
    tasks: int = 256
    file_size: int = 2**30
    cpu: int = 3600
    output: int = 4 * 2**20


@dataclass
class Execution:
    """The outcome of running code in a kernel: ``status`` is ``ok``,
    ``error``, ``timeout``, ``memory``, ``output`` (its cap was passed),
    ``died`` or ``broken`` (a malformed message); ``error`` the one-line reason; ``reply`` the kernel's
    ``execute_reply`` content (for ``user_expressions``)."""

    status: str
    error: str = ""
    ename: str = ""
    reply: dict | None = None


def workspace(folder: Path, course: Path, dataset: Path | None = None) -> dict[str, Path]:
    """Fill ``folder`` (empty) with a copy of ``course/helpers`` and of the
    files directly in ``course/data`` (the committed metadata, not the
    datasets in its subfolders), an empty ``course/notebooks`` (the kernel's
    working folder), a home, and, when given, a copy of the ``dataset``
    folder under ``data/``. Returns the paths."""
    paths = {"course": folder / "course", "cwd": folder / "course" / "notebooks", "home": folder / "home",
             "data": folder / "data", "tmp": folder / "tmp"}
    shutil.copytree(course / "helpers", paths["course"] / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for key in ("cwd", "home", "data", "tmp"):
        paths[key].mkdir(parents=True, exist_ok=True)
    (paths["course"] / "data").mkdir()
    for meta in (course / "data").glob("*"):
        if meta.is_file():
            shutil.copy2(meta, paths["course"] / "data" / meta.name)
    if dataset is not None and dataset.is_dir():
        shutil.copytree(dataset, paths["data"] / dataset.name)
    return paths


def kernel_env(paths: dict[str, Path], dataset: str = "synthetic") -> dict[str, str]:
    """The kernel's whole environment: a few system variables, a home and a
    temporary folder of its own, and the course's variables pointing into
    the workspace (``ci`` profile). The kernel writes no bytecode; it reads
    the interpreter's own (the workspace's copy of ``helpers`` has none), so
    that it starts in about half a second instead of compiling IPython and
    torch anew."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    root = paths["home"].parent
    env.update(HOME=str(paths["home"]), TMPDIR=str(paths["tmp"]), PYTHONDONTWRITEBYTECODE="1",
               MPLBACKEND="Agg",
               COURSE_PROFILE="ci", COURSE_DATASET=dataset, COURSE_DATA=str(paths["data"]),
               COURSE_RESULTS=str(root / "results.jsonl"), COURSE_RUNS=str(root / "runs"),
               COURSE_CHECKPOINTS=str(root / "checkpoints"), COURSE_PROGRESS="0")
    return env


def _reachable_by_others(path: Path) -> bool:
    """Whether every folder above ``path`` lets other users through."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in path.resolve().parents)


def _unprivileged_user() -> tuple[int, int] | None:
    """``(uid, gid)`` of ``nobody`` when the grader runs as root and the
    interpreter and the course are reachable by other users, else None."""
    if os.getuid() != 0 or not all(_reachable_by_others(Path(p)) for p in
                                   (sys.executable, sys.base_prefix + "/x", __file__)):
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _tasks_of(uid: int) -> int:
    """How many processes and threads the user ``uid`` runs now."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


class _LimitedKernelManager(LocalKernelManager):
    """A kernel manager that starts its kernel through ``kernel_launcher.py``."""

    launcher_args: list[str] = []

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return [sys.executable, str(LAUNCHER), *self.launcher_args, "--",
                *super().format_kernel_cmd(extra_arguments)]


class Kernel:
    """A kernel in a workspace, with limits. Use as a context manager."""

    def __init__(self, paths: dict[str, Path], limits: Limits, dataset: str = "synthetic") -> None:
        self.limits, self.output_bytes = limits, 0
        user = _unprivileged_user()
        uid = user[0] if user else os.getuid()
        args = ["--memory", str(limits.memory), "--tasks", str(_tasks_of(uid) + limits.tasks),
                "--file-size", str(limits.file_size), "--cpu", str(limits.cpu)]
        if user:
            args += ["--user", f"{user[0]}:{user[1]}"]
            for path in [paths["home"].parent, *paths["home"].parent.rglob("*")]:
                os.chown(path, *user, follow_symlinks=False)
        self.manager = _LimitedKernelManager(kernel_name="python3")
        self.manager.launcher_args = args
        self.manager.start_kernel(cwd=str(paths["cwd"]), env=kernel_env(paths, dataset))
        self.client = self.manager.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=60)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.manager.is_alive()

    def _next_message(self, get, deadline: float, timeout: float) -> dict | Execution:
        """The next message from ``get`` (the kernel's iopub or shell channel), or
        the :class:`Execution` that ends the wait: past ``deadline``, a dead
        kernel, a malformed message."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Execution("timeout", f"ran longer than {timeout:g} s")
            try:
                return get(timeout=min(left, 1.0))
            except queue.Empty:
                if not self.alive():
                    return self._died()
            except Exception as e:  # noqa: BLE001 - a kernel whose messaging the submission broke
                return Execution("broken", f"the kernel sent a malformed message ({type(e).__name__})")

    def execute(self, code: str, user_expressions: dict | None = None, timeout: float | None = None) -> Execution:
        """Run ``code``; wait at most ``timeout`` (default: the limits')
        seconds; count its output against the cap."""
        timeout = self.limits.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        msg_id = self.client.execute(code, silent=False, store_history=False, allow_stdin=False,
                                     user_expressions=user_expressions or {}, stop_on_error=True)
        result = Execution("ok")
        while True:                                   # the outputs, until the kernel is idle again
            msg = self._next_message(self.client.get_iopub_msg, deadline, timeout)
            if isinstance(msg, Execution):
                return msg
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind in ("stream", "display_data", "execute_result", "error", "update_display_data"):
                self.output_bytes += len(str(content))
                if self.output_bytes > self.limits.output:
                    return Execution("output", f"printed more than {self.limits.output / 2**20:g} MB of output")
            if kind == "error":
                result = _error(content)
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        while True:                                   # the reply
            reply = self._next_message(self.client.get_shell_msg, deadline, timeout)
            if isinstance(reply, Execution):
                return reply
            if reply["parent_header"].get("msg_id") == msg_id:
                result.reply = reply["content"]
                if reply["content"].get("status") == "error" and result.status == "ok":
                    result = _error(reply["content"])
                    result.reply = reply["content"]
                return result

    def _died(self) -> Execution:
        code = getattr(getattr(self.manager, "provisioner", None), "exit_code", None)
        return Execution("died", "the kernel died" + (f" (exit code {code})" if code is not None else ""))

    def stop(self) -> None:
        """Stop the kernel and kill every process left in its process group."""
        process = getattr(getattr(self.manager, "provisioner", None), "process", None)
        pgid = None
        if process is not None:
            try:
                pgid = os.getpgid(process.pid)
            except OSError:
                pgid = None
        try:
            self.client.stop_channels()
        except Exception:  # noqa: BLE001 - stopping must never fail
            pass
        try:
            self.manager.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001
            pass
        if pgid is not None and pgid != os.getpgrp():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass


def _error(content: dict) -> Execution:
    """An ``error`` message as an :class:`Execution` (``memory`` for an allocation failure)."""
    ename, evalue = str(content.get("ename", "Error")), str(content.get("evalue", ""))
    line = f"{ename}: {evalue}".splitlines()[0][:200] if evalue else ename[:200]
    status = "memory" if any(w in f"{ename} {evalue}" for w in MEMORY_WORDS) else "error"
    return Execution(status, line, ename)


def fingerprint(folders: list[Path]) -> dict[str, tuple[int, int]]:
    """``{path: (size, mtime_ns)}`` of every file under ``folders``, bytecode
    caches included: a kernel writes none (see :func:`kernel_env`), so a
    ``.pyc`` that appears there was planted for the grader to import."""
    prints: dict[str, tuple[int, int]] = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    continue
                prints[path] = (st.st_size, st.st_mtime_ns)
    return prints


def changed(before: dict, after: dict) -> list[str]:
    """The paths whose fingerprint differs (added, removed or modified), sorted."""
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
