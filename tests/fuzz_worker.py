"""The subprocess that runs fuzz cases for tests/test_fuzz.py (one JSON case per stdin line).

Each case is appended to the log file (flushed and fsynced) *before* it runs, so a crash in native code
(a segfault in OpenCV, onnxruntime, ncnn) leaves the input that caused it as the log's last line. The
answer is one JSON line on stdout: {"ok": true} (a result, or an EdgefaceError / exit 2 with one
`error:` line) or {"ok": false, "error": "..."} (anything else: a traceback the user would see).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np


def decode(v):
    """JSON -> Python: {"__array__": {...}} is a numpy array, other values as they are."""
    if isinstance(v, dict) and "__array__" in v:
        a = v["__array__"]
        shape, dtype, fill = tuple(a["shape"]), np.dtype(a["dtype"]), a["fill"]
        rng = np.random.default_rng(a.get("seed", 0))
        if fill == "random":
            if dtype.kind in "iub":
                info = np.iinfo(dtype) if dtype.kind != "b" else None
                arr = rng.integers(0, 2, shape).astype(dtype) if info is None else \
                    rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, shape).astype(dtype)
            else:
                arr = rng.normal(0, 100, shape).astype(dtype)
        else:
            arr = np.full(shape, {"zeros": 0, "nan": np.nan, "inf": np.inf, "max": 255}[fill],
                          dtype=dtype if not (fill in ("nan", "inf") and dtype.kind in "iub") else np.float32)
        if a.get("transpose"):
            arr = arr.T
        return arr
    if isinstance(v, dict) and "__dict__" in v:
        return {k: decode(x) for k, x in v["__dict__"].items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


_PRED = {}


def predictor():
    from edgeface.runtime.predictor import Predictor

    if "p" not in _PRED:
        _PRED["p"] = Predictor(os.environ["EDGEFACE_FUZZ_MODEL"], threads=1)
    return _PRED["p"]


def run_case(case: dict) -> None:
    from edgeface.core.errors import EdgefaceError

    kind = case["kind"]
    try:
        if kind == "predict":
            predictor().predict(decode(case["crops"]), rgb=bool(case.get("rgb")))
        elif kind == "predict_image":
            predictor().predict_image(decode(case["frame"]), decode(case["boxes"]))
        elif kind == "crop":
            from edgeface.core.preprocess import crop_face
            from edgeface.core.spec import CropRule, ModelSpec

            spec = ModelSpec(input_size=case["size"], crop=CropRule(**case["rule"])).validate()
            out = crop_face(decode(case["image"]), decode(case["box"]), spec, **case.get("transform", {}))
            assert out.shape == (spec.input_size, spec.input_size, 3) and out.dtype == np.uint8
        elif kind == "_crash":  # the harness' own test: a native crash must be caught and its input named
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)
        elif kind == "cli":
            return run_cli(case)
        elif kind == "load":
            from edgeface.deploy.targets import load_target
            from edgeface.model.train import load_train_recipe

            p = Path(case["path"])
            p.write_bytes(bytes.fromhex(case["data"]))
            (load_target if case["what"] == "target" else load_train_recipe)(p)
        else:
            raise ValueError(f"unknown case kind {kind}")
    except EdgefaceError as e:
        if "\n" in str(e):
            raise AssertionError(f"EdgefaceError of several lines: {e!s:.300}") from None


def run_cli(case: dict) -> None:
    """The `edgeface` command in this process: exit 0, or exit 2 with one `error:` line; never a traceback."""
    from edgeface.cli.app import main
    from edgeface.cli import output

    for name, hexdata in case.get("files", {}).items():
        p = Path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes.fromhex(hexdata))
    err = io.StringIO()
    old_argv, old_file = sys.argv, output.console.file
    sys.argv = ["edgeface", *case["argv"]]
    output.console.file = err
    code = 0
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, output.console.file = old_argv, old_file
    text = err.getvalue()
    # exit 2 is edgeface's one `error:` line, or the argument parser's own usage error for a bad option value
    lines = text.strip().splitlines()
    if code not in (0, 2) or "Traceback" in text or (code == 2 and not lines):
        raise AssertionError(f"exit {code}: {text[-300:]}")


def main() -> None:
    log = open(os.environ["EDGEFACE_FUZZ_LOG"], "a", encoding="utf-8")
    for line in sys.stdin:
        log.write(line if line.endswith("\n") else line + "\n")
        log.flush()
        os.fsync(log.fileno())
        try:
            run_case(json.loads(line))
            answer = {"ok": True}
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            answer = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}",
                      "where": traceback.format_exc(limit=-3)[-800:]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
