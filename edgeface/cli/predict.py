"""`edgeface predict [MODEL] IMAGE|VIDEO...` / `--camera N`: blur and head pose as JSON lines, one per face (per
frame for videos and cameras, with a track id); faces are detected unless --boxes or --crops say where they are."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..core.errors import EdgefaceError
from ..core.limits import MAX_CAMERA_INDEX, short
from ..core.recipe import read_csv_utf8
from ..engines import registry
from .output import check_output_dir, check_output_file, console, out_console, write_json

NAME = "predict"


def read_boxes_csv(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """``file,x,y,w,h`` rows (a header row is required) -> boxes per file name."""
    if not path.exists():
        raise EdgefaceError(f"boxes file {path} does not exist")
    boxes: dict[str, list] = {}
    fieldnames, rows = read_csv_utf8(path, "boxes file")
    need = {"file", "x", "y", "w", "h"}
    if not fieldnames or need - set(fieldnames):
        raise EdgefaceError(f"{path} needs a header with columns file,x,y,w,h (got {short(fieldnames)})")
    for i, row in enumerate(rows, start=2):
        try:
            box = tuple(float(row[k]) for k in ("x", "y", "w", "h"))
        except (TypeError, ValueError):
            raise EdgefaceError(f"{path} line {i}: x, y, w, h must be numbers") from None
        boxes.setdefault(row["file"], []).append(box)
    return boxes


def _boxes_for(boxes: dict, image: Path) -> list | None:
    for key in (str(image), image.name):
        if key in boxes:
            return boxes[key]
    return None


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


MODEL_HELP = "bundle folder, .onnx, .ncnn.param, .engine, .xml or .pt"


def _is_model_path(text: str) -> bool:
    """A MODEL argument: 'default', a folder (a bundle, or a folder holding one artifact), or a file named like
    an engine's artifact (whether or not it exists: a missing model is reported as a missing model)."""
    if text == "default" or Path(text).is_dir():
        return True
    try:
        registry.engine_of_artifact(text)
    except EdgefaceError:
        return False
    return True


def split_model_and_inputs(paths: list[str], model: Optional[str]) -> tuple[str, list[Path]]:
    """(model, inputs) from what the user typed: ``--model`` wins; else a first argument that is a model (by its
    name, or a folder) picks it; else every argument is an input and the shipped model runs. A later argument
    that is a model, or one that is neither a model nor an image or video, is refused with what it is."""
    from ..runtime.stream import IMAGE_EXTS, is_image_path

    paths = list(paths)
    if model is None and paths and _is_model_path(paths[0]):
        model = paths.pop(0)
    for text in paths:
        p = Path(text)
        if _is_model_path(text):
            raise EdgefaceError(f"{text} is a model, not an image or video; give it first or with --model "
                                f"({'one model per run' if model else 'then the images'})")
        if not (is_image_path(p) or p.suffix.lower() in VIDEO_SUFFIXES):
            what = "does not exist" if not p.exists() else f"is not an image or video ({p.suffix or 'no suffix'})"
            raise EdgefaceError(f"{text} {what}: predict takes a model ({MODEL_HELP}; optional, the shipped model "
                                f"by default) then images ({', '.join(sorted(IMAGE_EXTS))}) or videos "
                                f"({', '.join(VIDEO_SUFFIXES)})")
        if not p.exists():
            raise EdgefaceError(f"{'video' if p.suffix.lower() in VIDEO_SUFFIXES else 'image'} {text} does not exist")
    if model not in (None, "default") and not Path(model).exists():
        raise EdgefaceError(f"model {model} does not exist; give a {MODEL_HELP}, or leave it out for the shipped model")
    return model or "default", [Path(t) for t in paths]


def command(paths: Optional[list[str]] = typer.Argument(None, metavar="[MODEL] INPUT...",
                                                        help="Optional model first (" + MODEL_HELP + "; the shipped "
                                                             "model when left out), then images (full frames: faces "
                                                             "are detected; face crops with --crops) or videos."),
            model: Optional[str] = typer.Option(None, "--model", "-m", help="The model (" + MODEL_HELP + "); "
                                                "default: the shipped model."),
            camera: Optional[int] = typer.Option(None, "--camera", help="Read frames from camera N (an index)."),
            boxes_csv: Optional[Path] = typer.Option(None, "--boxes",
                                                     help="CSV file,x,y,w,h: face boxes per image (several rows "
                                                          "per image allowed); other images are detected."),
            crops: bool = typer.Option(False, "--crops", help="Images not in --boxes are face crops: no detection."),
            score_threshold: float = typer.Option(0.4, "--score-threshold", help="Detector score threshold."),
            nms_threshold: float = typer.Option(0.3, "--nms-threshold", help="Detector NMS IoU threshold."),
            largest: bool = typer.Option(False, "--largest", help="Only the largest face per frame."),
            min_size: float = typer.Option(0.0, "--min-size", help="Drop faces smaller than this (box side, pixels)."),
            smooth: bool = typer.Option(False, "--smooth", help="Video/camera: One-Euro smoothing of pose and blur "
                                                                "per track."),
            max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Video/camera: stop after N frames."),
            draw: Optional[Path] = typer.Option(None, "--draw", help="Write annotated output: an image or video file "
                                                                     "for one input, else a folder."),
            backend: str = typer.Option("auto", "--backend", help="|".join(["auto", *registry.names()]) + "."),
            threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all results as one JSON list.")):
    """Blur score and head pose (degrees) per face, printed as JSON lines: `edgeface predict photo.jpg`.

    Full images: the faces are detected (shipped YuNet), one line per face; an image without a face gives one
    line with "faces": 0. A video or --camera N streams one line per face per frame, with a track id (IoU
    tracking) and optional --smooth, and ends with a summary on stderr (frames, faces, tracks, FPS).
    """
    artifact, images = split_model_and_inputs(list(paths or []), model)
    inputs = [*images, boxes_csv, None if artifact == "default" else artifact]  # what no output may replace
    check_output_file(json_out, "--json", inputs=inputs)
    _check_sources(images, artifact, camera, max_frames)
    boxes = read_boxes_csv(boxes_csv) if boxes_csv else {}
    sources, frames, camera_frames = _open_sources(images, camera)
    if draw is not None:
        _check_draw_targets(draw, [s for s in sources if isinstance(s, Path)], frames, len(sources), inputs=inputs)
        if len(sources) > 1:
            draw.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    detector_options = dict(score_threshold=score_threshold, nms_threshold=nms_threshold, largest_only=largest,
                            min_size=min_size)
    rows, no_face, engine = _predict_sources(artifact, backend, threads, detector_options, sources, frames,
                                             camera_frames, boxes, crops, smooth, max_frames, draw)
    write_json(json_out, rows)
    n_faces = sum(1 for r in rows if "face" in r)
    console.print(f"predict: {len(frames)} image(s), {len(sources) - len(frames)} video/camera source(s), "
                  f"{n_faces} face record(s){f', {no_face} image(s) without a face' if no_face else ''}; "
                  f"{engine}, {time.perf_counter() - t_start:.1f} s", highlight=False, soft_wrap=True)


def _check_sources(images: list[Path], artifact: str, camera: Optional[int], max_frames: Optional[int]) -> None:
    if max_frames is not None and max_frames < 1:
        raise EdgefaceError(f"--max-frames must be >= 1, got {max_frames}")
    if not images and camera is None:
        raise EdgefaceError(f"give images or video files{' after the model' if artifact != 'default' else ''} "
                            f"(`edgeface predict photo.jpg`), or --camera N")
    if camera is not None and not 0 <= camera <= MAX_CAMERA_INDEX:
        raise EdgefaceError(f"--camera takes a camera index from 0 to {MAX_CAMERA_INDEX}, got {str(camera)[:20]}")


def _open_sources(images: list[Path], camera: Optional[int]) -> tuple[list, dict, object]:
    """(sources in order, {image: its pixels}, the camera's frames or None). Every image is read and every
    video opened first: a bad input fails the command before any output."""
    from ..core.preprocess import read_image
    from ..runtime.stream import video_frames

    sources: list = list(images)
    frames = {}
    for p in images:
        if p.suffix.lower() in VIDEO_SUFFIXES:
            next(iter(video_frames(p)))  # exists, opens, has a first frame
        else:
            frames[p] = read_image(p)
    camera_frames = None
    if camera is not None:
        cam = video_frames(camera)
        camera_frames = _chain_first(next(iter(cam)), cam)  # the camera delivers a frame before any output
        sources.append(camera)
    return sources, frames, camera_frames


def _predict_sources(artifact, backend, threads, detector_options: dict, sources: list, frames: dict, camera_frames,
                     boxes: dict, crops: bool, smooth: bool, max_frames, draw) -> tuple[list[dict], int, str]:
    """Every source through one Predictor, each record printed as a JSON line as it comes; returns (records,
    images without a face, "backend precision")."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..runtime.detector import FaceDetector
    from ..runtime.predictor import Predictor
    from ..runtime.stream import video_frames

    rows, no_face, n_out = [], 0, len(sources)

    def emit(row):
        rows.append(row)
        out_console.print(json.dumps(row), highlight=False, soft_wrap=True)

    with Predictor(None if artifact == "default" else artifact, backend=backend, threads=threads) as pred, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console, transient=True, disable=not console.is_terminal) as progress:
        tag = {"backend": pred.backend, "precision": pred.precision}
        detector = FaceDetector(**detector_options)
        images_task = progress.add_task("images", total=len(frames)) if frames else None
        for src in sources:
            if isinstance(src, Path) and src in frames:
                no_face += _predict_image(pred, detector, src, frames[src], _boxes_for(boxes, src), crops, draw,
                                          n_out, emit, tag)
                progress.advance(images_task)
            else:
                it = camera_frames if not isinstance(src, Path) else video_frames(src)
                summary = _stream(pred, detector, it, src, smooth, max_frames, draw, n_out, emit, tag, progress)
                console.print(summary, highlight=False, soft_wrap=True)
    return rows, no_face, f"{pred.backend} {pred.precision}"


def _predict_image(pred, detector, src: Path, frame, these, crops: bool, draw, n_out: int, emit, tag) -> bool:
    """One image's records: at its --boxes, as one face crop (--crops), or at the faces detected (drawn with
    --draw). True when detection found no face."""
    if these is not None or crops:
        res, used = ((pred.predict_image(frame, np.asarray(these, dtype=np.float64)), these)
                     if these is not None else (pred.predict(frame), [None]))
        for i, (d, box) in enumerate(zip(res.as_dicts(), used)):
            emit({"image": str(src), "face": i, **({"box": [round(v, 3) for v in box]} if box is not None else {}),
                  **_rounded(d), **tag})
        return False
    faces = pred.predict_frame(frame, detector=detector)
    for i, f in enumerate(faces):
        emit({"image": str(src), "face": i, **f.as_dict(), **tag})
    if not faces:
        emit({"image": str(src), "faces": 0, **tag})
    if draw is not None:
        _write_image(_draw_path(draw, src, True, n_out), frame, faces)
    return not faces


def _rounded(d: dict) -> dict:
    """Model outputs as every predict record writes them: 3 decimals, like Face.as_dict (blur, angles, pixels)."""
    return {k: round(v, 3) for k, v in d.items()}


def _draw_path(draw: Path, src, is_image: bool, n_out: int) -> Path:
    """Where --draw writes the annotated copy of ``src`` (the rule _write_image and _stream follow)."""
    if is_image:
        path = draw if n_out == 1 else draw / Path(src).name
        return path if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp") else path.with_suffix(".png")
    out = draw if n_out == 1 else draw / (f"camera{src}" if isinstance(src, int) else Path(src).stem)
    return out if out.suffix.lower() in VIDEO_SUFFIXES else out.with_suffix(".mp4")


def _check_draw_targets(draw: Path, sources: list, frames: dict, n_out: int, inputs: list) -> None:
    """--draw must not write over an input (``--draw .`` beside the images would replace each one with its
    annotated copy) nor onto a folder where a file goes."""
    if n_out == 1:
        check_output_file(draw if not sources else _draw_path(draw, sources[0], sources[0] in frames, 1), "--draw",
                          inputs=inputs)
        return
    check_output_dir(draw, "--draw")
    for src in sources:
        check_output_file(_draw_path(draw, src, src in frames, n_out), "--draw", inputs=inputs)


def _chain_first(first, rest):
    yield first
    yield from rest


def _video_property(src, prop: int, default: float) -> float:
    """A property the video's container states (``cv2.CAP_PROP_*``); ``default`` for a camera or when it does
    not say."""
    import cv2

    from ..core.io import native_path

    if isinstance(src, int):
        return default
    with native_path(src) as name:
        cap = cv2.VideoCapture(name)
    value = cap.get(prop)
    cap.release()
    return float(value) if value and value > 0 else default


def _fps(src) -> float:
    import cv2

    return _video_property(src, cv2.CAP_PROP_FPS, 25.0)


def _write_image(path: Path, frame, faces) -> None:
    import cv2

    from ..core.io import atomic_write_bytes
    from ..runtime.stream import draw_faces

    # Encoded here and written by Python: OpenCV never sees the path (non-UTF-8 names), the file appears whole.
    try:
        ok, buf = cv2.imencode(path.suffix.lower(), draw_faces(frame, faces))
    except cv2.error:
        ok = False
    if not ok:
        raise EdgefaceError(f"cannot write {path}: OpenCV has no encoder for {path.suffix!r}; use .png or .jpg")
    atomic_write_bytes(path, buf.tobytes())


def _stream(pred, detector, frames, src, smooth, max_frames, draw, n_out, emit, tag, progress=None) -> str:
    """Run one video or camera; returns its summary line (frames, faces, tracks, FPS)."""
    from ..runtime.stream import IouTracker, VideoOut, draw_faces

    tracker = IouTracker(smooth=smooth)
    writer = None
    name = f"camera:{src}" if isinstance(src, int) else str(src)
    total = _frame_count(src)
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    task = progress.add_task(f"{Path(name).name} frames", total=total or None) if progress is not None else None
    n_frames = n_faces = 0
    tracks: set = set()
    t0 = time.perf_counter()
    try:
        for idx, t, frame in frames:
            if max_frames is not None and idx >= max_frames:
                break
            faces = pred.predict_frame(frame, detector=detector)
            ids = tracker.update(idx, t, faces)
            for i, (f, tid) in enumerate(zip(faces, ids)):
                emit({"video": name, "frame": idx, "t": round(t, 3), "track": tid, "face": i, **f.as_dict(), **tag})
            if not faces:
                emit({"video": name, "frame": idx, "t": round(t, 3), "faces": 0, **tag})
            n_frames += 1
            n_faces += len(faces)
            tracks.update(ids)
            if task is not None:
                progress.advance(task)
            if draw is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = VideoOut(_draw_path(draw, src, False, n_out), _fps(src), (w, h))
                writer.write(draw_faces(frame, faces, ids))
    except Exception:
        if writer is not None:
            writer.abort()
        raise
    except BaseException:  # SIGINT / SIGTERM: the frames drawn so far become a whole, playable file
        if writer is not None and writer.frames:
            writer.commit()
        elif writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.commit()
    seconds = time.perf_counter() - t0
    return (f"{name}: {n_frames} frames, {n_faces} faces, {len(tracks)} tracks, "
            f"{n_frames / seconds if seconds > 0 else 0.0:.1f} FPS (detect + model, {pred.backend} {pred.precision})")


def _frame_count(src) -> int:
    """Frames a video file says it holds (0 for a camera, or when the container does not say)."""
    import cv2

    return int(_video_property(src, cv2.CAP_PROP_FRAME_COUNT, 0))
