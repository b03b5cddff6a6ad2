"""FP32 training from a recipe: cached context crops, augmentation through the shared crop function,
masked multitask losses, rich progress, deterministic seeds, checkpoints and resume."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import EdgefaceError
from ..core.preprocess import context_crop, context_matrix, crop_face, mirror_mean, read_image, to_input, with_mirrors
from ..core.limits import short
from ..core.recipe import REQUIRED, load_yaml, read_csv_utf8, validate
from ..core.spec import CropRule, ModelSpec
from ..faces.blur import degrade, random_blur, sharpness
from ..faces.data import Sample, load_samples
from ..faces.evaluate import YAW_BINS
from ..faces.pose import rotate_pose
from .profiling import landmark_box

TRAIN_SCHEMA = {
    "kind": "train",
    "model": {"arch": "mobilenetv2", "width": 0.25, "input_size": 112, "crop_scale": 1.4, "version": "1.1.0",
              "pose_head": "euler",  # or "rot6d": a rotation decoded to Euler angles in the graph (network.py)
              # answer with the mean of the face's and its mirror image's answers (ModelSpec.mirror_average);
              # training sees single crops, and the per-epoch measurements answer as the runtime will
              "mirror_average": False,
              "terms": (str, None)},  # the weights' terms (those of the data they learn from), into every bundle
    "data": {
        "root": "../shared/data",
        "sets": REQUIRED,  # list of {name, weight}
        "split": "train",
        "val_split": "val",
        "limit": (int, None),  # per-set cap on samples (smoke runs)
        "centre_people": False,  # remove per-person rig offsets from training labels (data.person_offsets)
        "teacher_max_yaw": (float, None),  # mask teacher yaw/pitch labels wider than this (data.read_labels_csv)
        # Validation-only sets of real photos with 3D pose ground truth, measured every epoch; the first one
        # present picks best.pt. Never trained on. Sets missing under the data root are skipped.
        "dev_sets": ["aflw2000_dev"],
    },
    "train": {
        "epochs": 30, "epoch_size": 12000, "batch_size": 128, "lr": 0.003, "weight_decay": 0.0001,
        "warmup_epochs": 1.0, "seed": 0, "threads": 2, "workers": 1,
        "init": (str, None),  # start weights (a checkpoint path)
        "clip_grad": (float, None),  # clip the gradients' global norm (the Euler decode is steep near yaw 90)
        # Decay of an exponential moving average of the weights (and BatchNorm statistics), updated every step.
        # When set, the average is what each epoch measures and what best.pt and model.pt hold: the dev figure
        # moves between epochs at the peak learning rate (docs/experiments.md), and the average smooths that out.
        "ema": (float, None),
    },
    "augment": {
        "context": 1.6, "scale": [0.85, 1.2], "shift": 0.07, "rotate_deg": 30.0, "rotate_p": 0.5,
        "flip_p": 0.5, "grey_p": 0.15, "colour": 0.3, "blur_p": 0.65, "sharp_min": 80.0,
        "jpeg_p": 0.4, "noise_p": 0.35,
        "landmark_box_p": 0.0,  # share of crops framed by the face's landmark box (from its mesh) instead
        "occlude_p": 0.0,  # share of crops with a random occluding rectangle (train.occlude)
        "lowres_p": 0.0,  # share of crops shrunk to 20-56 px and back (train.low_resolution); no blur label
    },
    # Faces re-rendered at new head rotations from their meshes (render_bank); views 0 = off.
    "render": {
        "sets": ["utkface", "celeba"], "views": 0, "weight": 1.0, "max_source_yaw": 25.0, "max_source_pitch": 25.0,
        "yaw_min": 15.0, "yaw_max": 90.0, "pitch_p": 0.4, "pitch_delta": 25.0, "max_pitch": 45.0, "seed": 0,
    },
    # pose: smooth L1 on the Euler angles; geodesic: the angle between predicted and true rotation, on faces
    # with all three angles known (rot6d heads only); wide_yaw_weight: how many times a face whose true |yaw| is
    # at least WIDE_YAW counts in both pose losses (the widest bin is where real photos are furthest off)
    "loss": {"pose": 1.0, "blur": 1.0, "pose_beta": 2.0, "geodesic": 0.0, "wide_yaw_weight": 1.0},
    "out": "runs/mbv2_025",
}


def load_train_recipe(path) -> dict:
    raw = load_yaml(path)
    recipe = validate(raw, TRAIN_SCHEMA, f"recipe {path}")
    if recipe["kind"] != "train":
        raise EdgefaceError(f"recipe {path}: field 'kind' is {recipe['kind']!r}; use `edgeface train` with a "
                            f"'train' recipe (QAT recipes have kind 'qat')")
    check_data_sections(recipe, f"recipe {path}")
    check_ranges(recipe, f"recipe {path}")
    spec_from_recipe(recipe)  # the model section makes a valid ModelSpec
    return recipe


def check_data_sections(recipe: dict, where: str) -> None:
    """The checks FP32 and QAT recipes share: data.sets entries (defaults filled in), render, augment."""
    sets = recipe["data"]["sets"]
    if not isinstance(sets, list) or not sets:
        raise EdgefaceError(f"{where}: field 'data.sets' must be a non-empty list of {{name, weight}}")
    for i, s in enumerate(sets):
        if not isinstance(s, dict):
            raise EdgefaceError(f"{where}: field 'data.sets[{i}]' must be a mapping {{name, weight}}")
        sets[i] = validate(s, {"name": REQUIRED, "weight": 1.0}, where, f"data.sets[{i}].")
    dev = recipe["data"].get("dev_sets", [])
    if not isinstance(dev, list) or not all(isinstance(d, str) and d for d in dev):
        raise EdgefaceError(f"{where}: field 'data.dev_sets' must be a list of set names (folders under data.root)")
    trained_on = sorted(set(dev) & {s["name"] for s in sets})
    if trained_on:  # a model selected on a set it learned from reports a figure that means nothing
        raise EdgefaceError(f"{where}: {', '.join(trained_on)} is in both data.sets and data.dev_sets; a dev set "
                            f"chooses between models and is never trained on: remove it from data.sets")
    r = recipe["render"]
    if r["views"] < 0 or r["weight"] < 0 or not 0 <= r["yaw_min"] <= r["yaw_max"] <= 90 or not r["sets"]:
        raise EdgefaceError(f"{where}: fields 'render.*' need views >= 0, weight >= 0, "
                            f"0 <= yaw_min <= yaw_max <= 90 and a non-empty sets list")
    if recipe["augment"]["context"] < 1.0:
        raise EdgefaceError(f"{where}: field 'augment.context' must be >= 1.0")


def _in(value, lo, hi) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi


def check_ranges(recipe: dict, where: str) -> None:
    """Every number of a train recipe in its range (types were checked by the schema): one line naming the
    field, before any data is read."""
    from ..core.limits import max_threads

    t, a, loss = recipe["train"], recipe["augment"], recipe["loss"]
    rules = [
        ("train.epochs", t["epochs"], 1, 100000), ("train.epoch_size", t["epoch_size"], 1, 10**9),
        ("train.batch_size", t["batch_size"], 1, 65536), ("train.lr", t["lr"], 1e-12, 10.0),
        ("train.weight_decay", t["weight_decay"], 0.0, 1.0), ("train.warmup_epochs", t["warmup_epochs"], 0.0, 1e5),
        ("train.threads", t["threads"], 1, max_threads()), ("train.workers", t["workers"], 0, max_threads()),
        ("train.seed", t["seed"], 0, 2**32 - 1),
        ("augment.shift", a["shift"], 0.0, 1.0), ("augment.rotate_deg", a["rotate_deg"], 0.0, 180.0),
        ("augment.context", a["context"], 1.0, 4.0), ("augment.colour", a["colour"], 0.0, 1.0),
        ("augment.sharp_min", a["sharp_min"], 0.0, 1e9),
        ("loss.pose", loss["pose"], 0.0, 1e6), ("loss.blur", loss["blur"], 0.0, 1e6),
        ("loss.pose_beta", loss["pose_beta"], 1e-6, 1e6), ("loss.geodesic", loss["geodesic"], 0.0, 1e6),
        ("loss.wide_yaw_weight", loss["wide_yaw_weight"], 1e-6, 1e6),
        ("render.weight", recipe["render"]["weight"], 0.0, 1e6),
    ]
    rules += [(f"augment.{k}", a[k], 0.0, 1.0) for k in a if k.endswith("_p")]
    for i, st in enumerate(recipe["data"]["sets"]):
        rules.append((f"data.sets[{i}].weight", st["weight"], 0.0, 1e6))
    if recipe["data"]["limit"] is not None:
        rules.append(("data.limit", recipe["data"]["limit"], 1, 10**9))
    if t.get("clip_grad") is not None:
        rules.append(("train.clip_grad", t["clip_grad"], 1e-6, 1e6))
    if t.get("ema") is not None:
        rules.append(("train.ema", t["ema"], 0.5, 0.99999))
    for name, value, lo, hi in rules:
        if not _in(value, lo, hi):
            raise EdgefaceError(f"{where}: field '{name}' must be a number from {lo:g} to {hi:g}, got {short(value)}")
    if not any(st["weight"] > 0 for st in recipe["data"]["sets"]):
        raise EdgefaceError(f"{where}: field 'data.sets' needs at least one set with weight > 0")
    sc = a["scale"]
    if not (isinstance(sc, list) and len(sc) == 2 and all(_in(v, 0.1, 10.0) for v in sc) and sc[0] <= sc[1]):
        raise EdgefaceError(f"{where}: field 'augment.scale' must be [low, high] with 0.1 <= low <= high <= 10, "
                            f"got {short(sc)}")


def bank_config(recipe: dict):
    """The recipe's ``render`` section as a render_bank.BankConfig (its training-only ``weight`` left out)."""
    from .render_bank import BankConfig

    r = dict(recipe["render"])
    r.pop("weight")
    r["sets"] = tuple(r["sets"])
    return BankConfig(**r, limit=recipe["data"]["limit"])


def spec_from_recipe(recipe: dict) -> ModelSpec:
    m = recipe["model"]
    try:
        return ModelSpec(input_size=m["input_size"], crop=CropRule(scale=m["crop_scale"]), arch=m["arch"],
                         width=m["width"], pose_head=m["pose_head"], mirror_average=m["mirror_average"],
                         model_version=m["version"]).validate()
    except EdgefaceError as e:
        raise EdgefaceError(str(e).replace("ModelSpec field", "recipe: model field").replace(
            "; re-export the artifact with `edgeface export`", "; fix the recipe")) from None


# ----------------------------------------------------------------------------------------------
# Context cache: every face once, cropped wider than the model sees, so augmentation is a cheap warp.
# ----------------------------------------------------------------------------------------------
class CropCache:
    """Context crops of every face (and rendered view) with their pose labels and sharpness."""

    def __init__(self, samples: list[Sample], spec: ModelSpec, context: float, progress=None, task=None,
                 meshes: dict | None = None):
        self.spec = spec
        self.context = context
        self.size = int(round(spec.input_size * context))
        self.images = np.empty((len(samples), self.size, self.size, 3), np.uint8)
        self.boxes = np.empty((len(samples), 4), np.float32)
        # The face's landmark box (profiling.landmark_box) in cache pixels where its mesh is known, else NaN.
        self.landmark_boxes = np.full((len(samples), 4), np.nan, np.float32)
        for i, s in enumerate(samples):
            self.images[i], self.boxes[i] = context_crop(read_image(s.path), s.box, spec, context)
            mesh = (meshes or {}).get(s.path)
            if mesh is not None:
                self.landmark_boxes[i] = landmark_box(mesh, context_matrix(s.box, spec, context))
            if progress is not None:
                progress.advance(task)
        self.poses = np.array([s.pose for s in samples], np.float32).reshape(-1, 3)
        self.sharp = np.array([sharpness(self.base_crop(i)) for i in range(len(samples))], np.float32)
        self.rendered = np.zeros(len(samples), bool)

    def add_rendered(self, images: np.ndarray, boxes: np.ndarray, poses: np.ndarray,
                     landmark_boxes: np.ndarray | None = None) -> None:
        """Append rendered views. They carry no blur label: resampling softens them by an unknown amount."""
        self.images = np.concatenate([self.images, images])
        self.boxes = np.concatenate([self.boxes, boxes.astype(np.float32)])
        if landmark_boxes is None:
            landmark_boxes = np.full((len(images), 4), np.nan, np.float32)
        self.landmark_boxes = np.concatenate([self.landmark_boxes, landmark_boxes.astype(np.float32)])
        self.poses = np.concatenate([self.poses, poses.astype(np.float32)])
        self.sharp = np.concatenate([self.sharp, np.full(len(images), -np.inf, np.float32)])
        self.rendered = np.concatenate([self.rendered, np.ones(len(images), bool)])

    def base_crop(self, i: int) -> np.ndarray:
        return crop_face(self.images[i], self.boxes[i], self.spec)

    def __len__(self):
        return len(self.images)


def colour_jitter(img: np.ndarray, rng: np.random.Generator, strength: float, grey_p: float) -> np.ndarray:
    f = img.astype(np.float32)
    if strength > 0:
        b = rng.uniform(-40, 40) * strength
        c = 1 + rng.uniform(-1, 1) * strength
        s = 1 + rng.uniform(-1, 1) * strength
        gains = 1 + rng.uniform(-0.15, 0.15, 3) * strength  # white balance
        grey = f.mean(axis=2, keepdims=True)
        f = grey + (f - grey) * s
        f = (f - 128) * c + 128 + b
        f = f * gains
    if rng.random() < grey_p:
        g = cv2.cvtColor(np.clip(f, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)
        return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    return np.clip(f, 0, 255).astype(np.uint8)


def occlude(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rectangle (15-50 % of each side) of solid colour or noise: hands, hair, microphones, glasses."""
    size = img.shape[0]
    h, w = (int(size * rng.uniform(0.15, 0.5)) for _ in range(2))
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    out = img.copy()
    if rng.random() < 0.5:
        out[y:y + h, x:x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    else:
        out[y:y + h, x:x + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return out


def low_resolution(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The face as a small photo shows it: down to 20-56 px, then back up."""
    size = img.shape[0]
    small = int(rng.integers(20, 57))
    down = cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA)
    return cv2.resize(down, (size, size), interpolation=cv2.INTER_LINEAR)


class AugmentedFaces:
    """torch-style dataset over a CropCache; item i is deterministic given (seed, epoch, i)."""

    def __init__(self, cache: CropCache, aug: dict, seed: int):
        self.cache, self.aug, self.seed, self.epoch = cache, aug, seed, 0

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        a, cache = self.aug, self.cache
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        yaw, pitch, roll = (float(v) for v in cache.poses[i])
        roll_known = not math.isnan(roll)
        angle = 0.0
        if a["rotate_p"] > 0 and rng.random() < a["rotate_p"] and not (math.isnan(yaw) or math.isnan(pitch)):
            angle = float(rng.uniform(-a["rotate_deg"], a["rotate_deg"]))
            yaw, pitch, roll = rotate_pose(yaw, pitch, roll if roll_known else 0.0, angle)
            if not roll_known:
                roll = math.nan
        flip = bool(rng.random() < a["flip_p"])
        if flip:
            yaw, roll = -yaw, -roll
        lo, hi = a["scale"]
        scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        shift = (float(rng.uniform(-a["shift"], a["shift"])), float(rng.uniform(-a["shift"], a["shift"])))
        box = cache.boxes[i]
        # Landmark boxes (brows to chin) as well as detector boxes: benchmarks and users crop from either.
        if a["landmark_box_p"] > 0 and rng.random() < a["landmark_box_p"] and np.isfinite(cache.landmark_boxes[i]).all():
            box = cache.landmark_boxes[i]
        img = crop_face(cache.images[i], box, cache.spec, scale=scale, shift=shift, angle_deg=angle, flip=flip)
        img = colour_jitter(img, rng, a["colour"], a["grey_p"])
        if a["occlude_p"] > 0 and rng.random() < a["occlude_p"]:
            img = occlude(img, rng)
        lowres = a["lowres_p"] > 0 and rng.random() < a["lowres_p"]
        if lowres:
            img = low_resolution(img, rng)
        blur = math.nan
        if lowres:
            pass  # a shrunk face's softness is not a blur label
        elif cache.sharp[i] >= a["sharp_min"]:  # already-soft faces carry no blur label
            if rng.random() < a["blur_p"]:
                img, blur = random_blur(img, rng, p_sharp=0.0)
            else:
                blur = 0.0
        elif cache.rendered[i] and rng.random() < a["blur_p"]:
            img, _ = random_blur(img, rng, p_sharp=0.0)  # robustness only: a render's own softness is unknown
        img = degrade(img, rng, a["jpeg_p"], a["noise_p"])
        return img, np.array([yaw, pitch, roll], np.float32), np.float32(blur)


def collate_batch(batch):
    """A DataLoader's collate_fn for AugmentedFaces items: (images, poses, blurs) as stacked numpy arrays."""
    imgs = np.stack([b[0] for b in batch])
    poses = np.stack([b[1] for b in batch])
    blurs = np.array([b[2] for b in batch], np.float32)
    return imgs, poses, blurs


def warmup_cosine(t: dict, steps_per_epoch: int):
    """Learning rate per step: linear warm-up over ``warmup_epochs``, then cosine to 0 (FP32 and QAT share it)."""
    total = steps_per_epoch * t["epochs"]
    warm = max(1, int(t["warmup_epochs"] * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warm:
            return t["lr"] * (step + 1) / warm
        return t["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return lr_at


WIDE_YAW = YAW_BINS[-1][0]  # degrees: where the benchmark's widest |yaw| bin starts


def face_weights(pose_t, wide_yaw_weight: float):
    """(N,) weight of each face in the pose losses: ``wide_yaw_weight`` where the true |yaw| >= WIDE_YAW, else 1."""
    import torch

    wide = torch.nan_to_num(pose_t[:, 0].abs(), nan=0.0) >= WIDE_YAW
    return torch.where(wide, torch.full_like(pose_t[:, 0], wide_yaw_weight), torch.ones_like(pose_t[:, 0]))


def masked_losses(blur_pred, pose_pred, blur_t, pose_t, beta: float, weights=None):
    """Smooth-L1 pose loss (degrees / 10) and BCE blur loss, each averaged over known labels only; ``weights``
    (N,) weighs each face's pose terms (a weighted mean)."""
    import torch
    import torch.nn.functional as F

    pose_mask = ~torch.isnan(pose_t)
    blur_mask = ~torch.isnan(blur_t)
    pose_loss = blur_pred.new_zeros(())
    blur_loss = blur_pred.new_zeros(())
    if pose_mask.any():
        d = (pose_pred[pose_mask] - pose_t[pose_mask]) / 10.0
        terms = F.smooth_l1_loss(d, torch.zeros_like(d), beta=beta / 10.0, reduction="none")
        w = torch.ones_like(terms) if weights is None else weights[:, None].expand_as(pose_t)[pose_mask]
        pose_loss = (terms * w).sum() / w.sum()
    if blur_mask.any():
        p = blur_pred.squeeze(1)[blur_mask].clamp(1e-6, 1 - 1e-6)
        blur_loss = F.binary_cross_entropy(p, blur_t[blur_mask])
    return pose_loss, blur_loss


def pose_matrices(poses):
    """(N, 3, 3) rotations of (N, 3) yaw, pitch, roll in degrees, as ``faces.pose.pose_to_matrix`` (torch)."""
    import torch

    y, p, r = (torch.deg2rad(poses[:, i]) for i in range(3))
    one, zero = torch.ones_like(y), torch.zeros_like(y)

    def mat(rows):
        return torch.stack([torch.stack(row, 1) for row in rows], 1)

    rx = mat([[one, zero, zero], [zero, torch.cos(p), torch.sin(p)], [zero, -torch.sin(p), torch.cos(p)]])
    ry = mat([[torch.cos(y), zero, -torch.sin(y)], [zero, one, zero], [torch.sin(y), zero, torch.cos(y)]])
    rz = mat([[torch.cos(r), torch.sin(r), zero], [-torch.sin(r), torch.cos(r), zero], [zero, zero, one]])
    return rx @ ry @ rz  # Rx(-pitch) Ry(-yaw) Rz(-roll)


def geodesic_loss(rotation, pose_t, weights=None):
    """Mean angle (degrees / 10) between predicted and true rotations, over faces with all three angles known;
    ``weights`` (N,) makes it a weighted mean."""
    import torch

    full = ~torch.isnan(pose_t).any(1)
    if not full.any():
        return pose_t.new_zeros(())
    truth = pose_matrices(pose_t[full])
    cos = ((rotation[full] * truth).sum((1, 2)) - 1.0) / 2.0
    angle = torch.rad2deg(torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6)))
    w = torch.ones_like(angle) if weights is None else weights[full]
    return (angle * w).sum() / w.sum() / 10.0


def run_epoch(forward, loader, opt, lr_at, step: int, loss_weights: dict, spec: ModelSpec, progress, task,
              clip_grad: float | None = None, after_step=None):
    """One pass over ``loader`` (FP32 training and QAT share it): returns (summed [pose, blur] losses, step).

    ``forward`` returns (blur, pose) or (blur, pose, rotation); a rotation adds the geodesic loss.
    ``after_step()`` runs after every optimiser step (the weight average's update)."""
    import torch

    sums = np.zeros(2)
    t0 = time.perf_counter()
    seen = 0
    for i, (imgs, poses, blurs) in enumerate(loader):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        bp, pp, *rotation = forward(torch.from_numpy(to_input(imgs, spec)))
        pose_t = torch.from_numpy(poses)
        weights = face_weights(pose_t, loss_weights.get("wide_yaw_weight", 1.0))
        pl, bl = masked_losses(bp, pp, torch.from_numpy(blurs), pose_t, loss_weights["pose_beta"], weights)
        pl = loss_weights["pose"] * pl  # the logged pose loss is the weighted one, geodesic term included
        if loss_weights.get("geodesic") and rotation and rotation[0] is not None:
            pl = pl + loss_weights["geodesic"] * geodesic_loss(rotation[0], pose_t, weights)
        loss = pl + loss_weights["blur"] * bl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip_grad)
        opt.step()
        if after_step is not None:
            after_step()
        step += 1
        seen += len(imgs)
        sums += (pl.item(), bl.item())
        rate = seen / (time.perf_counter() - t0)
        progress.update(task, advance=1, info=f"pose {sums[0] / (i + 1):.3f} blur {sums[1] / (i + 1):.3f} {rate:.0f} img/s")
    return sums, step


def apply_cli_overrides(recipe: dict, epochs=None, epoch_size=None, limit=None, data_root=None) -> dict:
    """The command line's --epochs/--epoch-size/--limit/--data-root over a validated recipe (FP32 and QAT)."""
    for section, key, value in (("train", "epochs", epochs), ("train", "epoch_size", epoch_size),
                                ("data", "limit", limit), ("data", "root", data_root)):
        if value is not None:
            if key != "root" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EdgefaceError(f"--{key.replace('_', '-')} must be a whole number >= 1, got {short(value)}")
            recipe[section][key] = value
    return recipe


def data_root_of(recipe: dict) -> Path:
    root = Path(recipe["data"]["root"])
    if not root.is_dir():
        raise EdgefaceError(f"data root {root} does not exist; pass --data-root DIR (e.g. ../shared/data)")
    return root


def load_sets(recipe: dict, split: str, root: Path, centre_people: bool = False,
              teacher_max_yaw: float | None = None) -> dict[str, list[Sample]]:
    """{set name: samples} of the recipe's sets for one split (capped at ``data.limit`` per set, seeded)."""
    out = {}
    for s in recipe["data"]["sets"]:
        folder = root / s["name"]
        samples = load_samples(folder, split=split, require_labels=True, centre_people=centre_people,
                               teacher_max_yaw=teacher_max_yaw)
        limit = recipe["data"]["limit"]
        if limit:
            rng = np.random.default_rng(recipe["train"]["seed"])
            idx = rng.permutation(len(samples))[:limit]
            samples = [samples[j] for j in sorted(idx)]
        out[s["name"]] = samples
    return out


@dataclass
class TrainingData:
    """What FP32 training and QAT learn from and are measured on."""

    cache: CropCache  # the recipe's sets' train split, then the rendered views
    weights: np.ndarray  # sampling weight of each cache item (a set's weight spread over its items)
    n_sharp: int  # photos sharp enough to carry a blur label
    val_sets: dict[str, list[Sample]]
    rendered_val: tuple[np.ndarray, np.ndarray] | None  # (crops, poses) of the rendered wide-pose val set
    dev_sets: dict[str, list[Sample]] = None  # real photos for model selection (data.dev_sets), never trained on

    def evaluate(self, runner, blur: bool, dev_only: bool = False) -> dict[str, dict]:
        """Every val set, the dev sets and the rendered val set; ``dev_only``: the dev sets alone."""
        from ..faces.evaluate import evaluate_crops, evaluate_samples

        sets = dict(self.dev_sets or {}) if dev_only else {**self.val_sets, **(self.dev_sets or {})}
        out = {name: evaluate_samples(runner, s, self.cache.spec, blur=blur, seed=0) for name, s in sets.items() if s}
        if self.rendered_val is not None and not dev_only:  # renders carry no blur label: pose only
            out["rendered"] = evaluate_crops(runner, *self.rendered_val, blur=False)
        return out


def set_meshes(root: Path, names: list[str]) -> dict[Path, np.ndarray]:
    """{image path: its FaceMesh points} for the named sets that ship a mesh.npz (rows whose mesh failed left out)."""
    from .render_bank import read_mesh_file

    out = {}
    for name in names:
        folder = root / name
        if not (folder / "mesh.npz").is_file():
            continue
        _, rows = read_csv_utf8(folder / "labels.csv", "labels file")
        files = [r.get("file", "") for r in rows]
        mesh, ok = read_mesh_file(folder, files)
        out.update({folder / f: mesh[i] for i, f in enumerate(files) if ok[i]})
    return out


def prepare_training_data(recipe: dict, spec: ModelSpec, root: Path, console=None) -> TrainingData:
    """The recipe's sets (train and val splits), their context crops and, with ``render.views`` > 0, the
    render bank and the rendered val set. The bank comes first: its mesh files are checked before the
    minutes of crop caching."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    train_sets = load_sets(recipe, recipe["data"]["split"], root, recipe["data"]["centre_people"],
                           recipe["data"]["teacher_max_yaw"])
    val_sets = load_sets(recipe, recipe["data"]["val_split"], root)
    all_train = [s for v in train_sets.values() for s in v]
    if not all_train:
        raise EdgefaceError(f"no labelled training images in {root} for sets {[s['name'] for s in recipe['data']['sets']]}")
    weights = np.concatenate([np.full(len(train_sets[s["name"]]), s["weight"] / max(1, len(train_sets[s["name"]])))
                              for s in recipe["data"]["sets"]])
    context = recipe["augment"]["context"]
    bank = rendered = None
    if recipe["render"]["views"] > 0:
        from .render_bank import build_bank, rendered_val

        bank = build_bank(root, bank_config(recipe), spec, context, "train", console=console)
        rendered = rendered_val(root, spec, console=console, limit=recipe["data"]["limit"])
    meshes = set_meshes(root, [s["name"] for s in recipe["data"]["sets"]]) if recipe["augment"]["landmark_box_p"] > 0 else None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False, disable=console is None) as progress:
        task = progress.add_task("caching crops", total=len(all_train))
        cache = CropCache(all_train, spec, context, progress, task, meshes)
    n_sharp = int((cache.sharp >= recipe["augment"]["sharp_min"]).sum())
    if bank is not None:
        cache.add_rendered(np.asarray(bank.images), bank.boxes, bank.poses, bank.landmark_boxes)
        weights = np.concatenate([weights, np.full(len(bank), recipe["render"]["weight"] / len(bank))])
    return TrainingData(cache, weights, n_sharp, val_sets, rendered, load_dev_sets(recipe, root))


def load_dev_sets(recipe: dict, root: Path) -> dict[str, list[Sample]]:
    """The recipe's ``data.dev_sets`` found under ``root``, all rows (capped like the sets by ``data.limit``)."""
    out = {}
    for name in recipe["data"]["dev_sets"]:
        if not (root / name / "labels.csv").is_file():
            continue
        samples = load_samples(root / name, require_labels=True)
        if recipe["data"]["limit"]:
            samples = samples[:recipe["data"]["limit"]]
        out[name] = samples
    return out


def _init_state(path: str, spec: ModelSpec) -> dict:
    """The start weights of ``train.init``/``--init``, checked against the recipe's network before any data
    is read: a checkpoint of another width or input size is one line, not a torch traceback.

    A checkpoint with the other kind of pose head gives its trunk and blur head; the recipe's pose head
    starts fresh (build_model's initialisation)."""
    from ..engines.torch.checkpoint import read_checkpoint
    from ..engines.torch.network import build_model

    ck = read_checkpoint(path)
    state = ck["state_dict"]
    model = build_model(spec)
    if ModelSpec.from_dict(ck["spec"]).pose_head != spec.pose_head:
        state = {**{k: v for k, v in state.items() if not k.startswith("pose_head.")},
                 **{k: v for k, v in model.state_dict().items() if k.startswith("pose_head.")}}
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise EdgefaceError(f"--init {path} holds a network of other shapes than the recipe's model section "
                            f"(width {spec.width}, input {spec.input_size}): {first}; pass a checkpoint "
                            f"trained with the same model section") from None
    return state


def dev_bins_text(val: dict, data: TrainingData) -> str:
    """The first dev set's mean MAE by |yaw| bin, for the epoch line."""
    if not data.dev_sets:
        return ""
    name = next(iter(data.dev_sets))
    return f"  ({name} by |yaw| " + " / ".join(f"{r['mean_mae']:.2f}" for r in val[name]["by_yaw"].values()) + ")"


def is_best_epoch(history: list[dict], data: TrainingData) -> bool:
    """Whether the last epoch has the lowest mean MAE so far on the first dev set (model selection)."""
    if not data.dev_sets:
        return False
    name = next(iter(data.dev_sets))
    scores = [h["val_mean_mae"].get(name) for h in history]
    return scores[-1] is not None and all(s is None or scores[-1] <= s for s in scores)


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (``train.ema``)."""

    def __init__(self, model, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.model = model

    def update(self) -> None:
        self.averaged.update_parameters(self.model)

    @property
    def module(self):
        return self.averaged.module


def _train_recipe(recipe_path, epochs, epoch_size, limit, data_root, init, seed) -> dict:
    """The recipe with the command line's overrides, checked again (they may break its ranges)."""
    recipe = apply_cli_overrides(load_train_recipe(recipe_path), epochs, epoch_size, limit, data_root)
    if init is not None:
        recipe["train"]["init"] = init
    if seed is not None:
        recipe["train"]["seed"] = seed
    if recipe["train"]["init"] and not Path(recipe["train"]["init"]).is_file():
        raise EdgefaceError(f"recipe {recipe_path}: field 'train.init' names {recipe['train']['init']}, which does "
                            f"not exist; train it first or pass --init CHECKPOINT")
    check_ranges(recipe, f"recipe {recipe_path}")
    return recipe


def _resume(last: Path, model, opt, average: WeightAverage | None) -> tuple[int, list[dict]]:
    """(epochs done, history) from ``last``, with the model, optimiser and weight average restored."""
    from ..engines.torch.checkpoint import read_checkpoint

    if not last.is_file():
        raise EdgefaceError(f"--resume: no checkpoint at {last}; start without --resume")
    ck = read_checkpoint(last)
    state = ck["train_state"]
    model.load_state_dict(state.get("raw_weights", ck["state_dict"]))
    opt.load_state_dict(state["optimizer"])
    if average is not None:
        if "weight_average" not in state:
            raise EdgefaceError(f"--resume: {last} was trained without train.ema; resume with the recipe it "
                                f"started with, or start without --resume")
        average.averaged.load_state_dict(state["weight_average"])
    return int(state["epoch"]), list(ck["meta"].get("history", []))


def epoch_loader(dataset, weights: np.ndarray, t: dict, epoch: int, steps_per_epoch: int, seed_offset: int = 0):
    """This epoch's batches: ``steps_per_epoch`` batches drawn by set weight, reproducible from the seed
    (FP32 training and QAT share it; QAT offsets its seeds)."""
    import torch

    dataset.epoch = epoch
    g = torch.Generator().manual_seed(t["seed"] * 1000 + epoch + seed_offset)
    sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(weights), steps_per_epoch * t["batch_size"],
                                                     replacement=True, generator=g)
    return torch.utils.data.DataLoader(dataset, batch_size=t["batch_size"], sampler=sampler,
                                       num_workers=t["workers"], collate_fn=collate_batch,
                                       persistent_workers=False, prefetch_factor=4 if t["workers"] else None)


def _torch_runner(model, spec: ModelSpec):
    """Predictor-style runner (BGR uint8 crops in; blur, pose out) over a torch model in eval mode."""
    import torch

    def answers(batch_bgr):
        with torch.no_grad():
            x = torch.from_numpy(to_input(batch_bgr, spec)).contiguous(memory_format=torch.channels_last)
            b, p = model(x)
        return b.numpy()[:, 0], p.numpy()

    def run(batch_bgr):  # as the runtime answers: with the mirror images when the spec says so (Predictor)
        return mirror_mean(*answers(with_mirrors(batch_bgr))) if spec.mirror_average else answers(batch_bgr)
    return run


def _measure_epoch(epoch: int, sums: np.ndarray, steps: int, seconds: float, data: TrainingData, model,
                   average: WeightAverage | None, spec: ModelSpec) -> tuple[dict, dict]:
    """(history row, validation results) of the epoch's weights: the average's where there is one, with the
    raw weights' dev-set figure beside it so the average's gain is measured in the same run."""
    scored = average.module if average is not None else model
    scored.eval()
    val = data.evaluate(_torch_runner(scored, spec), blur=False)
    row = {"epoch": epoch, "pose_loss": sums[0] / steps, "blur_loss": sums[1] / steps, "seconds": round(seconds, 1),
           "val_mean_mae": {k: v.get("mean_mae") for k, v in val.items()}}
    if data.dev_sets:
        row["dev_by_yaw"] = {k: {b: r["mean_mae"] for b, r in val[k]["by_yaw"].items()} for k in data.dev_sets}
        if average is not None:
            model.eval()
            raw = data.evaluate(_torch_runner(model, spec), blur=False, dev_only=True)
            row["raw_dev_mean_mae"] = {k: v.get("mean_mae") for k, v in raw.items()}
    return row, val


def _epoch_line(row: dict, val: dict, data: TrainingData) -> str:
    line = f"epoch {row['epoch']}: " + "  ".join(
        f"{k} {v['mean_mae']:.2f}" for k, v in val.items() if v.get("mean_mae") is not None) + dev_bins_text(val, data)
    if "raw_dev_mean_mae" in row:
        line += "  raw weights " + " ".join(f"{k} {v:.2f}" for k, v in row["raw_dev_mean_mae"].items() if v is not None)
    return line


def train(recipe_path, out: str | None = None, epochs: int | None = None, limit: int | None = None,
          data_root: str | None = None, resume: bool = False, epoch_size: int | None = None,
          init: str | None = None, seed: int | None = None, console=None) -> Path:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..engines.torch.checkpoint import save_checkpoint
    from ..engines.torch.network import build_model
    from ..faces.evaluate import format_table

    recipe = _train_recipe(recipe_path, epochs, epoch_size, limit, data_root, init, seed)
    t = recipe["train"]
    spec = spec_from_recipe(recipe)
    torch.manual_seed(t["seed"])  # before _init_state, which may build a fresh pose head
    init_state = _init_state(t["init"], spec) if t["init"] else None
    out_dir = Path(out or recipe["out"])
    torch.set_num_threads(t["threads"])
    data = prepare_training_data(recipe, spec, data_root_of(recipe), console)

    model = build_model(spec).to(memory_format=torch.channels_last)
    if init_state is not None:
        model.load_state_dict(init_state)
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    average = WeightAverage(model, t["ema"]) if t["ema"] else None
    steps_per_epoch = max(1, t["epoch_size"] // t["batch_size"])
    lr_at = warmup_cosine(t, steps_per_epoch)
    last = out_dir / "last.pt"
    start_epoch, history = _resume(last, model, opt, average) if resume else (0, [])
    dataset = AugmentedFaces(data.cache, recipe["augment"], t["seed"])
    kept = average.module if average is not None else model  # what is measured and saved
    meta = {"recipe": recipe, "n_train": len(data.cache), "n_sharp": data.n_sharp, "terms": recipe["model"]["terms"]}

    step = start_epoch * steps_per_epoch
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=console) as progress:
        for epoch in range(start_epoch, t["epochs"]):
            loader = epoch_loader(dataset, data.weights, t, epoch, steps_per_epoch)
            model.train()
            started = time.perf_counter()
            task = progress.add_task(f"epoch {epoch + 1}/{t['epochs']}", total=steps_per_epoch, info="")
            sums, step = run_epoch(lambda x: model(x.contiguous(memory_format=torch.channels_last), with_rotation=True),
                                   loader, opt, lr_at, step, recipe["loss"], spec, progress, task, t["clip_grad"],
                                   average.update if average is not None else None)
            row, val = _measure_epoch(epoch + 1, sums, steps_per_epoch, time.perf_counter() - started, data, model,
                                      average, spec)
            history.append(row)
            progress.console.print(_epoch_line(row, val, data))
            state = {"optimizer": opt.state_dict(), "epoch": epoch + 1}
            if average is not None:  # last.pt holds the average; resuming needs the raw weights as well
                state.update(raw_weights=model.state_dict(), weight_average=average.averaged.state_dict())
            save_checkpoint(last, kept, spec, {**meta, "history": history}, state)
            if is_best_epoch(history, data):
                save_checkpoint(out_dir / "best.pt", kept, spec, {**meta, "history": history, "best_epoch": epoch + 1})
    kept.eval()
    final = data.evaluate(_torch_runner(kept, spec), blur=True)
    best = out_dir / "model.pt"
    save_checkpoint(best, kept, spec, {**meta, "history": history, "val": final})
    if console is not None:
        console.print(format_table(final, title=f"val ({recipe['data']['val_split']})"))
    return best
