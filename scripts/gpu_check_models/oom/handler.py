"""Asks its GPU for far more memory than there is: torchd must answer 507 and keep serving."""
import torch


class Greedy:
    def initialize(self, context):
        self.gpu_id = context.system_properties.get("gpu_id")

    def handle(self, data, context):
        if not data:
            return []
        device = f"cuda:{self.gpu_id}" if self.gpu_id is not None else "cpu"
        torch.empty(1 << 46, dtype=torch.uint8, device=device)   # 64 TiB
        return [{"ok": True} for _ in data]
