"""BaseHandler's steps as a micro-batching pipeline (TorchServe's MicroBatching example): one
request per micro-batch, two threads per step."""
from ts.handler_utils.micro_batching import MicroBatching
from ts.torch_handler.base_handler import BaseHandler


class MicroBatchingHandler(BaseHandler):
    def __init__(self):
        super().__init__()
        self.handle = MicroBatching(self, micro_batch_size=1)

    def initialize(self, context):
        super().initialize(context)
        self.handle.parallelism = {"preprocess": 2, "inference": 2, "postprocess": 2}
