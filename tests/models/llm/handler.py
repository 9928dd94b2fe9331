"""An archive of torchd's text_generation handler, as torch-model-archiver 0.12.0 takes it: a
handler file (it knows no built-in of that name) holding a subclass."""
from ts.torch_handler.text_generation import TextGenerationHandler


class Handler(TextGenerationHandler):
    pass
