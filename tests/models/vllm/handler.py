from ts.torch_handler.vllm_handler import VLLMHandler


class Handler(VLLMHandler):
    pass
