"""torchd's built-in text_generation handler as a handler file: torch-model-archiver 0.12.0
takes only a file (or its own built-in names) for --handler, so the LLM round's archives name
this two-line subclass (benchlib/llm.py; the model directory comes from model-config.yaml)."""
from ts.torch_handler.text_generation import TextGenerationHandler


class Handler(TextGenerationHandler):
    pass
