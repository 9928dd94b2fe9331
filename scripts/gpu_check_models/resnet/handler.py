"""resnet18 (torchvision, random weights) in fp16 on the worker's GPU, on JPEG bodies decoded
by PIL: the decode + model loop gpu-check also runs in-process for comparison."""
import io

import torch
import torchvision
from PIL import Image

SIDE = 224


def decode(body: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(body)).convert("RGB").resize((SIDE, SIDE))
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)


def build(device: torch.device) -> torch.nn.Module:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return torchvision.models.resnet18(weights=None).eval().to(device, dtype)


def infer(model: torch.nn.Module, device: torch.device, pixels: list[torch.Tensor]) -> list[int]:
    dtype = next(model.parameters()).dtype
    x = torch.stack(pixels).view(-1, SIDE, SIDE, 3).permute(0, 3, 1, 2)
    x = x.to(device, non_blocking=True).to(dtype).div_(255)
    with torch.inference_mode():
        return model(x).float().argmax(1).tolist()


class Resnet:
    def initialize(self, context):
        gpu_id = context.system_properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if gpu_id is not None else "cpu")
        self.model = build(self.device)

    def handle(self, data, context):
        if not data:
            return []
        pixels = [decode(row.get("body") or row.get("data")) for row in data]
        device = str(next(self.model.parameters()).device)
        return [{"class": c, "device": device} for c in infer(self.model, self.device, pixels)]
