"""The shape of ``helpers``: imports run one way (configuration, then the core,
then the tools), without cycles and without imports hidden inside functions,
and the notebooks import only the core, the configuration and
``helpers.course``."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "helpers"

#: Each module's layer: a module may import modules of its own layer or below.
CORE = ("audio", "data", "metrics", "models", "train", "retrieval", "plots", "tagging")


def layer(module: str) -> int:
    parts = module.split(".")[1:]                 # without "helpers"
    if not parts:
        return 0                                  # helpers/__init__.py: imports config only
    if parts[0] == "config":
        return 0
    if parts[0] in CORE:
        return 1
    if parts[0] == "prepare":
        return 2
    if parts[0] == "course":
        return 3
    if parts[0] == "__main__":
        return 4
    raise AssertionError(f"{module} has no layer: add it to tests/test_layout.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The helpers modules an ``import from`` statement names."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if not base.startswith("helpers"):
        return []
    names = [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if _exists(n)] or [base]


def _exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets.update(resolve(module, path.name == "__init__.py", node))
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("helpers"))
        graph[module] = {t for t in targets if t != module}
    return graph


def test_every_import_runs_down_the_layers():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, targets in import_graph().items() for t in targets if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_config_imports_nothing_of_the_course():
    assert import_graph()["helpers.config"] == set()


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t.startswith(m + "."):       # a package importing its own modules (models/__init__.py)
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_import_inside_a_function():
    lazy = []
    # probes.py is sent as source into a grading kernel that runs a student's answer: it imports torch only in
    # the probes that need it, so that the other exercises' kernels start without it.
    for path in sorted(p for p in PACKAGE.rglob("*.py") if p.name != "probes.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy += [f"{path.relative_to(REPO)}:{n.lineno} in {fn.name}()" for n in ast.walk(fn)
                         if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not lazy, "imports inside functions:\n" + "\n".join(lazy)


def test_command_line_parsing_only_in_main():
    users = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
             if "argparse" in p.read_text(encoding="utf-8") and p.name not in ("__main__.py", "kernel_launcher.py")]
    assert not users, f"argparse outside helpers/__main__.py: {users}"


def test_tqdm_is_set_up_in_one_place():
    users = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "tqdm" in ast.unparse(n).split()[1]
                    for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))))
             and p.name != "config.py"]
    assert not users, f"modules importing tqdm themselves (take it from helpers.config): {users}"


def test_notebooks_import_only_the_core_config_and_course():
    allowed = {"helpers.config", "helpers.course"} | {f"helpers.{m}" for m in CORE}
    bad = []
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            code = "\n".join(line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("!", "%"))
                             else line for line in cell.source.splitlines())       # shell lines are not Python
            for node in ast.walk(ast.parse(code)):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                bad += [f"{path.name}: {n}" for n in names
                        if n and n.startswith("helpers") and ".".join(n.split(".")[:2]) not in allowed]
    assert not bad, "\n".join(bad)


def test_the_course_url_is_the_same_everywhere():
    """The notebooks' first cell needs the URL before helpers is importable,
    so it is written there too: it must be helpers.config.REPO_URL, as in the
    README's Open-in-Colab links."""
    from helpers.config import REPO_URL

    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        first_code = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert f'"{REPO_URL}"' in first_code.source, path.name
    github = REPO_URL.removeprefix("https://github.com/")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.count(f"colab.research.google.com/github/{github}/blob/main/notebooks/") == 7


def test_the_training_notebooks_ask_colab_for_a_gpu_and_resume_their_runs():
    """01-05 train: Colab opens them in a GPU runtime (their metadata), and
    every training call keeps its checkpoints in the runs folder, so that a
    rerun cell resumes (or loads) its run instead of starting over."""
    for path in sorted((REPO / "notebooks").glob("0[1-5]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.get("accelerator") == "GPU" and nb.metadata["colab"].get("gpuType") == "T4", path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                for call in ast.walk(ast.parse(cell.source)):
                    if isinstance(call, ast.Call) and getattr(call.func, "id", "") in ("fit", "fit_triplet"):
                        assert "runs_dir" in {k.arg for k in call.keywords}, f"{path.name}: {ast.unparse(call)[:80]}"


def test_the_notebooks_choose_on_validation_and_measure_test_once():
    """Every choice between runs (04's best ladder step and best embedder, 05's best backbone and the best.pt
    it may replace) goes through helpers.train.best_on_validation or a validation score, never a test score."""
    def code(name: str) -> str:
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        return "\n".join(c.source for c in nb.cells if c.cell_type == "code")

    nb04, nb05 = code("04_metric_learning.ipynb"), code("05_sota_backbones.ipynb")
    assert 'best_ladder = best_on_validation({r: histories[r] for r in RUNS}, "valid_score")' in nb04
    assert 'best_run = best_on_validation({r: histories[r] for r in recalls}, "valid_score")' in nb04
    assert "best_name = best_on_validation(histories)" in nb05
    assert 'previous.get("valid_roc_auc"' in nb05 and 'previous.get("test_roc_auc"' not in nb05
    for source in (nb04, nb05, code("03_tuning.ipynb")):
        for test_choice in ("key=lambda n: scores[n]", "key=lambda r: np.mean(list(recalls[r]", "scores[n].roc_auc)"):
            assert test_choice not in source
