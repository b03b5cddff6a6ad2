"""The package's import graph, read with ``ast``: every import goes down the layers, none goes round in a circle.

    core <- engines <- runtime <- remote <- model <- export <- quantize <- bench <- deploy <- fleet <- cli

A module may import its own layer and the layers below it, never one above. Imports inside functions count
too (they run, later). The root package (``edgeface/__init__.py``, ``__main__.py``) is the public face and
sits at the top with the CLI. See docs/architecture.md for what each layer holds.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeface"
LAYERS = ("core", "engines", "runtime", "remote", "model", "export", "quantize", "bench", "deploy", "fleet", "cli")
TOP = len(LAYERS)  # the root package: the public API and `python -m edgeface`
# Where torch (and torchao) may be imported: the torch engine, training, export, quantization-aware training.
TORCH_ALLOWED = ("edgeface.engines.torch", "edgeface.model", "edgeface.export", "edgeface.quantize.qat")
# What a device installs imports no optional package at module level (a Pi's ncnn install has no onnx, no
# torch), except inside the engine package that needs it.
DEVICE_LAYERS = ("core", "engines", "runtime")
OPTIONAL = {"onnx": None, "onnxruntime": "onnxruntime", "ncnn": "ncnn", "tensorrt": "tensorrt", "pycuda": "tensorrt",
            "cuda": "tensorrt", "torch": "torch", "torchao": "torch"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def _exists(name: str) -> bool:
    p = PACKAGE.parent / Path(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imports(path: Path, name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append((sub if _exists(sub) else module, node.lineno, id(node) in top_level))
    return out


def _graph():
    modules = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], int] = {}
    external: dict[str, list[tuple[str, int, bool]]] = defaultdict(list)
    for name, path in modules.items():
        for target, line, top in _imports(path, name):
            if target != "edgeface" and not target.startswith("edgeface."):
                external[name].append((target, line, top))
                continue
            # Importing a.b.c runs the __init__ of a and a.b too, unless the importer lives inside them.
            parts = target.split(".")
            for k in range(2, len(parts) + 1):
                t = ".".join(parts[:k])
                if t != name and not name.startswith(t + ".") and t in modules:
                    edges[name].add(t)
                    where.setdefault((name, t), line)
    return modules, edges, where, external


MODULES, EDGES, WHERE, EXTERNAL = _graph()


def _rank(module: str) -> int:
    parts = module.split(".")
    if module in ("edgeface", "edgeface.__main__"):
        return TOP
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def test_every_module_sits_in_a_layer():
    loose = [m for m in MODULES if _rank(m) < 0 and m not in ("edgeface", "edgeface.__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}; put each in the package of its layer"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py") == ["__init__.py", "__main__.py"]


def test_imports_go_down_the_layers():
    upward = [f"{MODULES[src].relative_to(PACKAGE.parent)}:{WHERE[src, dst]} imports {dst} "
              f"({LAYERS[_rank(src)] if _rank(src) < TOP else 'edgeface'} -> "
              f"{LAYERS[_rank(dst)] if _rank(dst) < TOP else 'edgeface'})"
              for src, dsts in EDGES.items() for dst in dsts if _rank(dst) > _rank(src)]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in EDGES.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in EDGES.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_torch_stays_in_its_packages():
    found = [f"{m}:{line} imports {t}" for m, imps in EXTERNAL.items() for t, line, _ in imps
             if t.split(".")[0] in ("torch", "torchao", "torchvision")
             and not any(m == a or m.startswith(a + ".") for a in TORCH_ALLOWED)]
    assert not found, "torch imported outside " + ", ".join(TORCH_ALLOWED) + ":\n" + "\n".join(found)
    # ...and no package __init__ pulls it in, so importing any package stays torch-free.
    inits = [m for m, imps in EXTERNAL.items()
             if _is_package(m) and any(t.split(".")[0] == "torch" for t, _, _ in imps)]
    assert not inits, f"package __init__ files importing torch: {inits}"


def test_device_layers_import_no_optional_package_at_module_level():
    device = [m for m in EXTERNAL if _rank(m) < TOP and LAYERS[_rank(m)] in DEVICE_LAYERS]
    found = [f"{m}:{line} imports {t}" for m in device for t, line, top in EXTERNAL[m]
             if top and t.split(".")[0] in OPTIONAL
             and not m.startswith(f"edgeface.engines.{OPTIONAL[t.split('.')[0]]}.")]
    assert not found, "module-level imports of an optional package in what a device installs:\n" + "\n".join(found)


def test_no_private_names_cross_modules():
    crossing = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("edgeface")):
                crossing += [f"{name}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, "private names imported from another module:\n" + "\n".join(crossing)


@pytest.mark.parametrize("bad, message", [
    ({"edgeface.core.x": {"edgeface.runtime.y"}}, "against the layer order"),
    ({"edgeface.model.a": {"edgeface.model.b"}, "edgeface.model.b": {"edgeface.model.a"}}, "cycles"),
])
def test_the_checks_catch_what_they_claim(monkeypatch, bad, message):
    """A planted upward import and a planted cycle fail the checks above (so a green run means something)."""
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "EDGES", {**EDGES, **bad})
    monkeypatch.setattr(this, "MODULES", {**MODULES, **{k: PACKAGE / "x.py" for k in bad}})
    monkeypatch.setattr(this, "WHERE", {**WHERE, **{(s, d): 1 for s, ds in bad.items() for d in ds}})
    check = test_imports_go_down_the_layers if "layer" in message else test_no_import_cycles
    with pytest.raises(AssertionError, match=message):
        check()
