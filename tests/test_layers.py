"""The package's import graph, read with ``ast``: every import goes down the layers, none goes round in a circle.

    core <- engines <- faces <- runtime <- remote <- model <- export <- quantize <- bench <- deploy <- fleet <- cli

A module may import its own layer and the layers below it, never one above. Imports inside functions count
too (they run, later). Finer than the line: ``ALLOWED`` (the picture in docs/architecture.md as data) names the
packages each package may import, and ``layer_violations(root)`` counts importlib calls and registry strings
too. The root package (``edgeface/__init__.py``, ``__main__.py``) is the public face and sits at the top with
the CLI. See docs/architecture.md for what each layer holds.
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeface"
LAYERS = ("core", "engines", "faces", "runtime", "remote", "model", "export", "quantize", "bench", "deploy", "fleet",
          "cli")
TOP = len(LAYERS)  # the root package: the public API and `python -m edgeface`
# The diagram in docs/architecture.md as data: package -> the packages it may import (its own is always allowed).
# Only edges the tree has and the picture draws downward: a new edge (a sideways import such as bench -> export,
# an upward one) fails until it is added here and in the doc. "edgeface" is the root package (__init__, __main__).
# Imports, importlib.import_module("edgeface....") and registry strings "edgeface.pkg.module:attr" all count.
# docs/architecture.md shows this same dict; test_the_doc_shows_the_same_edges holds them together.
ALLOWED = {
    "core": set(),
    "engines": {"core"},
    "faces": {"core"},
    "runtime": {"core", "engines"},
    "remote": {"core"},
    "model": {"core", "engines", "faces"},
    "export": {"core", "engines", "faces", "runtime"},
    "quantize": {"core", "engines", "export", "faces", "model", "runtime"},
    "bench": {"core", "engines", "faces", "remote", "runtime"},
    "deploy": {"core", "engines", "export", "faces", "quantize", "remote", "runtime"},
    "fleet": {"core", "deploy", "runtime"},
    "cli": {"bench", "core", "deploy", "engines", "export", "faces", "fleet", "model", "quantize", "runtime"},
    "edgeface": {"cli", "core", "runtime"},
}
# Where torch (and torchao) may be imported: the torch engine, training, export, quantization-aware training.
TORCH_ALLOWED = ("edgeface.engines.torch", "edgeface.model", "edgeface.export", "edgeface.quantize.qat")
# What a device installs imports no optional package at module level (a Pi's ncnn install has no onnx, no
# torch), except inside the engine package that needs it.
DEVICE_LAYERS = ("core", "engines", "faces", "runtime")
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


REGISTRY_STRING = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+):[A-Za-z_][\w.]*$")  # "edgeface.pkg.module:attr"


def _dynamic_imports(tree: ast.AST, package: str) -> list[tuple[str, int, str]]:
    """(module, line, how) for importlib.import_module("pkg...") / __import__("pkg...") calls and registry strings."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                arg = ast.Constant(str(arg.values[0].value).rpartition(".")[0])  # f"pkg.engines.{name}": its prefix
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and (
                    arg.value == package or arg.value.startswith(package + ".")):
                out.append((arg.value, node.lineno, "importlib"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = REGISTRY_STRING.match(node.value)
            if m and (m.group(1) == package or m.group(1).startswith(package + ".")):
                out.append((m.group(1), node.lineno, "registry string"))
    return out


def package_edges(root: Path) -> list[tuple[str, str, str, int, str]]:
    """Every edge between modules of the package at ``root``: (from module, to module, file, line, how)."""
    root = Path(root)
    package = root.name

    def name_of(path: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def exists(name: str) -> bool:
        p = root.parent / Path(*name.split("."))
        return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()

    def in_package(path: Path) -> bool:  # not package data: fleet's device script runs on the device, elsewhere
        folders = [d for d in [path.parent, *path.parent.parents] if d == root or root in d.parents]
        return all((d / "__init__.py").is_file() for d in folders)

    out = []
    for path in sorted(p for p in root.rglob("*.py") if in_package(p)):
        name = name_of(path)
        tree = ast.parse(path.read_text(), str(path))
        base = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno, "import") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = (".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                          if node.level else node.module)
                found += [(f"{module}.{a.name}" if exists(f"{module}.{a.name}") else module, node.lineno, "import")
                          for a in node.names]
        found += _dynamic_imports(tree, package)
        out += [(name, t, str(path.relative_to(root.parent)), line, how) for t, line, how in found
                if t == package or t.startswith(package + ".")]
    return out


def _layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[0] if len(parts) == 1 or parts[1] == "__main__" else parts[1]


def layer_violations(root: Path, allowed: dict = ALLOWED) -> list[str]:
    """Edges of the package at ``root`` that the diagram does not draw. There are no exceptions: an engine
    descriptor naming its exporter or INT8 emitter by registry string would point up, so export/ and quantize/
    keep those tables themselves (``EXPORTERS``, ``EMITTERS``)."""
    bad = []
    for src, dst, where, line, how in package_edges(root):
        a, b = _layer_of(src), _layer_of(dst)
        if a != b and b not in allowed.get(a, ()):
            bad.append(f"{where}:{line}: {how} {dst} ({a} -> {b}, not in the diagram)")
    return sorted(set(bad))


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


# -- the diagram as data --------------------------------------------------------------------------------------
DOC = PACKAGE.parent / "docs" / "architecture.md"


def test_every_edge_is_in_the_diagram():
    bad = layer_violations(PACKAGE)
    assert not bad, ("imports, importlib calls or registry strings the diagram does not draw (ALLOWED here and in "
                     "docs/architecture.md):\n" + "\n".join(bad))


def test_the_diagram_allows_only_edges_the_tree_has():
    """Each allowed edge is used, so the data stays the tree's real shape."""
    edges = package_edges(PACKAGE)
    used = {(_layer_of(s), _layer_of(d)) for s, d, *_ in edges}
    unused = [f"{a} -> {b}" for a, bs in ALLOWED.items() for b in bs if (a, b) not in used]
    assert not unused, f"allowed edges nothing uses (drop them from ALLOWED and the doc): {unused}"
    assert set(ALLOWED) == set(LAYERS) | {"edgeface"}


def test_the_doc_shows_the_same_edges():
    text = DOC.read_text()
    block = re.search(r"```python\n(ALLOWED = .*?)```", text, re.S)
    assert block, "docs/architecture.md lost its ALLOWED block"
    shown = {t.id: ast.literal_eval(n.value) for n in ast.parse(block.group(1)).body
             for t in n.targets}
    assert shown["ALLOWED"] == {k: set(v) for k, v in ALLOWED.items()}
    assert set(shown) == {"ALLOWED"}, "the doc shows ALLOWED only (there are no known exceptions)"


def _fake_tree(root: Path, files: dict[str, str]) -> Path:
    """A package named edgeface under ``root``: every layer with an empty __init__, plus ``files``."""
    pkg = root / "edgeface"
    for layer in LAYERS:
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_the_checker_passes_edges_the_diagram_draws(tmp_path):
    pkg = _fake_tree(tmp_path, {
        "deploy/pipeline.py": "from ..export import onnx\nimport edgeface.quantize\n",
        "export/onnx.py": "",
        "bench/runner.py": "import importlib\nm = importlib.import_module('edgeface.runtime')\n",
        "engines/ncnn/__init__.py": "RUNNER = 'edgeface.engines.ncnn.runner:NcnnBackend'\n",
        "export/ncnn.py": "",
        "cli/app.py": "from edgeface.deploy import pipeline\n",
    })
    assert layer_violations(pkg) == []


@pytest.mark.parametrize("rel, text, expect", [
    # sideways: bench and export are both above runtime; bench never imports export (the old line test passed it)
    ("bench/runner.py", "from ..export import onnx\n", "import edgeface.export.onnx (bench -> export"),
    ("remote/ssh.py", "from edgeface.runtime import bundle\n", "(remote -> runtime"),
    # sideways across one floor: deploy and bench sit side by side (the CLI hands deploy its device bench)
    ("deploy/pipeline.py", "from ..bench import runner\n", "(deploy -> bench"),
    # upward through importlib, inside a function
    ("runtime/x.py", "import importlib\ndef f():\n    return importlib.import_module('edgeface.cli.app')\n",
     "importlib edgeface.cli.app (runtime -> cli"),
    ("core/x.py", "from importlib import import_module\nM = import_module(f'edgeface.deploy.{1}')\n",
     "importlib edgeface.deploy (core -> deploy"),
    # upward through a registry string in an engine (what descriptors once did for exporters and emitters)
    ("engines/fake/__init__.py", "ENGINE = dict(exporter='edgeface.export.fake:export_fake')\n",
     "registry string edgeface.export.fake (engines -> export"),
    ("engines/ncnn/__init__.py", "ENGINE = dict(emitter='edgeface.quantize.emit.ncnn:ncnn_int8')\n",
     "registry string edgeface.quantize.emit.ncnn (engines -> quantize"),
    ("engines/ncnn/__init__.py", "X = 'edgeface.deploy.pipeline:deploy'\n", "(engines -> deploy"),
    # under TYPE_CHECKING too
    ("core/y.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..bench import report\n",
     "(core -> bench"),
])
def test_the_checker_fails_on_an_edge_off_the_diagram(tmp_path, rel, text, expect):
    pkg = _fake_tree(tmp_path, {"export/onnx.py": "", "export/fake.py": "", "runtime/bundle.py": "",
                                "cli/app.py": "", "deploy/pipeline.py": "", "bench/report.py": "",
                                rel: text})
    bad = layer_violations(pkg)
    assert len(bad) == 1 and expect in bad[0] and bad[0].startswith(f"edgeface/{rel}:"), bad
