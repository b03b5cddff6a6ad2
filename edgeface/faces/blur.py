"""Synthetic blur and its label.

Label definition (documented in the README): a blur kernel's strength is its equivalent Gaussian sigma
``s`` — the root-mean-square of the PSF's standard deviations along the two image axes,
s = sqrt((var_x + var_y) / 2), rotation invariant — measured in pixels of the model's 112 px crop, i.e.
relative to the face's size. Gaussian sigma g -> s = g; defocus disk of radius r -> s = r / 2; linear motion
of length L -> s = L / sqrt(24) (all its spread lies along one axis, detail across it survives). The score is

    blur = 1 - exp(-s / S0),  S0 = 2.5 px

0 for a sharp source, monotonic in s, 0.33 at s = 1 px, 0.55 at 2 px, 0.80 at 4 px, 0.96 at 8 px.
JPEG compression and sensor noise are applied after the blur and do not change the label, so noise alone
never reads as blur.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

S0 = 2.5
KINDS = ("gaussian", "motion", "defocus")


def blur_label(sigma: float | np.ndarray) -> float | np.ndarray:
    return 1.0 - np.exp(-np.asarray(sigma, dtype=np.float64) / S0)


def sigma_for_label(label: float) -> float:
    return float(-S0 * math.log(max(1e-9, 1.0 - label)))


def _odd(n: float) -> int:
    n = int(math.ceil(n))
    return n + 1 - n % 2


def motion_kernel(sigma: float, angle_deg: float) -> np.ndarray:
    length = sigma * math.sqrt(24.0)  # RMS over both axes: variance L^2/12 along the motion, 0 across
    k = _odd(length + 3)
    ker = np.zeros((k, k), np.float32)
    c = (k - 1) / 2
    # Draw the segment with sub-pixel sampling so short lengths still give the right variance.
    ts = np.linspace(-length / 2, length / 2, max(2, int(length * 8)))
    a = math.radians(angle_deg)
    xs, ys = c + ts * math.cos(a), c + ts * math.sin(a)
    for x, y in zip(xs, ys):
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < k and 0 <= y0 + dy < k:
                ker[y0 + dy, x0 + dx] += wgt
    return ker / ker.sum()


def disk_kernel(sigma: float) -> np.ndarray:
    r = 2.0 * sigma
    k = _odd(2 * r + 3)
    c = (k - 1) / 2
    # Anti-aliased disk: supersample the indicator 4x4 per pixel.
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    yy, xx = np.mgrid[0:k, 0:k].astype(np.float32)
    acc = np.zeros((k, k), np.float32)
    for dy in sub:
        for dx in sub:
            acc += ((xx + dx - c) ** 2 + (yy + dy - c) ** 2 <= r * r)
    if acc.sum() == 0:
        acc[int(c), int(c)] = 1
    return acc / acc.sum()


def apply_blur(img: np.ndarray, kind: str, sigma: float, angle_deg: float = 0.0) -> np.ndarray:
    """Blur a crop with equivalent sigma ``sigma`` (pixels of this image)."""
    if sigma <= 0:
        return img
    if kind == "gaussian":
        return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    ker = motion_kernel(sigma, angle_deg) if kind == "motion" else disk_kernel(sigma)
    return cv2.filter2D(img, -1, ker, borderType=cv2.BORDER_REFLECT)


def degrade(img: np.ndarray, rng: np.random.Generator, jpeg_p: float = 0.5, noise_p: float = 0.4,
            max_noise: float = 8.0) -> np.ndarray:
    """Camera nuisances that are not blur: sensor noise, then JPEG compression."""
    if rng.random() < noise_p:
        sigma = rng.uniform(1.0, max_noise)
        if rng.random() < 0.5:  # colour noise
            noise = rng.normal(0, sigma, img.shape)
        else:  # luminance noise
            noise = np.repeat(rng.normal(0, sigma, img.shape[:2] + (1,)), 3, axis=2)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < jpeg_p:
        q = int(rng.integers(35, 96))
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    return img


def random_blur(img: np.ndarray, rng: np.random.Generator, p_sharp: float = 0.35,
                max_sigma: float = 8.0) -> tuple[np.ndarray, float]:
    """Blur with a random kind and strength; returns the image and its label."""
    if rng.random() < p_sharp:
        return img, 0.0
    # Uniform in label space spends equal effort on every part of the score range.
    label = rng.uniform(0.03, float(blur_label(max_sigma)))
    sigma = sigma_for_label(label)
    kind = KINDS[int(rng.integers(len(KINDS)))]
    return apply_blur(img, kind, sigma, float(rng.uniform(0, 180))), float(blur_label(sigma))


def sharpness(img: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: low for faces that are already soft."""
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())
