"""Token authorization (SPEC 5.3): keys in key_file.json (mode 0600), Bearer header checks."""
from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path

from daemon.errors import InvalidKey, TorchdError

logger = logging.getLogger(__name__)
KINDS = ("management", "inference", "API")


class TokenStore:
    def __init__(self, key_file: Path, enabled: bool) -> None:
        self.key_file = key_file
        self.enabled = enabled
        self.keys: dict[str, str] = {}
        if enabled:
            self.keys = self._load() or self._generate()

    def _load(self) -> dict[str, str] | None:
        try:
            data = json.loads(self.key_file.read_text())
            keys = {kind: str(data[kind]["key"]) for kind in KINDS}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._make_private()
        logger.info("token authorization on; keys read from %s", self.key_file)
        return keys

    def _make_private(self) -> None:
        """Keys readable by others are keys given away: an existing file is narrowed to 0600."""
        mode = stat.S_IMODE(self.key_file.stat().st_mode)
        if mode & 0o077:
            logger.warning("%s was readable by others (mode %o); narrowing it to 0600",
                           self.key_file, mode)
            os.chmod(self.key_file, 0o600)

    def _generate(self) -> dict[str, str]:
        keys = {kind: secrets.token_urlsafe(24) for kind in KINDS}
        self._write(keys)
        logger.info("token authorization on; new keys written to %s", self.key_file)
        return keys

    def _write(self, keys: dict[str, str]) -> None:
        """Atomically, created 0600 from the start (never readable by others, even briefly)."""
        tmp = self.key_file.with_name(self.key_file.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({kind: {"key": key} for kind, key in keys.items()}, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.key_file)

    def check(self, kind: str, scope: dict) -> TorchdError | None:
        """None when allowed; else the 401 to answer."""
        values = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
        return self.check_values(kind, values)

    def check_values(self, kind: str, authorizations: list[bytes]) -> TorchdError | None:
        """The rule for any transport: one of the ``authorization`` values (HTTP headers, gRPC
        metadata) is ``Bearer <key>``. None when allowed; else the 401 to answer."""
        if not self.enabled:
            return None
        expected = f"Bearer {self.keys[kind]}".encode()
        for value in authorizations:
            if secrets.compare_digest(value, expected):
                return None
        return InvalidKey("Token Authorization failed. Token either incorrect, expired, or not "
                          "provided correctly")

    def check_api(self, authorization: str | None) -> bool:
        return self.enabled and authorization is not None and secrets.compare_digest(
            authorization.encode(), f"Bearer {self.keys['API']}".encode())

    def rotate(self, kind: str) -> str:
        self.keys[kind] = secrets.token_urlsafe(24)
        self._write(self.keys)
        return self.keys[kind]
