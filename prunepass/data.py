"""Built-in calibration data: scikit-learn's handwritten digits for image models, generated
token ids for text models, and a self-distillation loss when there are no labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def digits_dataset(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): 8x8 digits scaled to [0, 1], a fixed 70/30 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    cut = int(0.7 * len(x))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, shuffle_seed: int | None = None) -> list[tuple]:
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(shuffle_seed)) if shuffle_seed is not None \
        else torch.arange(len(x))
    return [(x[idx[i:i + batch]], y[idx[i:i + batch]]) for i in range(0, len(x), batch)]


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30, lr: float = 1e-2,
                     batch: int = 64, seed: int = 0) -> nn.Module:
    """A short Adam training loop (used by the demo and benchmarks)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        for xb, yb in batches(x, y, batch, shuffle_seed=seed + epoch):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(-1) == yb).sum()) for xb, yb in batches(x, y, batch))
    return correct / len(x)


def _as_image_batch(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Digits resized / replicated to the example input's channels and spatial size."""
    channels = like.shape[1]
    spatial = like.shape[2:]
    img = x.repeat(1, channels, *([1] * (x.dim() - 2))) if channels != 1 else x
    if len(spatial) == 2 and tuple(spatial) != tuple(img.shape[2:]):
        img = F.interpolate(img, size=tuple(spatial), mode="bilinear", align_corners=False)
    elif len(spatial) == 1:
        img = F.interpolate(img.flatten(2), size=spatial[0], mode="linear", align_corners=False)
    elif len(spatial) == 3:
        img = F.interpolate(img, size=tuple(spatial[1:]), mode="bilinear", align_corners=False)
        img = img.unsqueeze(2).expand(-1, -1, spatial[0], -1, -1).contiguous()
    return img


def builtin_calibration(model: nn.Module, example_inputs: Any, *, n_batches: int = 8, batch: int = 16,
                        seed: int = 0) -> tuple[list, Callable[[Any, Any], torch.Tensor]]:
    """Calibration batches and a loss for any model: digits images when the first input is a
    float image-like tensor, random token ids otherwise; the loss is distillation towards the
    unpruned model's own predictions (pseudo-labels; no labels needed)."""
    from prunepass.capture import split_inputs

    args, kwargs = split_inputs(example_inputs)
    first = args[0]
    g = torch.Generator().manual_seed(seed)
    samples: list[Any] = []
    if isinstance(first, torch.Tensor) and first.is_floating_point() and first.dim() >= 3:
        x, _, _, _ = digits_dataset(seed)
        for i in range(n_batches):
            xb = _as_image_batch(x[i * batch:(i + 1) * batch], first)
            samples.append(((xb, *args[1:], kwargs) if kwargs else (xb, *args[1:])) if len(args) > 1 or kwargs
                           else xb)
    else:
        for _ in range(n_batches):
            if isinstance(first, torch.Tensor) and not first.is_floating_point():
                high = int(first.max()) + 1 if first.numel() else 2
                xb = torch.randint(0, max(high, 2), (batch, *first.shape[1:]), generator=g, dtype=first.dtype)
            else:
                xb = torch.randn((batch, *first.shape[1:]), generator=g)
            extra = {k: (torch.ones((batch, *v.shape[1:]), dtype=v.dtype) if isinstance(v, torch.Tensor) else v)
                     for k, v in kwargs.items()}
            samples.append((xb, extra) if extra else xb)
    teacher = {}
    with torch.no_grad():
        for i, s in enumerate(samples):
            teacher[i] = _call(model, s)
    data = [(s, i) for i, s in enumerate(samples)]

    def loss_fn(out: Any, sample: Any) -> torch.Tensor:
        # the unpruned model's own predictions as labels: unlike a distillation loss against
        # itself (zero, with zero gradients) this gives Taylor scores something to measure
        ref = teacher[sample[1]]
        if out.dim() >= 2 and out.shape[-1] > 1:
            return F.cross_entropy(out.float().flatten(0, -2), ref.argmax(-1).flatten())
        return 0.5 * out.float().pow(2).mean()

    return data, loss_fn


def _call(model: nn.Module, inputs: Any) -> Any:
    from prunepass.capture import split_inputs

    args, kwargs = split_inputs(inputs)
    return model(*args, **kwargs)


def first_of(sample: Any) -> Any:
    """``sample_to_model_inputs`` for the (inputs, index) pairs of builtin_calibration."""
    return sample[0]
