"""The multitask network: a MobileNetV2 trunk (written here, no torchvision) and two heads.

It lives with the torch engine, which runs it as the FP32 reference; training (``edgeface.model``),
export and quantization build on it.

Input: float32 NCHW, normalised as the ModelSpec says. Outputs (in this order):
  blur (N, 1) in [0, 1], and pose (N, 3) = yaw, pitch, roll in degrees.
The blur head reads pooled features from every stage (blur lives in the fine scales); the pose head
reads the last stage. The pose head is either three Euler angles from a linear layer ("euler") or a
rotation ("rot6d": two matrix columns, made orthonormal, then decoded to the same Euler angles in the
graph with elementwise ops, Asin and Atan, which every engine runs).
"""
from __future__ import annotations

import torch
from torch import nn

from ...core.spec import POSE_HEADS, ModelSpec

POSE_SCALE = 90.0  # the pose head regresses angles / 90 so its targets are O(1)
WIDTHS = (0.25, 0.5, 0.75, 1.0)

# t (expansion), c (channels), n (repeats), s (stride): MobileNetV2's table
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [ConvBNReLU(cin, hidden, 1)]
        layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden), ConvBNReLU(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


def _column(x, i: int):
    return x[:, i:i + 1]


def rot6d_to_matrix_columns(r6):
    """Gram-Schmidt on two predicted columns: (c1, c2, c3), each a list of three (N, 1) tensors.

    Written with slices and elementwise ops only (no ReduceSum, no Cross), so the same graph exports to
    ONNX, ncnn (pnnx), TensorRT and OpenVINO without special operators."""
    a1 = [_column(r6, i) for i in range(3)]
    a2 = [_column(r6, i) for i in range(3, 6)]
    n1 = torch.sqrt(a1[0] * a1[0] + a1[1] * a1[1] + a1[2] * a1[2]).clamp(min=1e-6)
    c1 = [v / n1 for v in a1]
    dot = c1[0] * a2[0] + c1[1] * a2[1] + c1[2] * a2[2]
    b2 = [a - dot * c for a, c in zip(a2, c1)]
    n2 = torch.sqrt(b2[0] * b2[0] + b2[1] * b2[1] + b2[2] * b2[2]).clamp(min=1e-6)
    c2 = [v / n2 for v in b2]
    c3 = [c1[1] * c2[2] - c1[2] * c2[1], c1[2] * c2[0] - c1[0] * c2[2], c1[0] * c2[1] - c1[1] * c2[0]]
    return c1, c2, c3


def matrix_columns_to_euler(c1, c2, c3):
    """(N, 3) yaw, pitch, roll in degrees, in the Pose_Para convention of ``faces.pose``:
    R = Rx(-pitch) Ry(-yaw) Rz(-roll), so R02 = -sin yaw, R12 / R22 = tan pitch, R01 / R00 = tan roll.

    atan of a ratio stands in for atan2: faces have |pitch|, |roll| < 90 deg, where R22 and R00 are positive;
    clamping them above zero saturates a pitch or roll beyond 90 at +-90 instead of wrapping it."""
    deg = 180.0 / torch.pi
    yaw = -torch.asin(c3[0].clamp(-1.0 + 1e-6, 1.0 - 1e-6)) * deg
    pitch = torch.atan(c3[1] / c3[2].clamp(min=1e-5)) * deg
    roll = torch.atan(c2[0] / c1[0].clamp(min=1e-5)) * deg
    return torch.cat([yaw, pitch, roll], 1)


class EdgeFaceNet(nn.Module):
    """MobileNetV2(width) trunk; the stages end at strides 4, 8, 16, 32 (at 112 px: 28, 14, 7, 4 px)."""

    def __init__(self, width: float = 0.25, last_channels: int | None = None, pose_head: str = "euler"):
        super().__init__()
        if width not in WIDTHS:
            raise ValueError(f"width must be one of {WIDTHS}, got {width}")
        if pose_head not in POSE_HEADS:
            raise ValueError(f"pose_head must be one of {POSE_HEADS}, got {pose_head}")
        self.width, self.pose_head_kind = width, pose_head
        cin = _divisible(32 * width)
        self.stem = ConvBNReLU(3, cin, 3, 2)
        stages, cur = [], []
        taps = []
        for t, c, n, s in _MBV2:
            cout = _divisible(c * width)
            if s == 2 and cur:
                stages.append(nn.Sequential(*cur))
                taps.append(cin)
                cur = []
            for i in range(n):
                cur.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        # As in MobileNetV2, the last 1x1 conv keeps 1280 channels for widths below 1.
        last = last_channels or _divisible(1280 * max(1.0, width))
        cur.append(ConvBNReLU(cin, last, 1))
        stages.append(nn.Sequential(*cur))
        taps.append(last)
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Blur: all stages' pooled features (fine detail lives early); pose: the last stage.
        self.blur_head = nn.Sequential(nn.Linear(sum(taps), 16), nn.ReLU(inplace=True), nn.Linear(16, 1))
        self.pose_head = nn.Linear(last, 6 if pose_head == "rot6d" else 3)
        self._init()
        if pose_head == "rot6d":  # starts at the identity rotation (a frontal face), not at a random one
            with torch.no_grad():
                self.pose_head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def heads(self, x):
        """(blur (N, 1), the pose head's own output): Euler angles / 90, or the rotation's two columns (N, 6)."""
        x = self.stem(x)
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(torch.flatten(self.pool(x), 1))
        return torch.sigmoid(self.blur_head(torch.cat(pooled, 1))), self.pose_head(pooled[-1])

    def forward(self, x, with_rotation: bool = False):
        """(blur, pose); with ``with_rotation`` (training a rot6d head) also the (N, 3, 3) rotation, else None."""
        blur, head = self.heads(x)
        if self.pose_head_kind == "euler":
            return (blur, head * POSE_SCALE, None) if with_rotation else (blur, head * POSE_SCALE)
        columns = rot6d_to_matrix_columns(head)
        pose = matrix_columns_to_euler(*columns)
        if not with_rotation:
            return blur, pose
        return blur, pose, torch.stack([torch.cat(c, 1) for c in columns], 2)  # columns -> (N, 3, 3)


def build_model(spec: ModelSpec) -> EdgeFaceNet:
    if spec.arch != "mobilenetv2":
        from ...core.errors import EdgefaceError

        raise EdgefaceError(f"unknown arch {str(spec.arch)[:40]!r}; this edgeface builds 'mobilenetv2'")
    return EdgeFaceNet(spec.width, pose_head=spec.pose_head)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int = 112) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convolutions and linear layers)."""
    macs = 0

    def conv_hook(m, inp, out):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs += out.numel() * k

    def lin_hook(m, inp, out):
        nonlocal macs
        macs += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(lin_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    model.train(was)
    for h in hooks:
        h.remove()
    return macs
