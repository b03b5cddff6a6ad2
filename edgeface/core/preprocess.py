"""The one crop and preprocess path: training, calibration, evaluation and inference all call these.

crop_face: a face box in an image -> the square uint8 BGR crop the spec's crop rule defines
           (optionally with the augmentation transform training uses: scale, shift, rotation, flip).
to_input:  uint8 BGR crops (N, H, W, 3) -> float32 NCHW in the spec's channel order, normalised.
with_mirrors / mirror_mean: a spec's ``mirror_average``: the crops and their mirror images in one batch, and
           the answers for that batch as one answer per face.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from .errors import EdgefaceError
from .limits import MAX_BOX_COORD
from .spec import ModelSpec

_BORDERS = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}


def crop_matrix(box: Sequence[float], spec: ModelSpec, size: int | None = None, *, scale: float = 1.0,
                shift: tuple[float, float] = (0.0, 0.0), angle_deg: float = 0.0, flip: bool = False) -> np.ndarray:
    """2x3 affine matrix mapping source pixels to the output crop.

    ``scale``/``shift`` jitter the square (shift in units of the square's side), ``angle_deg`` rotates the
    *image content* clockwise by that angle (so a head's roll grows by about that much), ``flip`` mirrors.
    """
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x, y, w, h)):
        raise EdgefaceError(f"face box {tuple(box)} has no area; boxes are (x, y, w, h) with w, h > 0")
    rule = spec.crop
    out = int(size or spec.input_size)
    side = rule.scale * max(w, h) * scale
    cx = x + w / 2 + rule.shift_x * w + shift[0] * side
    cy = y + h / 2 + rule.shift_y * h + shift[1] * side
    k = out / side
    # Image y points down, so a clockwise rotation on screen is a positive angle in cv2's convention
    # negated; getRotationMatrix2D rotates counter-clockwise for positive angles.
    t = math.radians(-angle_deg)
    c, s = math.cos(t) * k, math.sin(t) * k
    # dst = R*k*(src - centre) + out/2 ; cv2's matrix for angle a (ccw on screen): [[c, s], [-s, c]]
    m = np.array([[c, s, 0.0], [-s, c, 0.0]], dtype=np.float64)
    m[:, 2] = np.array([out / 2, out / 2]) - m[:, :2] @ np.array([cx, cy])
    if flip:
        m[0] = -m[0]
        m[0, 2] += out
    return m


def crop_face(image: np.ndarray, box: Sequence[float], spec: ModelSpec, size: int | None = None,
              **transform) -> np.ndarray:
    """Square crop of one face, uint8 HxWx3 BGR, ``size`` (default the spec's input size) on a side."""
    image = check_image(image)
    check_box(box, image.shape)
    out = int(size or spec.input_size)
    m = crop_matrix(box, spec, out, **transform)
    side_px = out / math.hypot(m[0, 0], m[0, 1])
    # Shrinking by more than 2x with bilinear sampling aliases: pre-blur like INTER_AREA would.
    interp = cv2.INTER_AREA if side_px > 2 * out and not transform.get("angle_deg") else cv2.INTER_LINEAR
    if interp == cv2.INTER_AREA:
        return _area_crop(image, m, out, spec)
    return cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_LINEAR,
                          borderMode=_BORDERS[spec.crop.border], borderValue=(0, 0, 0))


def context_crop(image: np.ndarray, box: Sequence[float], spec: ModelSpec, context: float) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """A crop ``context`` times wider than the model's, centred like it, and the face box in its pixels.

    Training caches these once per face (or rendered view), so augmentation is a cheap warp of the cache
    through ``crop_face`` with the box returned here.
    """
    size = int(round(spec.input_size * context))
    wide = _context_spec(spec, context)
    x, y, w, h = (float(v) for v in box)
    crop = crop_face(image, box, wide, size)
    k = size / (wide.crop.scale * max(w, h))  # cache pixels per source pixel; the cache is centred on the box
    c = size / 2
    inner = np.array([c - w * k / 2 - spec.crop.shift_x * w * k, c - h * k / 2 - spec.crop.shift_y * h * k,
                      w * k, h * k], np.float32)
    return crop, inner


def _context_spec(spec: ModelSpec, context: float) -> ModelSpec:
    from dataclasses import replace

    return replace(spec, crop=replace(spec.crop, scale=spec.crop.scale * context))


def context_matrix(box: Sequence[float], spec: ModelSpec, context: float) -> np.ndarray:
    """The 2x3 affine matrix from source pixels to the pixels of ``context_crop(image, box, spec, context)``."""
    return crop_matrix(box, _context_spec(spec, context), int(round(spec.input_size * context)))


def _area_crop(image: np.ndarray, m: np.ndarray, out: int, spec: ModelSpec) -> np.ndarray:
    # Axis-aligned crop (no rotation): cut the square with padding, then resize with INTER_AREA.
    k = math.hypot(m[0, 0], m[0, 1])
    flip = m[0, 0] < 0
    side = out / k
    if flip:
        x0 = (m[0, 2] - out) / k
    else:
        x0 = -m[0, 2] / k
    y0 = -m[1, 2] / k
    x0i, y0i, s = int(round(x0)), int(round(y0)), max(1, int(round(side)))
    h, w = image.shape[:2]
    pad = [max(0, -y0i), max(0, y0i + s - h), max(0, -x0i), max(0, x0i + s - w)]
    if any(pad) and s * s * 3 > _MAX_PADDED_BYTES:
        res = _clipped_area_crop(image, x0i, y0i, s, out, spec)
    elif any(pad):
        image = cv2.copyMakeBorder(image, *pad, _BORDERS[spec.crop.border], value=(0, 0, 0))
        x0i += pad[2]
        y0i += pad[0]
    if not (any(pad) and s * s * 3 > _MAX_PADDED_BYTES):
        sq = image[y0i:y0i + s, x0i:x0i + s]
        res = cv2.resize(sq, (out, out), interpolation=cv2.INTER_AREA)
    return res[:, ::-1].copy() if flip else res


# A crop square reaching past the image is padded then resized while the padded square stays small (the
# exact path every ordinary face near a frame edge takes). Beyond this, only the part inside the image is
# resized, straight to its place in the output, and the output is padded: memory stays O(image + crop)
# whatever the box (a 40000-pixel box used to pad a 4.8 GB square).
_MAX_PADDED_BYTES = 64 << 20


def _clipped_area_crop(image: np.ndarray, x0: int, y0: int, s: int, out: int, spec: ModelSpec) -> np.ndarray:
    h, w = image.shape[:2]
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    k = out / s

    def place(a: int, b: int) -> tuple[int, int]:
        lo = min(out - 1, max(0, int(round(a * k))))
        return lo, max(lo + 1, min(out, int(round(b * k))))

    ox0, ox1 = place(ix0 - x0, ix1 - x0)
    oy0, oy1 = place(iy0 - y0, iy1 - y0)
    part = cv2.resize(image[iy0:iy1, ix0:ix1], (ox1 - ox0, oy1 - oy0), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(part, oy0, out - oy1, ox0, out - ox1, _BORDERS[spec.crop.border], value=(0, 0, 0))


def check_box(box, image_shape) -> tuple[float, float, float, float]:
    """One face box (x, y, w, h) in pixels: four finite numbers, w and h > 0, no side or coordinate beyond
    ``MAX_BOX_COORD``, overlapping the image (a box entirely outside it has no face to answer for)."""
    try:
        x, y, bw, bh = (float(v) for v in box)
    except (TypeError, ValueError):
        raise EdgefaceError(f"a face box must be four numbers x, y, w, h in pixels, got {_box_text(box)}") from None
    if not all(math.isfinite(v) for v in (x, y, bw, bh)) or not (bw > 0 and bh > 0):
        raise EdgefaceError(f"face box {_box_text(box)} has no area; boxes are (x, y, w, h) with finite w, h > 0")
    if max(abs(x), abs(y), bw, bh) > MAX_BOX_COORD:
        raise EdgefaceError(f"face box {_box_text(box)} has a coordinate or side beyond {MAX_BOX_COORD:.0f} pixels; "
                            f"boxes are (x, y, w, h) in the image's pixels")
    h, w = image_shape[:2]
    if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        raise EdgefaceError(f"face box {_box_text(box)} lies entirely outside the {w}x{h} image; "
                            f"boxes are (x, y, w, h) in the image's pixels")
    return x, y, bw, bh


def _box_text(box) -> str:
    try:
        return "(" + ", ".join(f"{float(v):.6g}" for v in box) + ")"
    except (TypeError, ValueError):
        from .limits import short
        return short(box)


def check_boxes(boxes) -> np.ndarray:
    """Boxes as the API takes them (an (N, 4) array or a list of 4-sequences; one box alone is fine) ->
    float64 (N, 4). Values are checked per box, against the image, by ``check_box``."""
    if isinstance(boxes, (dict, str, bytes, set)):
        raise EdgefaceError(f"boxes must be an (N, 4) array of x, y, w, h, got a {type(boxes).__name__}")
    import warnings

    try:
        with warnings.catch_warnings():  # complex boxes would lose their imaginary part without a word
            warnings.simplefilter("error", getattr(np, "exceptions", np).ComplexWarning)
            b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, getattr(np, "exceptions", np).ComplexWarning):
        raise EdgefaceError("boxes must be an (N, 4) array of numbers x, y, w, h in pixels") from None
    if b.size == 0:
        return np.zeros((0, 4), np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise EdgefaceError(f"boxes have shape {np.shape(boxes)}; expected (N, 4) x, y, w, h in pixels")
    return b


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x, y, w, h boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise EdgefaceError(f"expected a numpy image, got {type(image).__name__}; load it with cv2.imread")
    if image.dtype != np.uint8:  # before any cv2 call: OpenCV raises its own multi-line error on other depths
        raise EdgefaceError(f"image dtype is {image.dtype}; expected uint8 (0..255 BGR)")
    if image.ndim == 2 and image.size:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise EdgefaceError(f"image has shape {image.shape}; expected HxWx3 uint8 BGR")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise EdgefaceError(f"image has shape {image.shape}, no pixels; expected HxWx3 uint8 BGR")
    if image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.dtype != np.uint8:
        raise EdgefaceError(f"image dtype is {image.dtype}; expected uint8 (0..255 BGR)")
    return image


def read_image(path) -> np.ndarray:
    """An image file as BGR uint8, with a clear error for a missing, undecodable or oversized file.

    The bytes are read here and decoded with ``cv2.imdecode``: OpenCV never sees the path (a name that is not
    UTF-8 crashed ``cv2.imread``), and the header's width x height is checked before decoding, for every
    format this OpenCV decodes (``image_format_and_size``); a format the check does not know is refused, not
    decoded, so a small file declaring a gigapixel image (PNG, JPEG, Radiance HDR, EXR, ...) never is."""
    import os

    from .limits import MAX_IMAGE_PIXELS

    if not os.path.exists(path):
        raise EdgefaceError(f"image {path} does not exist")
    if os.path.isdir(path):
        raise EdgefaceError(f"image {path} is a folder; pass image files")
    if not os.path.isfile(path):  # a FIFO or a device: opening it would wait (or read) forever
        raise EdgefaceError(f"image {path} is not a regular file; pass image files")
    if os.path.getsize(path) > MAX_IMAGE_FILE_BYTES:
        raise EdgefaceError(f"image {path} is {os.path.getsize(path) / 2**30:.1f} GiB, larger than any image "
                            f"edgeface reads; resize it or remove it")
    with open(path, "rb") as fh:
        data = fh.read(MAX_IMAGE_FILE_BYTES + 1)
    fmt, size = image_format_and_size(data)
    if fmt is None:
        raise EdgefaceError(f"image {path} is not in a format edgeface reads ({', '.join(IMAGE_FORMATS)}); "
                            f"convert it or remove it")
    if size is None:
        raise EdgefaceError(f"image {path} ({fmt}) has a header that gives no width and height (corrupt?); "
                            f"re-save it or remove it")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise EdgefaceError(f"image {path} declares {size[0]} x {size[1]} pixels, more than the "
                            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP edgeface reads (a decompression bomb, or a corrupt "
                            f"header); resize it or remove it")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own size limit and decoder assertions: a multi-line message of its own
        img = None
    if img is None:
        raise EdgefaceError(f"image {path} cannot be decoded (corrupt or not an image); remove or replace it")
    return img


MAX_IMAGE_FILE_BYTES = 1 << 30  # an uncompressed 134 MP BGR image is 400 MB
# Every format this OpenCV build decodes, each with a header check of its width x height.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WebP", "TIFF", "PNM/PAM/PFM", "Radiance HDR", "OpenEXR",
                 "JPEG 2000", "Sun raster", "AVIF")


def image_header_size(path) -> tuple[int, int] | None:
    """(width, height) from the header of an image file (see ``image_format_and_size``); None for a format
    edgeface does not read or a header that gives no size."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_IMAGE_FILE_BYTES + 1)
    except OSError:
        return None
    return image_format_and_size(data)[1]


def image_format_and_size(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """(format, (width, height)) sniffed from an image file's bytes, by content, never by extension: a
    Radiance HDR renamed .jpg is still checked as HDR. (None, None) for content that is none of
    ``IMAGE_FORMATS``; (format, None) when the header gives no size."""
    import io
    import struct

    head = data[:32]
    sniffers = (
        (lambda: head[:8] == b"\x89PNG\r\n\x1a\n", "PNG", lambda: struct.unpack(">II", head[16:24])),
        (lambda: head[:6] in (b"GIF87a", b"GIF89a"), "GIF", lambda: struct.unpack("<HH", head[6:10])),
        (lambda: head[:2] == b"BM", "BMP", lambda: tuple(abs(v) for v in struct.unpack("<ii", head[18:26]))),
        (lambda: head[:4] == b"RIFF" and head[8:12] == b"WEBP", "WebP", lambda: _webp_size(head, io.BytesIO(data))),
        (lambda: head[:4] in (b"II*\x00", b"MM\x00*"), "TIFF", lambda: _tiff_size(head[:2], io.BytesIO(data))),
        (lambda: head[:2] == b"\xff\xd8", "JPEG", lambda: _jpeg_size(io.BytesIO(data))),
        (lambda: head[:1] == b"P" and head[1:2] in b"1234567fF" and len(head) > 2 and head[2:3].isspace(),
         "PNM/PAM/PFM", lambda: _pnm_size(data)),
        (lambda: head.startswith((b"#?RADIANCE", b"#?RGBE")), "Radiance HDR", lambda: _radiance_size(data)),
        (lambda: head[:4] == b"\x76\x2f\x31\x01", "OpenEXR", lambda: _exr_size(data)),
        (lambda: head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51", "JPEG 2000",
         lambda: _jpeg2000_size(data)),
        (lambda: head[:4] == b"\x59\xa6\x6a\x95", "Sun raster", lambda: struct.unpack(">II", head[4:12])),
        (lambda: head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"),
         "AVIF", lambda: _isobmff_size(data)),
    )
    for matches, fmt, size in sniffers:
        if matches():
            try:
                wh = size()
            except (struct.error, ValueError, IndexError, OverflowError):
                wh = None
            if wh is None or len(wh) != 2 or min(wh) < 1:
                return fmt, None
            return fmt, (int(wh[0]), int(wh[1]))
    return None, None


def _header_tokens(data: bytes, limit: int = 4096) -> list[bytes]:
    """Whitespace-separated tokens of a text header with '#' comments removed (PNM, PFM)."""
    text = b"\n".join(line.split(b"#", 1)[0] for line in data[:limit].split(b"\n"))
    return text.split()


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    if data[1:2] == b"7":  # PAM: WIDTH / HEIGHT lines up to ENDHDR
        fields = {}
        for line in data[:4096].split(b"\n")[1:]:
            parts = line.split()
            if parts[:1] == [b"ENDHDR"]:
                break
            if len(parts) == 2:
                fields[parts[0]] = parts[1]
        w, h = fields.get(b"WIDTH"), fields.get(b"HEIGHT")
        return (int(w), int(h)) if w and h and w.isdigit() and h.isdigit() else None
    tokens = _header_tokens(data)
    if len(tokens) >= 3 and tokens[1].isdigit() and tokens[2].isdigit():
        return int(tokens[1]), int(tokens[2])
    return None


def _radiance_size(data: bytes) -> tuple[int, int] | None:
    """Radiance RGBE: header lines, an empty line, then the resolution line ``-Y H +X W`` (or any of the
    eight orientations, e.g. ``+X W -Y H``)."""
    end = data.find(b"\n\n", 0, 1 << 16)
    if end < 0:
        return None
    line = data[end + 2:end + 2 + 64].split(b"\n", 1)[0].split()
    if len(line) != 4:
        return None
    dims = {}
    for axis, value in ((line[0], line[1]), (line[2], line[3])):
        if axis[1:2] not in (b"X", b"Y") or axis[:1] not in (b"+", b"-") or not value.isdigit():
            return None
        dims[axis[1:2]] = int(value)
    return (dims[b"X"], dims[b"Y"]) if len(dims) == 2 else None


def _exr_size(data: bytes) -> tuple[int, int] | None:
    """OpenEXR: the header's attributes (name, type, size, value) up to an empty name; ``dataWindow`` (box2i)
    gives the size. A multi-part file is checked by its largest part."""
    import struct

    pos, best = 8, None
    for _ in range(1024):
        if pos >= min(len(data), 1 << 20):
            break
        if data[pos:pos + 1] == b"\x00":  # end of one part's header (multi-part: another may follow)
            pos += 1
            if data[pos:pos + 1] == b"\x00" or pos >= len(data):
                break
            continue
        name_end = data.index(b"\x00", pos)
        type_end = data.index(b"\x00", name_end + 1)
        name, size = data[pos:name_end], struct.unpack("<i", data[type_end + 1:type_end + 5])[0]
        value = data[type_end + 5:type_end + 5 + size]
        if name == b"dataWindow" and size == 16:
            x0, y0, x1, y1 = struct.unpack("<iiii", value)
            wh = (x1 - x0 + 1, y1 - y0 + 1)
            best = wh if best is None or wh[0] * wh[1] > best[0] * best[1] else best
        if size < 0:
            return None
        pos = type_end + 5 + size
    return best


def _jpeg2000_size(data: bytes) -> tuple[int, int] | None:
    import struct

    if data[:4] == b"\xff\x4f\xff\x51":  # a raw codestream: SIZ right after SOC
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
        return xsiz - xo, ysiz - yo
    i = data.find(b"ihdr", 0, 1 << 16)  # JP2: the image header box inside jp2h
    if i < 0:
        return None
    h, w = struct.unpack(">II", data[i + 4:i + 12])
    return w, h


def _isobmff_size(data: bytes) -> tuple[int, int] | None:
    """AVIF/HEIF: the largest image spatial extent (``ispe``) property; a grid's canvas is one of them."""
    import struct

    best, i = None, data.find(b"ispe", 0, 1 << 20)
    while i >= 0:
        w, h = struct.unpack(">II", data[i + 8:i + 16])
        best = (w, h) if best is None or w * h > best[0] * best[1] else best
        i = data.find(b"ispe", i + 4, 1 << 20)
    return best


def _jpeg_size(fh) -> tuple[int, int] | None:
    """The first start-of-frame marker's size; segments are skipped by their lengths (EXIF can be 64 kB)."""
    import struct

    fh.seek(2)
    for _ in range(1000):  # a JPEG has a few dozen segments before its frame header
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind == 0xFF:  # fill byte
            fh.seek(-1, 1)
            continue
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:  # markers without a length
            continue
        seg = fh.read(2)
        if len(seg) < 2:
            return None
        length = struct.unpack(">H", seg)[0]
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            body = fh.read(5)
            if len(body) < 5:
                return None
            h, w = struct.unpack(">HH", body[1:5])
            return w, h
        fh.seek(length - 2, 1)
    return None


def _webp_size(head: bytes, fh) -> tuple[int, int] | None:
    import struct

    fh.seek(12)
    chunk = fh.read(30)
    kind = chunk[:4]
    if kind == b"VP8X" and len(chunk) >= 18:
        w = int.from_bytes(chunk[12:15], "little") + 1
        h = int.from_bytes(chunk[15:18], "little") + 1
        return w, h
    if kind == b"VP8L" and len(chunk) >= 13:
        bits = int.from_bytes(chunk[9:13], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(chunk) >= 18:
        w, h = struct.unpack("<HH", chunk[14:18])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff_size(order: bytes, fh) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first IFD."""
    import struct

    e = "<" if order == b"II" else ">"
    fh.seek(4)
    offset = struct.unpack(e + "I", fh.read(4))[0]
    fh.seek(offset)
    count = struct.unpack(e + "H", fh.read(2))[0]
    found: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        entry = fh.read(12)
        if len(entry) < 12:
            break
        tag, typ = struct.unpack(e + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(e + "H", entry[8:10])[0] if typ == 3 else struct.unpack(e + "I", entry[8:12])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def check_crops(crops, spec: ModelSpec, rgb: bool = False) -> np.ndarray:
    """One crop, a list of crops, or an (N, H, W, 3) array -> contiguous uint8 (N, S, S, 3) BGR batch."""
    from .limits import check_batch

    s = spec.input_size
    if isinstance(crops, (list, tuple)):
        if len(crops) == 0:
            raise EdgefaceError("empty batch: pass at least one crop")
        check_batch(len(crops), s, "number of crops")  # before stacking: the float copies of 1e5 crops are 60 GB
        crops = [_one_crop(c, s) for c in crops]
        batch = np.stack(crops)
    elif isinstance(crops, np.ndarray):
        if crops.ndim == 3:
            batch = _one_crop(crops, s)[None]
        elif crops.ndim == 4:
            if crops.shape[0] == 0:
                raise EdgefaceError("empty batch: pass at least one crop")
            check_batch(crops.shape[0], s, "number of crops")
            if crops.shape[3] != 3:
                raise EdgefaceError(f"crops have shape {crops.shape}; expected (N, H, W, 3) uint8 BGR")
            batch = crops if crops.shape[1:3] == (s, s) else np.stack([_one_crop(c, s) for c in crops])
        else:
            raise EdgefaceError(f"crops have shape {crops.shape}; expected (H, W, 3) or (N, H, W, 3) uint8 BGR")
    else:
        raise EdgefaceError(f"crops must be a numpy array or a list of arrays, got {type(crops).__name__}")
    if batch.dtype != np.uint8:
        raise EdgefaceError(f"crops have dtype {batch.dtype}; expected uint8 0..255 (convert with .astype(np.uint8))")
    if rgb:
        batch = batch[..., ::-1]
    return np.ascontiguousarray(batch)


def _one_crop(c, s: int) -> np.ndarray:
    if not isinstance(c, np.ndarray) or c.ndim != 3 or c.shape[2] != 3:
        shape = getattr(c, "shape", type(c).__name__)
        raise EdgefaceError(f"a crop has shape {shape}; expected (H, W, 3) uint8 BGR")
    if c.dtype != np.uint8:
        raise EdgefaceError(f"a crop has dtype {c.dtype}; expected uint8 0..255")
    if c.shape[0] < 1 or c.shape[1] < 1:
        raise EdgefaceError(f"a crop has shape {c.shape}, no pixels; expected (H, W, 3) uint8 BGR")
    if c.shape[:2] != (s, s):
        c = cv2.resize(c, (s, s), interpolation=cv2.INTER_AREA if c.shape[0] > s else cv2.INTER_LINEAR)
    return c


def input_affine(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(scale, bias, channel_index): input[c] = bgr[..., idx[c]] * scale[c] + bias[c]."""
    idx = [2, 1, 0] if spec.channel_order.upper() == "RGB" else [0, 1, 2]
    scale = (1.0 / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
    bias = (-np.asarray(spec.mean, dtype=np.float32) * scale).astype(np.float32)
    return scale, bias, idx


def to_input(batch_bgr: np.ndarray, spec: ModelSpec, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (N, S, S, 3) BGR -> float32 (N, 3, S, S), channel order and normalisation from the spec."""
    n, h, w, _ = batch_bgr.shape
    if out is None:
        out = np.empty((n, 3, h, w), dtype=np.float32)
    scale, bias, idx = input_affine(spec)
    for c, src in enumerate(idx):
        np.multiply(batch_bgr[..., src], scale[c], out=out[:, c], dtype=np.float32)
        out[:, c] += bias[c]
    return out


# faces.pose.flip_pose as a sign per angle: a mirrored face's yaw and roll change sign, its pitch stays
MIRROR_SIGNS = np.array([-1.0, 1.0, -1.0], np.float32)


def mirrored(crops: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3): the crops' horizontal mirror images, written into ``out`` when given (a C-contiguous array of
    the same shape)."""
    n, h, w, c = crops.shape
    out = np.empty_like(crops) if out is None else out
    # The crops' rows stacked as one (N*H, W, C) image: one cv2.flip mirrors every row, 15-20x faster than
    # numpy's copy of a negative-stride view (60 us of a 0.5 ms model call for one crop)
    cv2.flip(np.ascontiguousarray(crops).reshape(n * h, w, c), 1, dst=out.reshape(n * h, w, c))
    return out


def with_mirrors(crops: np.ndarray) -> np.ndarray:
    """(2N, H, W, 3): the N crops (N, H, W, 3), then their horizontal mirror images, as one batch."""
    n = crops.shape[0]
    out = np.empty((2 * n, *crops.shape[1:]), crops.dtype)
    out[:n] = crops
    mirrored(crops, out=out[n:])
    return out


def fed_to_network(crops: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The crops the network is fed for these faces: with their mirror images when the spec's ``mirror_average``
    says so (what calibration statistics must cover)."""
    return with_mirrors(crops) if spec.mirror_average else crops


def mirror_mean(blur: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The answers for ``with_mirrors`` rows (blur (2N,), pose (2N, 3) degrees) as N answers: each face's mean
    of its own answer and its mirror image's answer with yaw and roll turned back.

    The mean of the angles, not of the rotations: on the dev photos of AFLW2000-3D it was the closer of the two
    (5.46 vs 5.50 deg, docs/experiments.md), and a face's two readings sit far from the wrap at 180 deg."""
    n = blur.shape[0] // 2
    return (blur[:n] + blur[n:]) * 0.5, (pose[:n] + pose[n:] * MIRROR_SIGNS) * 0.5
