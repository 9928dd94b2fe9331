"""Image transforms with PIL and torch only: what torchvision's transforms give on a PIL image.

torchvision cannot be imported on these machines (its wheels are built against the CUDA torch), so
the built-in vision handlers use these. Each class mirrors the torchvision transform of the same
name for the PIL-image case: ``Resize`` (an int resizes the short side, bilinear, through PIL),
``CenterCrop`` (offsets rounded as torchvision rounds them, zero padding when the crop is larger
than the image), ``ToTensor`` (C x H x W, 8-bit images scaled to [0, 1]) and ``Normalize``.
``ToRGB`` is torchd's own: it lets grayscale, palette and RGBA uploads through a 3-channel
pipeline where torchvision's would fail on the channel count.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

# 8-bit modes whose bytes are one uint8 per band, pixel by pixel (what ToTensor scales by 1/255).
_EIGHT_BIT_MODES = frozenset({"L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
                              "LAB", "HSV"})


def resized_size(width: int, height: int, size: int | Sequence[int]) -> tuple[int, int]:
    """(width, height) after Resize(size): an int is the new short side, the long side keeps
    the aspect ratio and is truncated; a (height, width) pair is taken as it is."""
    if not isinstance(size, int):
        new_height, new_width = size
        return int(new_width), int(new_height)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def crop_offset(image_extent: int, crop_extent: int) -> int:
    """Where a centered crop starts along one axis, in the image's own coordinates.

    Larger crops pad the image (the extra half rounded down goes before it); smaller ones start
    at round((image - crop) / 2) with Python's round-half-to-even, as torchvision does."""
    if crop_extent > image_extent:
        return -((crop_extent - image_extent) // 2)
    return int(round((image_extent - crop_extent) / 2.0))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a one- or two-element sequence."""
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[0]), int(size[1])


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, value: Any) -> Any:
        for transform in self.transforms:
            value = transform(value)
        return value


class ToRGB:
    """Convert any PIL image to RGB (an RGB image passes unchanged)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


class Resize:
    """Resize a PIL image: an int sets the short side, a (height, width) pair the exact size."""

    def __init__(self, size: int | Sequence[int],
                 interpolation: int = Image.Resampling.BILINEAR) -> None:
        if not isinstance(size, int):
            size = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        target = resized_size(image.width, image.height, self.size)
        if target == image.size:
            return image
        return image.resize(target, self.interpolation)


class CenterCrop:
    """Crop the center of a PIL image to (height, width), padding with zeros if it is smaller."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.height, self.width = _pair(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        left = crop_offset(image.width, self.width)
        top = crop_offset(image.height, self.height)
        return image.crop((left, top, left + self.width, top + self.height))


class ToTensor:
    """A PIL image as a C x H x W tensor; 8-bit images become floats in [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(image)


def to_tensor(image: Image.Image) -> torch.Tensor:
    if image.mode == "1":
        image = image.convert("L")   # 0 and 255, as torchvision scales a bilevel image
    if image.mode == "F":
        return _planes(image, torch.float32)
    if image.mode not in _EIGHT_BIT_MODES:
        return _planes(image if image.mode == "I" else image.convert("I"), torch.int32)
    planes = _planes(image, torch.uint8)
    return planes.to(dtype=torch.get_default_dtype()).div(255)


def _planes(image: Image.Image, dtype: torch.dtype) -> torch.Tensor:
    channels = len(image.getbands())
    flat = torch.frombuffer(bytearray(image.tobytes()), dtype=dtype)
    return flat.view(image.height, image.width, channels).permute(2, 0, 1).contiguous()


class Normalize:
    """(tensor - mean) / std per channel of a C x H x W float tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return normalize(tensor, self.mean, self.std)


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub(mean_t).div(std_t)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_transform() -> Compose:
    """Resize(256), CenterCrop(224), ToTensor, Normalize(ImageNet), after ToRGB."""
    return Compose([ToRGB(), Resize(256), CenterCrop(224), ToTensor(),
                    Normalize(IMAGENET_MEAN, IMAGENET_STD)])
