"""Token authorization (SPEC 5.3): keys in key_file.json (mode 0600), Bearer header checks.

A key file that torchd may not narrow to 0600 because it is read-only (a Kubernetes Secret
mounted with defaultMode 0440 for the pod's group) is used as it is, with a warning, as long as
others cannot read it; its keys cannot be rotated through /token.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path

from daemon.errors import BadRequest, InvalidKey, TorchdError

logger = logging.getLogger(__name__)
KINDS = ("management", "inference", "API")


class TokenStore:
    def __init__(self, key_file: Path, enabled: bool) -> None:
        self.key_file = key_file
        self.enabled = enabled
        self.keys: dict[str, str] = {}
        self.read_only = False   # keys from a file torchd cannot change (a mounted Secret)
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
        """Keys readable by others are keys given away: an existing file is narrowed to 0600.
        A read-only one readable by its group alone is used as it is (a mounted Secret)."""
        mode = stat.S_IMODE(self.key_file.stat().st_mode)
        if not mode & 0o077:
            return
        if not mode & 0o222 and not mode & 0o007:
            self._accept_read_only(mode, "it is read-only")
            return
        try:
            os.chmod(self.key_file, 0o600)
        except OSError as exc:
            if mode & 0o007:
                raise OSError(f"key file {self.key_file} is readable by others (mode {mode:o}) "
                              f"and cannot be narrowed ({exc.strerror}): give it mode 0440 or "
                              "0400 (a Secret volume's defaultMode)") from exc
            self._accept_read_only(mode, f"it cannot be changed ({exc.strerror})")
            return
        logger.warning("%s was readable by others (mode %o); narrowing it to 0600",
                       self.key_file, mode)

    def _accept_read_only(self, mode: int, why: str) -> None:
        logger.warning("%s is readable by its group (mode %o) and %s: using it as it is (a "
                       "mounted Secret?); its keys cannot be rotated through /token",
                       self.key_file, mode, why)
        self.read_only = True

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
        if self.read_only:
            raise BadRequest(f"Keys come from the read-only file {self.key_file}: change the "
                             "file (the Secret) and restart to rotate them")
        self.keys[kind] = secrets.token_urlsafe(24)
        self._write(self.keys)
        return self.keys[kind]
