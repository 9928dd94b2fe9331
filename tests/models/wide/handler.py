"""One nn.Linear(7168, 7168): ~196 MiB of float32 weights, read from the archive's serialized
file in ``initialize``. A body of ones gives the first 4 outputs, which pid ran ``initialize``
(a template's, when its workers are forked from one) and which pid answered."""
import os

import torch

FEATURES = 7168


class Wide:
    def initialize(self, context):
        weights = os.path.join(context.system_properties["model_dir"],
                               context.manifest["model"]["serializedFile"])
        with torch.device("meta"):   # no random init of 51M weights that are replaced anyway
            self.model = torch.nn.Linear(FEATURES, FEATURES)
        self.model.load_state_dict(torch.load(weights), assign=True)
        self.model.eval()
        self.initialized_in = os.getpid()

    def handle(self, data, context):
        answers = []
        for _ in data:
            with torch.inference_mode():
                out = self.model(torch.ones(1, FEATURES))
            answers.append({"head": out[0, :4].tolist(), "initialized_in": self.initialized_in,
                            "pid": os.getpid()})
        return answers
