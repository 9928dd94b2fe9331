"""Worker processes: the Supervisor, the runner of one worker, launchers, connections."""
