"""The image transforms the built-in vision handlers use (torch + PIL), against expectations
worked out by hand from torchvision's documented behaviour on PIL images."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from worker.ts.handler_utils.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Normalize,
    Resize,
    ToTensor,
    crop_offset,
    imagenet_transform,
    resized_size,
    to_tensor,
)


def rgb(width: int, height: int, pixels: list[tuple[int, int, int]]) -> Image.Image:
    return Image.frombytes("RGB", (width, height), bytes(v for p in pixels for v in p))


@pytest.mark.parametrize(("size", "short", "expected"), [
    ((300, 200), 256, (384, 256)),      # landscape: 256 * 300 / 200 = 384
    ((200, 300), 256, (256, 384)),      # portrait
    ((333, 500), 256, (256, 384)),      # 384.38... truncated, not rounded
    ((257, 1000), 256, (256, 996)),     # 996.1 truncated
    ((256, 256), 256, (256, 256)),
    ((300, 200), (10, 20), (20, 10)),   # a (height, width) pair is exact
])
def test_resized_size_keeps_the_aspect_ratio_and_truncates(size, short, expected):
    assert resized_size(*size, short) == expected


@pytest.mark.parametrize(("image", "crop", "expected"), [
    (256, 224, 16),
    (257, 224, 16),    # 16.5 rounds half to even
    (259, 224, 18),    # 17.5 rounds half to even
    (224, 224, 0),
    (5, 4, 0),         # 0.5 rounds to 0
    (2, 4, -1),        # larger crop: pad 1 before, 1 after
    (2, 5, -1),        # pad 1 before, 2 after
    (3, 6, -1),
])
def test_crop_offset_rounds_like_torchvision(image, crop, expected):
    assert crop_offset(image, crop) == expected


def test_bilinear_resize_of_the_short_side_by_hand():
    # A 2 x 1 row [0, 255] resized to short side 2 is 4 x 2; along x each output pixel centre
    # maps to 0.25, 0.75, 1.25, 1.75 in the input: weights (1), (.75, .25), (.25, .75), (1).
    row = Image.frombytes("L", (2, 1), bytes([0, 255]))
    resized = Resize(2)(row)
    assert resized.size == (4, 2)
    assert list(resized.tobytes()) == [0, 64, 191, 255] * 2


def test_resize_to_the_same_size_returns_the_image():
    image = rgb(2, 2, [(1, 2, 3)] * 4)
    assert Resize(2)(image) is image


def test_center_crop_inside_and_with_zero_padding():
    image = rgb(2, 2, [(10, 20, 30), (40, 50, 60), (70, 80, 90), (100, 110, 120)])
    padded = CenterCrop(4)(image)
    zero = (0, 0, 0)
    assert padded.size == (4, 4)
    assert list(padded.tobytes()) == [v for p in [zero] * 5 + [(10, 20, 30), (40, 50, 60)]
                                      + [zero] * 2 + [(70, 80, 90), (100, 110, 120)] + [zero] * 5
                                      for v in p]
    # (height 1, width 3): one row from the top (0.5 rounds to 0), one column padded after
    assert list(CenterCrop((1, 3))(image).tobytes()) == [10, 20, 30, 40, 50, 60, 0, 0, 0]
    three = rgb(3, 3, [(i, i, i) for i in range(9)])
    assert list(CenterCrop(1)(three).tobytes()) == [4, 4, 4]


def test_to_tensor_scales_8_bit_images_channel_first():
    image = rgb(2, 1, [(0, 51, 255), (255, 102, 0)])
    tensor = ToTensor()(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 1, 2)
    # float32 division by 255, bit for bit
    raw = torch.tensor([[[0.0, 255.0]], [[51.0, 102.0]], [[255.0, 0.0]]])
    assert torch.equal(tensor, raw / 255)
    assert tensor[1, 0].tolist() == pytest.approx([0.2, 0.4])


@pytest.mark.parametrize(("mode", "value", "expected", "dtype"), [
    ("L", 51, 0.2, torch.float32),
    ("1", 1, 1.0, torch.float32),        # bilevel: 255 after scaling, as torchvision
    ("F", 3.5, 3.5, torch.float32),      # float images are not scaled
    ("I", 70000, 70000, torch.int32),    # nor are 32-bit integer ones
])
def test_to_tensor_modes(mode, value, expected, dtype):
    tensor = to_tensor(Image.new(mode, (2, 1), value))
    assert tensor.shape == (1, 1, 2) and tensor.dtype == dtype
    assert tensor.flatten().tolist() == pytest.approx([expected, expected])


def test_normalize_by_hand():
    tensor = ToTensor()(rgb(2, 1, [(0, 51, 255), (255, 102, 0)]))
    normalized = Normalize(IMAGENET_MEAN, IMAGENET_STD)(tensor)
    expected = [[[(0 - 0.485) / 0.229, (1 - 0.485) / 0.229]],
                [[(0.2 - 0.456) / 0.224, (0.4 - 0.456) / 0.224]],
                [[(1 - 0.406) / 0.225, (0 - 0.406) / 0.225]]]
    assert torch.allclose(normalized, torch.tensor(expected), atol=1e-6)
    assert torch.equal(tensor, ToTensor()(rgb(2, 1, [(0, 51, 255), (255, 102, 0)])))  # not in place


def test_imagenet_pipeline_on_a_uniform_image():
    image = Image.new("RGB", (300, 200), (128, 64, 32))
    tensor = imagenet_transform()(image)
    assert tensor.shape == (3, 224, 224)
    expected = [(128 / 255 - 0.485) / 0.229, (64 / 255 - 0.456) / 0.224,
                (32 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert torch.allclose(tensor[channel], torch.full((224, 224), value), atol=1e-6)


def test_imagenet_pipeline_crops_the_centre_of_the_resized_image():
    # 448 x 256 -> resize leaves it as is (short side 256) -> crop columns 112..335, rows 16..239
    columns = bytes(x * 255 // 447 for x in range(448))
    image = Image.frombytes("L", (448, 256), columns * 256).convert("RGB")
    tensor = imagenet_transform()(image)
    left_column = (columns[112] / 255 - 0.485) / 0.229
    right_column = (columns[335] / 255 - 0.485) / 0.229
    assert tensor[0, 0, 0].item() == pytest.approx(left_column, abs=1e-6)
    assert tensor[0, 223, 223].item() == pytest.approx(right_column, abs=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1"])
def test_imagenet_pipeline_takes_any_mode_as_rgb(mode):
    image = Image.new("RGB", (64, 48), (200, 100, 50)).convert(mode)
    assert imagenet_transform()(image).shape == (3, 224, 224)
