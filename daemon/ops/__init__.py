"""Running the daemon: CLI, server start/stop, startup loading, pid file, systemd, logs."""
