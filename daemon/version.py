"""torchd's version (setup.cfg says the same): `torchd --version`, the logs, /v2, describe."""
VERSION = "0.1.0"
