"""Reference model zoo for prunepass.

Small, from-scratch PyTorch versions of common architectures, each keeping the
structural patterns a structured pruner has to handle (residual adds, concat,
depthwise convs, channel split/shuffle, SE gating, attention heads, GQA, ...).

    >>> import models
    >>> model, inputs = models.get("resnet18")
    >>> args, kwargs = models.split_inputs(inputs)
    >>> out = model(*args, **kwargs)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import (
    audio1d,
    bert,
    conv3d,
    convnext,
    densenet,
    digits_cnn,
    digits_resnet,
    efficientnet,
    gpt,
    llama,
    mobilenet_v2,
    mobilenet_v3,
    resnet,
    shufflenet_v2,
    unet,
    vit,
    yolo_csp,
)

__all__ = ["MODELS", "ModelSpec", "get", "names", "split_inputs"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build one reference model and its example inputs.

    ``example_inputs()`` returns positional args; if its last element is a dict,
    that dict holds keyword args.
    """

    name: str
    build: Callable[[], nn.Module]
    example_inputs: Callable[[], tuple]
    task: str
    description: str


def _spec(
    name: str, build: Callable[[], nn.Module], inputs: Callable[[], tuple], task: str, description: str
) -> ModelSpec:
    return ModelSpec(name=name, build=build, example_inputs=inputs, task=task, description=description)


_SPECS = [
    _spec(
        "resnet18",
        resnet.build_resnet18,
        resnet.example_inputs,
        "image",
        "ResNet-18: BasicBlocks, residual adds, 1x1 conv+BN downsample shortcuts",
    ),
    _spec(
        "resnet50",
        resnet.build_resnet50,
        resnet.example_inputs,
        "image",
        "ResNet-50 layout: bottleneck 1x1-3x3-1x1 (x4 expansion) blocks, [3, 4, 6, 3]",
    ),
    _spec(
        "mobilenet_v2",
        mobilenet_v2.build,
        mobilenet_v2.example_inputs,
        "image",
        "MobileNetV2 0.5x: inverted residuals, depthwise 3x3, ReLU6",
    ),
    _spec(
        "mobilenet_v3",
        mobilenet_v3.build,
        mobilenet_v3.example_inputs,
        "image",
        "MobileNetV3-Small 0.5x: depthwise, SE (hardsigmoid gate), hardswish",
    ),
    _spec(
        "efficientnet",
        efficientnet.build,
        efficientnet.example_inputs,
        "image",
        "EfficientNet-style: MBConv with SE (sigmoid gate) and SiLU",
    ),
    _spec(
        "densenet",
        densenet.build,
        densenet.example_inputs,
        "image",
        "DenseNet: torch.cat chains inside dense blocks, BN-ReLU-conv-avgpool transitions",
    ),
    _spec(
        "convnext",
        convnext.build,
        convnext.example_inputs,
        "image",
        "ConvNeXt: 7x7 depthwise, permute + LayerNorm + Linear MLP, layer-scale gamma, residual",
    ),
    _spec(
        "unet",
        unet.build,
        unet.example_inputs,
        "image",
        "UNet: max-pool encoder, ConvTranspose2d / interpolate / Upsample decoder, cat skips",
    ),
    _spec(
        "yolo_csp",
        yolo_csp.build,
        yolo_csp.example_inputs,
        "image",
        "YOLO/CSP: torch.split / chunk channel splits, SPPF max-pool concat, FPN concat, detect convs",
    ),
    _spec(
        "shufflenet_v2",
        shufflenet_v2.build,
        shufflenet_v2.example_inputs,
        "image",
        "ShuffleNetV2 0.5x: chunk split, two-branch stride-2 units, channel shuffle (view/transpose)",
    ),
    _spec(
        "vit",
        vit.build,
        vit.example_inputs,
        "image",
        "ViT: patch conv, cls token, pos embed, fused qkv Linear + SDPA, pre-LN, GELU MLP",
    ),
    _spec(
        "bert",
        bert.build,
        bert.example_inputs,
        "text",
        "BERT: 3 embeddings, separate q/k/v, SDPA with attention_mask kwarg, post-LN, pooler",
    ),
    _spec(
        "gpt",
        gpt.build,
        gpt.example_inputs,
        "text",
        "GPT: learned positions, pre-LN, causal SDPA, GELU MLP, LM head tied to token embedding",
    ),
    _spec(
        "llama",
        llama.build,
        llama.example_inputs,
        "text",
        "Llama: RMSNorm, RoPE, grouped-query attention (4 q / 2 kv heads), SwiGLU, no biases",
    ),
    _spec(
        "audio1d",
        audio1d.build,
        audio1d.example_inputs,
        "audio",
        "1-d CNN: Conv1d/BatchNorm1d/ReLU, residual blocks, MaxPool1d, global avg pool",
    ),
    _spec(
        "conv3d",
        conv3d.build,
        conv3d.example_inputs,
        "video",
        "3-d CNN: Conv3d/BatchNorm3d/ReLU, identity + strided residual blocks, AdaptiveAvgPool3d",
    ),
    _spec(
        "digits_cnn",
        digits_cnn.build,
        digits_cnn.example_inputs,
        "image",
        "Tiny CNN for 8x8 sklearn digits: conv-BN-ReLU, max-pool, flatten into MLP head",
    ),
    _spec(
        "digits_resnet",
        digits_resnet.build,
        digits_resnet.example_inputs,
        "image",
        "Residual CNN for 8x8 sklearn digits: 3x3 stem, strided BasicBlocks, global avg pool, fc",
    ),
]

MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def names() -> list[str]:
    """Sorted list of registered model names."""
    return sorted(MODELS)


def split_inputs(inputs: tuple) -> tuple[tuple, dict[str, Any]]:
    """Split example inputs into ``(args, kwargs)``: a trailing dict is the kwargs."""
    if inputs and isinstance(inputs[-1], dict):
        return tuple(inputs[:-1]), dict(inputs[-1])
    return tuple(inputs), {}


def get(name: str) -> tuple[nn.Module, tuple]:
    """Build model ``name`` in eval mode with seeded weights; return ``(model, example_inputs)``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    spec = MODELS[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    torch.manual_seed(0)
    inputs = spec.example_inputs()
    return model, inputs
