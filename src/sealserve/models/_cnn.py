"""Image classifiers: MobileNetV2, ResNet-50 and DenseNet-121, as torchvision defines them.

Each graph takes ``input`` (float32, ``[batch, 3, 224, 224]``, ImageNet-normalised) and gives
``logits`` (float32, ``[batch, 1000]``).  Parameter counts are torchvision's: 3,504,872,
25,557,032 and 7,978,856.

BatchNorm is a ``BatchNormalization`` node whose scale and bias are initializers (parameters)
and whose running mean and variance are ``Constant`` nodes (buffers in PyTorch's terms, not
counted as parameters).  onnxruntime fuses it into a preceding convolution and runs it where
it cannot (DenseNet's pre-activation), as for an exported torchvision model, so the work is
the real model's.

The weights are He-scaled normals and the scales keep the variance of activations near one
through the whole depth (residual branches end with a smaller scale), so the logits are finite
and spread out like a trained network's, not saturated or constant.
"""

from __future__ import annotations

import math

from onnx import TensorProto

from sealserve.models._graph import GraphBuilder
from sealserve.models._weights import Param

__all__ = ["build_densenet121", "build_mobilenet_v2", "build_resnet50"]

_IMAGE = 224
_CLASSES = 1000


class _Net:
    """Layer helpers over a :class:`GraphBuilder` for NCHW image networks."""

    def __init__(self, g: GraphBuilder) -> None:
        self.g = g

    def conv(
        self,
        x: str,
        name: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        groups: int = 1,
        after_relu: bool = True,
    ) -> str:
        fan_in = cin // groups * k * k
        std = math.sqrt((2.0 if after_relu else 1.0) / fan_in)
        w = self.g.param(Param.normal(f"{name}.weight", (cout, cin // groups, k, k), std=std))
        pad = k // 2
        return self.g.op(
            "Conv",
            [x, w],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
            group=groups,
        )

    def affine(self, x: str, name: str, channels: int, *, gain: float = 1.0) -> str:
        """BatchNorm (inference): parameters ``weight`` and ``bias``, buffers as constants."""
        shape = (channels,)
        scale = self.g.param(
            Param.uniform(f"{name}.weight", shape, low=0.8 * gain, high=1.2 * gain)
        )
        shift = self.g.param(Param.normal(f"{name}.bias", shape, std=0.05))
        mean = self.g.buffer(Param.normal(f"{name}.running_mean", shape, std=0.05))
        var = self.g.buffer(Param.uniform(f"{name}.running_var", shape, low=0.8, high=1.2))
        return self.g.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.g.op("Relu", [x])

    def relu6(self, x: str) -> str:
        lo = self.g.const(0.0, dtype="float32")
        hi = self.g.const(6.0, dtype="float32")
        return self.g.op("Clip", [x, lo, hi])

    def linear(self, x: str, name: str, cin: int, cout: int) -> str:
        w = self.g.param(Param.normal(f"{name}.weight", (cout, cin), std=math.sqrt(1.0 / cin)))
        b = self.g.param(Param.normal(f"{name}.bias", (cout,), std=0.01))
        return self.g.op("Gemm", [x, w, b], transB=1)

    def head(self, x: str, name: str, channels: int) -> str:
        pooled = self.g.op("GlobalAveragePool", [x])
        flat = self.g.op("Flatten", [pooled], axis=1)
        return self.linear(flat, name, channels, _CLASSES)


def _image_graph(name: str, seed: int, doc: str) -> tuple[GraphBuilder, _Net, str]:
    g = GraphBuilder(name, seed=seed, doc=doc)
    x = g.input("input", TensorProto.FLOAT, ["batch", 3, _IMAGE, _IMAGE])
    return g, _Net(g), x


def _finish(g: GraphBuilder, logits: str) -> GraphBuilder:
    g.output(logits, "logits", TensorProto.FLOAT, ["batch", _CLASSES])
    return g


# -- MobileNetV2 --------------------------------------------------------------------------------

# (expansion t, output channels c, repeats n, first stride s), as in the paper and torchvision.
_MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def build_mobilenet_v2(*, seed: int = 0) -> GraphBuilder:
    """MobileNetV2 (width 1.0, 224x224): 3,504,872 parameters."""
    g, net, x = _image_graph("mobilenet_v2", seed, "MobileNetV2 1.0, torchvision layout")
    x = net.relu6(
        net.affine(
            net.conv(x, "features.0.0", 3, 32, 3, stride=2, after_relu=False), "features.0.1", 32
        )
    )
    cin = 32
    index = 1
    for t, c, n, s in _MOBILENET_V2_STAGES:
        for i in range(n):
            stride = s if i == 0 else 1
            prefix = f"features.{index}.conv"
            hidden = cin * t
            residual = stride == 1 and cin == c
            y = x
            layer = 0
            if t != 1:
                y = net.conv(y, f"{prefix}.{layer}.0", cin, hidden, 1, after_relu=False)
                y = net.relu6(net.affine(y, f"{prefix}.{layer}.1", hidden))
                layer += 1
            y = net.conv(y, f"{prefix}.{layer}.0", hidden, hidden, 3, stride=stride, groups=hidden)
            y = net.relu6(net.affine(y, f"{prefix}.{layer}.1", hidden))
            layer += 1
            y = net.conv(y, f"{prefix}.{layer}", hidden, c, 1)
            y = net.affine(y, f"{prefix}.{layer + 1}", c, gain=0.3 if residual else 1.0)
            x = g.op("Add", [x, y]) if residual else y
            cin = c
            index += 1
    x = net.conv(x, f"features.{index}.0", cin, 1280, 1, after_relu=False)
    x = net.relu6(net.affine(x, f"features.{index}.1", 1280))
    return _finish(g, net.head(x, "classifier.1", 1280))


# -- ResNet-50 ----------------------------------------------------------------------------------

_RESNET50_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def build_resnet50(*, seed: int = 0) -> GraphBuilder:
    """ResNet-50 v1.5 (stride on the 3x3 convolution), 224x224: 25,557,032 parameters."""
    g, net, x = _image_graph("resnet50", seed, "ResNet-50 v1.5, torchvision layout")
    x = net.relu(net.affine(net.conv(x, "conv1", 3, 64, 7, stride=2, after_relu=False), "bn1", 64))
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for li, (planes, blocks, first_stride) in enumerate(_RESNET50_LAYERS, start=1):
        for b in range(blocks):
            prefix = f"layer{li}.{b}"
            stride = first_stride if b == 0 else 1
            cout = planes * 4
            y = net.relu(
                net.affine(net.conv(x, f"{prefix}.conv1", cin, planes, 1), f"{prefix}.bn1", planes)
            )
            y = net.conv(y, f"{prefix}.conv2", planes, planes, 3, stride=stride)
            y = net.relu(net.affine(y, f"{prefix}.bn2", planes))
            y = net.affine(
                net.conv(y, f"{prefix}.conv3", planes, cout, 1), f"{prefix}.bn3", cout, gain=0.3
            )
            shortcut = x
            if b == 0:
                shortcut = net.conv(x, f"{prefix}.downsample.0", cin, cout, 1, stride=stride)
                shortcut = net.affine(shortcut, f"{prefix}.downsample.1", cout)
            x = net.relu(g.op("Add", [shortcut, y]))
            cin = cout
    return _finish(g, net.head(x, "fc", cin))


# -- DenseNet-121 -------------------------------------------------------------------------------

_DENSENET121_BLOCKS = (6, 12, 24, 16)
_GROWTH = 32
_BOTTLENECK = 4 * _GROWTH


def build_densenet121(*, seed: int = 0) -> GraphBuilder:
    """DenseNet-121 (growth 32, blocks 6-12-24-16), 224x224: 7,978,856 parameters."""
    g, net, x = _image_graph("densenet121", seed, "DenseNet-121, torchvision layout")
    x = net.conv(x, "features.conv0", 3, 64, 7, stride=2, after_relu=False)
    x = net.relu(net.affine(x, "features.norm0", 64))
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    channels = 64
    for bi, layers in enumerate(_DENSENET121_BLOCKS, start=1):
        features = [x]
        for li in range(1, layers + 1):
            prefix = f"features.denseblock{bi}.denselayer{li}"
            cin = channels + (li - 1) * _GROWTH
            inp = features[0] if len(features) == 1 else g.op("Concat", features, axis=1)
            y = net.relu(net.affine(inp, f"{prefix}.norm1", cin))
            y = net.conv(y, f"{prefix}.conv1", cin, _BOTTLENECK, 1)
            y = net.relu(net.affine(y, f"{prefix}.norm2", _BOTTLENECK))
            features.append(net.conv(y, f"{prefix}.conv2", _BOTTLENECK, _GROWTH, 3))
        x = g.op("Concat", features, axis=1)
        channels += layers * _GROWTH
        if bi < len(_DENSENET121_BLOCKS):
            prefix = f"features.transition{bi}"
            y = net.relu(net.affine(x, f"{prefix}.norm", channels))
            x = net.conv(y, f"{prefix}.conv", channels, channels // 2, 1)
            x = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
            channels //= 2
    x = net.relu(net.affine(x, "features.norm5", channels))
    return _finish(g, net.head(x, "classifier", channels))
