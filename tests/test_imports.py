"""No import cycles: every import in the package (module level and inside functions) is walked, between modules and
between the package's folders, and the documented dependency direction holds."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = {"tests", "benchmarks", "scripts", ".venv", "build", "runs", ".peers"}


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in OUTSIDE or any(p.startswith(".") for p in rel.parts):
            continue
        parts = ["edgeawq", *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("edgeawq."):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else module.split(".")[-1]


def test_no_module_imports_itself_back():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()))


def test_no_folder_imports_itself_back():
    g = graph()
    folders: dict[str, set[str]] = {}
    for a, targets in g.items():
        folders.setdefault(folder(a), set()).update(folder(b) for b in targets if folder(b) != folder(a))
    shared = {"errors", "data_sources", "default_models", "progress"}   # leaves anything may import
    folders = {k: v - shared for k, v in folders.items() if k not in shared}
    assert cycle(folders) is None, " -> ".join(cycle(folders))


def test_the_documented_direction():
    g = graph()
    edges = {(folder(a), folder(b)) for a, ts in g.items() for b in ts}
    backends = {"cpu_backend", "npu_backend", "tt_backend"}
    for low, high in [("kernels", "checkpoints"), ("kernels", "runtime"), ("checkpoints", "runtime"),
                      *[("runtime", b) for b in backends], ("runtime", "evaluation")]:
        assert (low, high) not in edges, f"{low}/ imports {high}/"
    for b in backends:
        assert (b, "awq") not in edges, f"{b}/ imports awq/"
        assert ("awq", b) not in edges, f"awq/ imports {b}/"
    assert ("runtime", "tasks") not in edges and ("evaluation", "tasks") not in edges
