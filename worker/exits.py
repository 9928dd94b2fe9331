"""Exit codes of worker and zygote processes: the daemon logs them as a worker's exit status,
and tests assert on them. A negative status (killed by a signal) is the OS's, never one of these.
"""
from __future__ import annotations

EXIT_OK = 0               # EOF or SHUTDOWN from the daemon: a clean end
EXIT_FAILED = 1           # the model did not load, or the worker crashed before it could serve
EXIT_PROTOCOL = 2         # the daemon sent a bad frame, or something other than LOAD first
EXIT_DAEMON_GONE = 3      # the daemon's process died: nobody is left to serve
EXIT_CONNECT_FAILED = 4   # the daemon's socket could not be reached or greeted


def after_eof(protocol_error: bool) -> int:
    """The exit code once the daemon's frames have ended (``protocol_error``: with a bad one)."""
    return EXIT_PROTOCOL if protocol_error else EXIT_OK
