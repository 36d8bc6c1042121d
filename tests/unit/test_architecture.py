"""The package's layout rules, measured on the source with `ast`: no import cycle between our
modules (imports inside functions count), our own imports at the top of each file, heavy
libraries only inside the functions that need them, no module over 400 lines, no function over
60, a docstring on every public name another module uses, and every shared file name and tag
key spelled once (in sweep_sft.names)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import helpers

SRC = helpers.SRC
OURS = ("sweep_sft", "hydra_plugins")
HEAVY = {
    "torch", "transformers", "mlflow", "optuna", "deepspeed", "matplotlib", "submitit", "peft", "scipy", "datasets",
    "sacrebleu", "torchmetrics",
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    imports: list[tuple[ast.stmt, list[str], bool]] = field(default_factory=list)  # node, targets, at top


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def load_modules(src: Path = SRC) -> dict[str, Module]:
    """Every module under src/sweep_sft and src/hydra_plugins, parsed, with its imports resolved."""
    modules = {}
    for path in sorted(src.rglob("*.py")):
        if not path.relative_to(src).parts[0].startswith(OURS):
            continue
        name, is_package = _module_name(path, src)
        modules[name] = Module(name, path, ast.parse(path.read_text(), str(path)), is_package)
    for module in modules.values():
        top = set(map(id, module.tree.body)) | {id(n) for n in _guarded_top(module.tree)}
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module.imports.append((node, _targets(module, node, modules), id(node) in top))
    return modules


def _guarded_top(tree: ast.Module) -> list[ast.stmt]:
    """Statements inside module-level `if`/`try` blocks (optional imports) count as top."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    out.append(child)
    return out


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Imports under `if TYPE_CHECKING:`: for annotations, never run, so no edge of the import graph."""
    return {
        id(child)
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for child in ast.walk(node)
    }


def _targets(module: Module, node: ast.stmt, modules: dict[str, Module]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.name.split(".")
        package = package if module.is_package else package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _ours(target: str, modules: dict[str, Module]) -> str | None:
    """The module of ours a dotted import target lands in (the longest known prefix), or None."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, anywhere in the file."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        annotations_only = _type_checking_only(module.tree)
        for node, targets, _ in module.imports:
            if id(node) in annotations_only:
                continue
            for target in targets:
                dep = _ours(target, modules)
                if dep and dep != module.name and not module.name.startswith(dep + "."):
                    graph[module.name].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules()


def test_the_package_is_found(modules: dict[str, Module]) -> None:
    assert {"sweep_sft.__main__", "sweep_sft.names", "sweep_sft.trial.run"} <= set(modules)
    assert sum(len(m.imports) for m in modules.values()) > 100


def test_no_import_cycle(modules: dict[str, Module]) -> None:
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph seen from the folders: sweep_sft.<folder or module>, hydra_plugins.<plugin>."""
    def folder(name: str) -> str:
        return ".".join(name.split(".")[:2])

    folders: dict[str, set[str]] = {folder(name): set() for name in graph}
    for name, deps in graph.items():
        folders[folder(name)] |= {folder(dep) for dep in deps if folder(dep) != folder(name)}
    return folders


def test_no_import_cycle_between_folders(modules: dict[str, Module]) -> None:
    # Layers, not only modules: data/ never reaches back into config/, evaluate/ never into trial/.
    cycle = find_cycle(folder_graph(import_graph(modules)))
    assert cycle is None, "folders import each other: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "sweep_sft"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from sweep_sft.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from sweep_sft import a\n    return a\n")
    assert find_cycle(import_graph(load_modules(tmp_path))) == ["sweep_sft.a", "sweep_sft.b", "sweep_sft.a"]


def heavy_modules(modules: dict[str, Module]) -> set[str]:
    """Our modules that import a heavy library at their top (submitit's job controller): heavy themselves."""
    return {
        m.name for m in modules.values() for _, targets, at_top in m.imports
        if at_top and any(t.split(".")[0] in HEAVY for t in targets)
    }


def test_our_own_imports_sit_at_the_top_of_each_file(modules: dict[str, Module]) -> None:
    heavy = heavy_modules(modules)
    inner = [
        f"{m.path.relative_to(SRC)}:{node.lineno}"
        for m in modules.values()
        for node, targets, at_top in m.imports
        if not at_top and any(_ours(t, modules) not in (None, *heavy) for t in targets)
    ]
    assert inner == []


def test_heavy_libraries_are_imported_only_inside_functions(modules: dict[str, Module]) -> None:
    # A module of ours that is heavy itself may import its library at the top only if nothing imports
    # it at the top (and Hydra's plugin scan skips it: a leading underscore).
    heavy = heavy_modules(modules)
    assert all(name.rpartition(".")[2].startswith("_") for name in heavy), heavy
    eager = [
        f"{m.path.relative_to(SRC)}:{node.lineno} {t}"
        for m in modules.values()
        for node, targets, at_top in m.imports
        for t in targets
        if at_top and _ours(t, modules) in heavy
    ]
    assert eager == []


def test_cfg_job_imports_no_heavy_library(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sweep_sft", "--cfg", "job", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"hydra", "omegaconf", "sweep_sft.names"} <= imported, "importtime output not parsed"
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []


def test_no_module_over_400_lines(modules: dict[str, Module]) -> None:
    sizes = {name: len(m.path.read_text().splitlines()) for name, m in modules.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_over_60_lines(modules: dict[str, Module]) -> None:
    long = [
        f"{m.path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for m in modules.values()
        for node in ast.walk(m.tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def _definitions(module: Module) -> dict[str, ast.AST]:
    return {
        node.name: node
        for node in module.tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }


def used_names(module: Module, modules: dict[str, Module]) -> set[tuple[str, str]]:
    """(module, name) pairs of ours that `module` uses: `from m import name`, and `m.name` after `import m` or
    `from package import m`."""
    used, aliases = set(), {}
    for node, targets, _ in module.imports:
        if isinstance(node, ast.ImportFrom) and not node.level:
            for alias, target in zip(node.names, targets, strict=True):
                if target in modules and target != node.module:  # `from package import module`
                    aliases[alias.asname or alias.name] = target
                elif node.module in modules:
                    used.add((node.module, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.add((aliases[node.value.id], node.attr))
    return {(m, name) for m, name in used if m != module.name and not name.startswith("_")}


def test_every_public_name_another_module_uses_says_what_it_is_for(modules: dict[str, Module]) -> None:
    missing = set()
    for module in modules.values():
        for source, name in used_names(module, modules):
            defined = _definitions(modules[source]).get(name)
            if defined is not None and not ast.get_docstring(defined):
                missing.add(f"{source}.{name}")
    assert sorted(missing) == []


def _shared_names(modules: dict[str, Module]) -> dict[str, str]:
    """value -> its constant, for names.py's file names (.json, .jsonl, .yaml, .pt) and sweep_sft.* tag keys, and every
    metric name of metrics.py."""
    shared = {}
    for home in ("sweep_sft.names", "sweep_sft.metrics"):
        for node in modules[home].tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                value = node.value.value
                if not isinstance(value, str):
                    continue
                file_or_tag = value.endswith((".json", ".jsonl", ".yaml", ".pt")) or value.startswith("sweep_sft.")
                if home == "sweep_sft.metrics" or file_or_tag:
                    shared[value] = f"{home.rpartition('.')[2]}.{node.targets[0].id}"
    return shared


def test_every_shared_file_name_tag_and_metric_is_spelled_once(modules: dict[str, Module]) -> None:
    shared = _shared_names(modules)
    assert {"metrics.json", "model.pt", "sweep_sft.trial_state", "sweep_summary.json", "val/loss"} <= set(shared)
    spelled = [
        f"{m.path.relative_to(SRC)}:{node.lineno} {node.value!r} (use {shared[node.value]})"
        for m in modules.values()
        if m.name not in ("sweep_sft.names", "sweep_sft.metrics")
        for node in ast.walk(m.tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in shared
    ]
    assert spelled == []
