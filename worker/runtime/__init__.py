"""What the worker hands a handler at run time, whichever ``ts`` package the handler imports:
the ``Context`` (context.py), the metrics recorder behind ``context.metrics`` (recorder.py,
dimension.py, metric_type_enum.py) and the streaming hook (streaming.py). worker/ts/ re-exports
them under TorchServe's import paths; nothing here imports worker/ts/.
"""
