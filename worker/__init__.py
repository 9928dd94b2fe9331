"""Everything that runs inside a worker process (and the zygote that forks workers).

- ``__main__``  exec entry point: ``python -m worker --socket --worker-id --daemon-pid ...``
- ``zygote``    fork server: ``python -m worker.zygote --socket --daemon-pid``
- ``process``   becoming a worker: title, prefixed output, daemon watch, connect, serve
- ``channel``   who receives frames: the main thread, or a reader thread (PING) during long tasks
- ``loop``      the frame loop on the main thread: LOAD, PREDICT, DESCRIBE, SHUTDOWN
- ``service``   handler resolution and loading, Context, running a batch
- ``codec``     request values in, response bodies out, failures as statuses
- ``exits``     the exit codes of workers and the zygote
- ``logs``, ``watch``  per-process logging and output prefixing; following the daemon's pid
- ``ts_alias``, ``ts/``  the TorchServe ``ts`` import surface for handlers

Importing this package has no side effects: the ``ts`` alias is installed only by a worker or
zygote process at start.
"""
