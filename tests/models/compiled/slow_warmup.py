"""A warm-up that outlasts the model's startup_timeout: its one warm-up request waits a minute."""
import threading

from ts.torch_handler.base_handler import BaseHandler


class SlowWarmUp(BaseHandler):
    def warmup_requests(self):
        return [[1.0, 2.0, 3.0, 4.0]]

    def handle(self, data, context):
        threading.Event().wait(60)
        return super().handle(data, context)
