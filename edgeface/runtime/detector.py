"""Face detection for full frames: the shipped YuNet, on onnxruntime where installed, else OpenCV's DNN.

    det = FaceDetector()                      # shipped YuNet (edgeface/weights/yunet/, Apache-2.0)
    faces = det.detect(frame)                 # Detections: raw YuNet boxes, 5 landmarks, scores
    boxes = det.model_boxes(faces)            # the same faces as the data pack's boxes (the crop the model learned)

YuNet's box is not the box the model was trained on (MediaPipe's: square, brows to chin). ``model_boxes``
maps each detection (its box and landmarks) to that convention with a linear map learned offline on the
data pack's train split (``scripts/fit_box_map.py``), shipped as a few numbers in ``box_map.json``.

Engines: ``cv2.FaceDetectorYN`` runs everywhere (OpenCV is a core dependency). Where onnxruntime is installed,
``engine="auto"`` runs the same network on it, at the frame's own size, with OpenCV's decode and NMS
reproduced here: on the same pixels onnxruntime's inference is faster than FaceDetectorYN's
(``scripts/bench_detector.py``; the figures are in docs/frames.md). Torch-free: numpy, OpenCV, optionally onnxruntime.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ..core.artifact import WEIGHTS_DIR
from ..core.errors import EdgefaceError
from ..core.preprocess import check_image

YUNET_DIR = WEIGHTS_DIR / "yunet"
YUNET_MODEL = YUNET_DIR / "yunet_s_640_640.onnx"
BOX_MAP = YUNET_DIR / "box_map.json"
DETECTOR_ENGINES = ("auto", "onnxruntime", "opencv")


@dataclass
class Detections:
    """Faces found in one frame, best score first; N may be 0."""

    boxes: np.ndarray      # (N, 4) float32 x, y, w, h in pixels, as the detector gives them
    landmarks: np.ndarray  # (N, 5, 2) float32: right eye, left eye, nose tip, right and left mouth corner
    scores: np.ndarray     # (N,) float32

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))

    def take(self, idx) -> "Detections":
        idx = np.asarray(idx, dtype=np.int64)
        return Detections(self.boxes[idx], self.landmarks[idx], self.scores[idx])


# -- the box map: detector box + landmarks -> the training box ----------------------------------------------
def map_features(boxes: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, F), centre (N, 2), size (N,)): landmarks in units of the detector box, centred on it.

    The map predicts the training box's centre offset and log side in those units, so it is the same at
    any image scale.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    centre = b[:, :2] + b[:, 2:] / 2
    size = np.sqrt(np.maximum(b[:, 2] * b[:, 3], 1e-6))
    rel = (lm - centre[:, None, :]) / size[:, None, None]
    aspect = np.log(np.maximum(b[:, 3], 1e-6) / np.maximum(b[:, 2], 1e-6))
    feats = np.concatenate([np.ones((len(b), 1)), rel.reshape(len(b), 10), aspect[:, None]], axis=1)
    return feats, centre, size


def map_targets(target_boxes: np.ndarray, centre: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(N, 3): the target box's centre offset (x, y) and log side, in units of the detector box."""
    t = np.asarray(target_boxes, np.float64).reshape(-1, 4)
    tc = t[:, :2] + t[:, 2:] / 2
    side = np.sqrt(np.maximum(t[:, 2] * t[:, 3], 1e-6))
    return np.concatenate([(tc - centre) / size[:, None], np.log(side / size)[:, None]], axis=1)


def apply_map(coef: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Square boxes (N, 4) x, y, w, h in the training convention from detections and a (F, 3) coefficient matrix."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    feats, centre, size = map_features(boxes, landmarks)
    t = feats @ coef
    c = centre + t[:, :2] * size[:, None]
    side = np.exp(t[:, 2]) * size
    return np.stack([c[:, 0] - side / 2, c[:, 1] - side / 2, side, side], axis=1).astype(np.float32)


def load_box_map(path: str | Path = BOX_MAP, required: bool = False) -> Optional[np.ndarray]:
    """The (12, 3) map in a box_map.json; None when the file is absent and not ``required`` (a path the user
    named is required: detecting with raw boxes instead would change every crop without a word)."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise EdgefaceError(f"box map {path} does not exist; pass box_map='default' (the shipped one), None "
                                f"(raw YuNet boxes) or a box_map.json from scripts/fit_box_map.py")
        return None
    fix = "pass a box_map.json from scripts/fit_box_map.py"
    if path.stat().st_size > 1 << 20:
        raise EdgefaceError(f"box map {path} is over 1 MB, not a box map; {fix}")
    try:
        coef = np.asarray(json.loads(path.read_bytes().decode("utf-8"))["coef"], np.float64)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, RecursionError) as e:
        raise EdgefaceError(f"box map {path} is not a box map JSON with a numeric 'coef' ({type(e).__name__}); "
                            f"{fix}") from None
    if coef.shape != (12, 3) or not np.isfinite(coef).all():
        raise EdgefaceError(f"box map {path}: coef has shape {coef.shape} (or non-finite values); expected (12, 3) "
                            f"finite numbers")
    return coef


# -- the detector --------------------------------------------------------------------------------------------
class YuNetOnnxRuntime:
    """YuNet on onnxruntime, returning what ``cv2.FaceDetectorYN.detect`` returns: (N, 15) float32 rows of
    x, y, w, h, 5 landmarks (x, y), score, best first.

    The shipped ONNX declares a 640x640 input, but its Reshapes use -1 and its Resizes scale by 2, so with the
    input's height and width made symbolic it runs at any size that is a multiple of 32. The frame is padded
    at the bottom and right to one, as OpenCV does; decode and NMS follow OpenCV's FaceDetectorYN
    (score = sqrt(cls * obj); centres and landmarks on the stride grid; sizes exp(.) * stride; NMS on integer
    boxes), so both engines find the same faces.
    """

    STRIDES = (8, 16, 32)

    def __init__(self, path: Path, score_threshold: float, nms_threshold: float, top_k: int,
                 threads: Optional[int] = None):
        import onnx

        from ..engines.onnxruntime.session import make_session

        try:
            model = onnx.load(str(path))
        except Exception as e:  # protobuf's DecodeError and friends: a corrupt or foreign file
            raise EdgefaceError(f"face detector model {path} is not a readable ONNX file ({type(e).__name__}); "
                                f"pass the shipped YuNet or another YuNet ONNX") from None
        names = {o.name for o in model.graph.output}
        missing = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in self.STRIDES if f"{k}_{s}" not in names]
        if missing or len(model.graph.input) != 1 or len(model.graph.input[0].type.tensor_type.shape.dim) != 4:
            raise EdgefaceError(f"face detector model {path} does not have YuNet's input and outputs (missing "
                                f"{', '.join(missing[:3]) or 'a 4-D input'}); use engine='opencv' for it")
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"  # replaces the fixed 640s (a oneof)
        for out in model.graph.output:
            out.type.tensor_type.ClearField("shape")  # anchor counts follow the input size
        self._sess = make_session(model.SerializeToString(), threads=threads)
        self._input = self._sess.get_inputs()[0].name
        self._outputs = [o.name for o in self._sess.get_outputs()]
        self.score_threshold, self.nms_threshold, self.top_k = score_threshold, nms_threshold, top_k

    def detect(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        ph, pw = (h - 1) // 32 * 32 + 32, (w - 1) // 32 * 32 + 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = frame.transpose(2, 0, 1)
        outs = dict(zip(self._outputs, self._sess.run(None, {self._input: blob})))
        rows = []
        for s in self.STRIDES:
            cols = pw // s
            score = np.sqrt(np.clip(outs[f"cls_{s}"].reshape(-1), 0, 1) * np.clip(outs[f"obj_{s}"].reshape(-1), 0, 1))
            idx = np.flatnonzero(score >= self.score_threshold)  # NMS drops the rest anyway
            c = (idx % cols).astype(np.float32)[:, None]
            r = (idx // cols).astype(np.float32)[:, None]
            bb = outs[f"bbox_{s}"].reshape(-1, 4)[idx]
            kp = outs[f"kps_{s}"].reshape(-1, 10)[idx]
            size = np.exp(bb[:, 2:4]) * s
            centre = (np.concatenate([c, r], 1) + bb[:, :2]) * s
            marks = np.empty_like(kp)
            marks[:, 0::2] = (kp[:, 0::2] + c) * s
            marks[:, 1::2] = (kp[:, 1::2] + r) * s
            rows.append(np.concatenate([centre - size / 2, size, marks, score[idx, None]], 1))
        faces = np.concatenate(rows).astype(np.float32)
        if len(faces) > 1:
            # OpenCV runs NMS on integer boxes (cv::Rect2i); the same here, so overlaps match to the pixel.
            keep = cv2.dnn.NMSBoxes(np.trunc(faces[:, :4]).astype(np.int32).tolist(), faces[:, 14].tolist(),
                                    self.score_threshold, self.nms_threshold, top_k=self.top_k)
            faces = faces[np.asarray(keep, np.int64).reshape(-1)]
        return faces


def _onnxruntime_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    except ImportError:  # an import hook that refuses the name (a locked-down device) says no too
        return False


MAX_TOP_K = 5000            # OpenCV's own default for FaceDetectorYN
# YuNet on onnxruntime takes about 55 bytes per input pixel: a 64 MP frame padded for the retry took 14 GB.
# Larger inputs (frames, or frames with their border) are shrunk to this many pixels (4096 x 4096, ~1 GB).
MAX_DETECT_PIXELS = 1 << 24
MAX_UPSCALE_BELOW = 4096


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class FaceDetector:
    """YuNet through ``cv2.FaceDetectorYN``.

    ``score_threshold``/``nms_threshold``: YuNet's own (OpenCV's defaults are 0.9/0.3; 0.6 finds turned heads; 0.4
    is the default here, see docs/frames.md). ``largest_only`` keeps the biggest face, ``min_size`` drops faces
    whose box side (pixels) is smaller. ``upscale_below``: a frame whose longer side is shorter than this is
    enlarged by a whole factor to reach it before detection (YuNet misses many faces in 100 px frames; 0 turns it
    off). ``pad``: a black border of this fraction of the longer side is added before detection (YuNet, like most
    detectors, misses a face that fills the whole frame, as tight crops do); 0 turns it off, and ``"auto"`` retries
    with 0.25 and 0.5 only when nothing was found. ``box_map``: the shipped map to the training boxes (default), a
    path to another one, or None for the raw square around YuNet's box. A frame (with its border) over
    ``MAX_DETECT_PIXELS`` is shrunk to that size for detection, boxes mapped back.
    """

    def __init__(self, model: str | Path | None = None, score_threshold: float = 0.4, nms_threshold: float = 0.3,
                 top_k: int = 50, largest_only: bool = False, min_size: float = 0.0, pad="auto",
                 upscale_below: int = 200, box_map: str | Path | None = "default", threads: Optional[int] = None,
                 engine: str = "auto"):
        from ..core.limits import check_threads, finite, short

        path = Path(model) if model is not None else YUNET_MODEL
        if not path.is_file():
            raise EdgefaceError(f"face detector model {path} does not exist")
        if not all(finite(v) and 0.0 <= v <= 1.0 for v in (score_threshold, nms_threshold)):
            raise EdgefaceError(f"score_threshold and nms_threshold are between 0 and 1, got {short(score_threshold)} "
                                f"and {short(nms_threshold)}")
        if pad != "auto" and not (finite(pad) and 0 <= pad <= 2):
            raise EdgefaceError(f"pad is 'auto' or a fraction 0..2 of the longer side, got {short(pad)}")
        if not _whole(top_k) or not 1 <= top_k <= MAX_TOP_K:
            raise EdgefaceError(f"top_k is the most faces kept per frame, 1..{MAX_TOP_K}; got {short(top_k)}")
        if not (finite(min_size) and min_size >= 0):
            raise EdgefaceError(f"min_size is a box side in pixels, >= 0; got {short(min_size)}")
        # An enlarged frame is upscale_below pixels on its longer side: 1e5 would make a 10 x 10 frame 30 GB.
        if not _whole(upscale_below) or not 0 <= upscale_below <= MAX_UPSCALE_BELOW:
            raise EdgefaceError(f"upscale_below is a side in pixels, 0..{MAX_UPSCALE_BELOW} (0: off); got "
                                f"{short(upscale_below)}")
        check_threads(threads, "detector threads")  # ORT would start 100000 threads and take the machine down
        self.model = path
        self.score_threshold, self.nms_threshold, self.top_k = float(score_threshold), float(nms_threshold), int(top_k)
        self.largest_only, self.min_size, self.pad = bool(largest_only), float(min_size), pad
        self.upscale_below = int(upscale_below)
        if box_map is not None and not isinstance(box_map, (str, Path)):
            raise EdgefaceError(f"box_map is 'default', None or a path to a box_map.json, got {short(box_map)}")
        self.coef = (load_box_map(BOX_MAP) if box_map == "default" else
                     load_box_map(box_map, required=True) if box_map is not None else None)
        if engine not in DETECTOR_ENGINES:
            raise EdgefaceError(f"detector engine must be one of {', '.join(DETECTOR_ENGINES)}, got {engine!r}")
        available = _onnxruntime_available()
        if engine == "onnxruntime" and not available:
            raise EdgefaceError("detector engine 'onnxruntime' needs onnxruntime and onnx: pip install 'edgeface[ort]'")
        self.engine = engine if engine != "auto" else "onnxruntime" if available else "opencv"
        self._ort = None
        self._lock = threading.Lock()
        if self.engine == "onnxruntime":
            try:
                self._ort = YuNetOnnxRuntime(path, self.score_threshold, self.nms_threshold, self.top_k, threads)
            except EdgefaceError:
                if engine == "onnxruntime":
                    raise
                self.engine = "opencv"  # auto: a model of another layout still runs through OpenCV
        if self._ort is None:
            if threads is not None:
                cv2.setNumThreads(int(threads))
            try:
                self._yn = quiet_opencv(lambda: cv2.FaceDetectorYN.create(str(path), "", (320, 320),
                                                                          self.score_threshold, self.nms_threshold,
                                                                          self.top_k))
            except cv2.error:  # OpenCV's multi-line "Failed to parse ONNX model"
                raise EdgefaceError(f"face detector model {path} is not a YuNet ONNX model OpenCV can read; pass "
                                    f"the shipped YuNet or another YuNet ONNX") from None
            self._size = (320, 320)

    def _run(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        if h * w > MAX_DETECT_PIXELS:
            return self._run_shrunk(frame, MAX_DETECT_PIXELS, self._run)
        if self._ort is not None:
            return self._ort.detect(frame)
        h, w = frame.shape[:2]
        # One FaceDetectorYN holds one input size and one set of buffers: from several threads, calls corrupted
        # each other's results (or the heap). Serialised per instance; onnxruntime's session is thread-safe.
        with self._lock:
            if (w, h) != self._size:
                self._yn.setInputSize((w, h))
                self._size = (w, h)
            _, faces = self._yn.detect(frame)
        return np.zeros((0, 15), np.float32) if faces is None else np.asarray(faces, np.float32).reshape(-1, 15)

    def _run_padded(self, frame: np.ndarray, pad: float) -> np.ndarray:
        if pad <= 0:
            return self._run(frame)
        h, w = frame.shape[:2]
        p = int(round(pad * max(h, w)))
        if (h + 2 * p) * (w + 2 * p) > MAX_DETECT_PIXELS:  # shrink before padding: the border costs memory too
            # 2 % under the limit, so the border rounded on the shrunk frame cannot tip it over again
            return self._run_shrunk(frame, int(0.98 * MAX_DETECT_PIXELS * h * w / ((h + 2 * p) * (w + 2 * p))),
                                    lambda f: self._run_padded(f, pad))
        big = cv2.copyMakeBorder(frame, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        faces = self._run(big)
        faces[:, 0:2] -= p   # the box's x, y (not its w, h: columns 2 and 3)
        faces[:, 4:14] -= p  # the landmarks' x, y
        return faces

    @staticmethod
    def _run_shrunk(frame: np.ndarray, pixels: int, run) -> np.ndarray:
        """``run`` on ``frame`` shrunk to about ``pixels`` pixels, its faces mapped back to the frame's pixels."""
        h, w = frame.shape[:2]
        s = math.sqrt(pixels / (h * w))
        sw, sh = max(2, int(w * s)), max(2, int(h * s))
        faces = run(cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA))
        faces[:, 0:14:2] *= w / sw  # x, w and the landmarks' x
        faces[:, 1:14:2] *= h / sh
        return faces

    def detect(self, frame: np.ndarray) -> Detections:
        """Faces in a BGR frame (HxWx3 uint8; grey and BGRA are converted), best score first."""
        frame = check_image(frame)
        if frame.shape[0] < 2 or frame.shape[1] < 2:
            raise EdgefaceError(f"frame of shape {frame.shape} is empty")
        k = 1
        if self.upscale_below and max(frame.shape[:2]) < self.upscale_below:
            k = int(math.ceil(self.upscale_below / max(frame.shape[:2])))
            frame = cv2.resize(frame, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
        if self.pad == "auto":
            faces = self._run(frame)
            for p in (0.25, 0.5):
                if len(faces):
                    break
                faces = self._run_padded(frame, p)
        else:
            faces = self._run_padded(frame, float(self.pad))
        if k > 1:
            faces[:, :14] /= k
        det = Detections(faces[:, :4].copy(), faces[:, 4:14].reshape(-1, 5, 2).copy(), faces[:, 14].copy())
        if len(det) and self.min_size > 0:
            det = det.take(np.flatnonzero(np.minimum(det.boxes[:, 2], det.boxes[:, 3]) >= self.min_size))
        if len(det):
            det = det.take(np.argsort(-det.scores, kind="stable"))
        if len(det) and self.largest_only:
            det = det.take([int(np.argmax(det.boxes[:, 2] * det.boxes[:, 3]))])
        return det

    def model_boxes(self, det: Detections) -> np.ndarray:
        """(N, 4) boxes in the convention the model was trained on (see the module docstring)."""
        if self.coef is not None:
            return apply_map(self.coef, det.boxes, det.landmarks)
        b = det.boxes.astype(np.float64)
        side = np.maximum(b[:, 2], b[:, 3])
        c = b[:, :2] + b[:, 2:] / 2
        return np.stack([c[:, 0] - side / 2, c[:, 1] - side / 2, side, side], axis=1).astype(np.float32)

    def crop_faces(self, frame: np.ndarray, spec) -> tuple[Detections, np.ndarray, np.ndarray]:
        """(detections, crop boxes, crops) of every face in ``frame``: THE crop rule for full frames (detect,
        map to the training box convention, ``crop_face``), shared by Predictor.predict_frame, bench --frames
        and quantize's calibration from full frames. Crops are (N, S, S, 3) uint8, N = 0 without a face."""
        from ..core.preprocess import crop_face

        det = self.detect(frame)
        if not len(det):
            s = spec.input_size
            return det, np.zeros((0, 4), np.float32), np.zeros((0, s, s, 3), np.uint8)
        boxes = self.model_boxes(det)
        return det, boxes, np.stack([crop_face(frame, b, spec) for b in boxes])

    def info(self) -> dict:
        how = "onnxruntime, OpenCV's decode and NMS" if self.engine == "onnxruntime" else "cv2.FaceDetectorYN"
        return {"detector": f"yunet ({how})", "engine": self.engine, "model": self.model.name,
                "score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold,
                "largest_only": self.largest_only, "min_size": self.min_size, "pad": self.pad,
                "upscale_below": self.upscale_below,
                "box_map": self.coef is not None}


def quiet_opencv(make):
    """Run ``make`` with OpenCV's log at ERROR: its DNN module prints a WARN line to stderr when the detector is
    made ("Targets are not supported by the new graph engine"), which would break one-line error output."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        return make()
    old = logging.getLogLevel()
    logging.setLogLevel(min(old, logging.LOG_LEVEL_ERROR))
    try:
        return make()
    finally:
        logging.setLogLevel(old)
