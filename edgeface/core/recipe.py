"""Recipes: YAML files validated against a schema of defaults before any work starts.

An unknown key, a wrong type or a missing required field fails with one line naming the field.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import EdgefaceError
from .limits import short

RECIPES_DIR = Path(__file__).parents[1] / "recipes"  # packaged with edgeface
REQUIRED = object()  # marker: the field must be given


def resolve_recipe_path(path: str | Path) -> Path:
    """A path as given, or relative to the packaged recipes (``recipes/train/x.yaml`` works anywhere)."""
    p = Path(path)
    if p.is_file():
        return p
    parts = p.parts[1:] if p.parts and p.parts[0] == "recipes" else p.parts
    alt = RECIPES_DIR.joinpath(*parts) if parts else RECIPES_DIR
    if alt.is_file():
        return alt
    raise EdgefaceError(f"recipe {path} does not exist; see the packaged ones under {RECIPES_DIR}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_recipe_path(path)
    text = read_text_utf8(p, "recipe")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise EdgefaceError(f"recipe {p} is nested too deeply to be a recipe; fix the file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise EdgefaceError(f"recipe {p}{where} is not valid YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise EdgefaceError(f"recipe {p} must be a YAML mapping of fields, got {type(data).__name__}")
    return data


def read_text_utf8(path: Path, what: str) -> str:
    """A text file the user wrote (recipe, target, boxes CSV) as UTF-8 (a UTF-8 byte-order mark is fine);
    one line naming the file when it is another encoding, a folder, or unreadable."""
    p = Path(path)
    if p.is_dir():
        raise EdgefaceError(f"{what} {p} is a folder; pass a file")
    if p.exists() and not p.is_file():  # a FIFO or a device: reading it would wait (or read) forever
        raise EdgefaceError(f"{what} {p} is not a regular file; pass a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise EdgefaceError(f"{what} {p} cannot be read ({e.strerror}); check the path and its permissions") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise EdgefaceError(f"{what} {p} is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise EdgefaceError(f"{what} {p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_csv_utf8(path: Path, what: str) -> tuple[list[str], list[dict]]:
    """(header, rows as dicts) of a CSV file the user wrote, UTF-8 (see ``read_text_utf8``); one line naming the
    file and line when the csv module refuses it (a field over its 128 kB limit, a quote left open)."""
    import csv
    import io

    text = read_text_utf8(path, what)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
        return list(reader.fieldnames or []), rows
    except csv.Error as e:
        raise EdgefaceError(f"{what} {path} line {reader.line_num + 1} is not CSV ({e}); write it as comma-separated "
                            f"text with a header line") from None


def _typename(t) -> str:
    return t.__name__ if isinstance(t, type) else " or ".join(x.__name__ for x in t)


def validate(data: dict, schema: dict, where: str, prefix: str = "") -> dict:
    """Fill defaults from ``schema`` and check types. Schema values: default value (type from it),
    REQUIRED (any type), or a (type, default) tuple for fields whose default is None."""
    out = {}
    for key in data:
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise EdgefaceError(f"{where}: unknown field '{prefix}{key}' (known fields: {known})")
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], (type, tuple)):
            typ, default = spec
        elif spec is REQUIRED:
            typ, default = None, REQUIRED
        else:
            typ, default = type(spec), spec
        if key not in data:
            if default is REQUIRED:
                raise EdgefaceError(f"{where}: missing required field '{name}'")
            # A missing section takes its fields' defaults (not the schema itself, whose (type, default) pairs
            # would leak into the recipe).
            out[key] = validate({}, spec, where, name + ".") if isinstance(spec, dict) else copy.deepcopy(default)
            continue
        value = data[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise EdgefaceError(f"{where}: field '{name}' must be a mapping, got {type(value).__name__}")
            out[key] = validate(value, spec, where, name + ".")
            continue
        if value is None and default is None:
            out[key] = None
            continue
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typ is not None and (not isinstance(value, typ) or (isinstance(value, bool) and typ in (int, float))):
            # short(): never the whole value, which for a YAML bomb is billions of items
            raise EdgefaceError(f"{where}: field '{name}' must be {_typename(typ)}, got {type(value).__name__} "
                                f"({short(value)})")
        out[key] = value
    return out
