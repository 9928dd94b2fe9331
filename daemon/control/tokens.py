"""Token authorization (SPEC 5.3): keys in key_file.json (mode 0600), Bearer header checks.

A key file that torchd may not narrow to 0600 because it is read-only (a Kubernetes Secret
mounted with defaultMode 0440 for the pod's group) is used as it is, with a warning, as long as
others cannot read it; its keys cannot be rotated through /token.

As TorchServe's, a management or inference key that torchd makes (at start, or through /token)
expires ``token_expiration_min`` minutes later; its ``"expiration time"`` is in the key file,
in TorchServe's form. A key file's own keys follow their expiration times (none: no expiry); at
start, expired keys of a file torchd may write are made anew (TorchServe makes every key anew at
each start).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from daemon.errors import BadRequest, InternalServerError, InvalidKey, TorchdError
from daemon.osutil import write_atomically

logger = logging.getLogger(__name__)
KINDS = ("management", "inference", "API")
EXPIRING = ("management", "inference")   # TorchServe's API key never expires
EXPIRATION = "expiration time"


class TokenStore:
    def __init__(self, key_file: Path, enabled: bool, lifetime_minutes: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.key_file = key_file
        self.enabled = enabled
        self.lifetime = lifetime_minutes * 60
        self.clock = clock
        self.keys: dict[str, str] = {}
        self.expires: dict[str, float | None] = {}   # epoch seconds; None: never
        self.read_only = False   # keys from a file torchd cannot change (a mounted Secret)
        if enabled and not self._load():
            self._generate()

    def _load(self) -> bool:
        try:
            data = json.loads(self.key_file.read_text())
            keys = {kind: str(data[kind]["key"]) for kind in KINDS}
            expires = {kind: _instant(data[kind].get(EXPIRATION)) for kind in EXPIRING}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        self._make_private()
        self.keys, self.expires = keys, expires
        logger.info("token authorization on; keys read from %s", self.key_file)
        shortened = self._within_lifetime()
        expired = [kind for kind in EXPIRING if self._expired(kind)]
        if self.read_only:
            if expired:
                logger.warning("the %s key(s) of %s have expired and the file is read-only: "
                               "they are refused", " and ".join(expired), self.key_file)
            return True
        for kind in expired:
            self._renew(kind)
        if expired or shortened:
            self._write()
        if expired:
            logger.info("the expired %s key(s) of %s were made anew", " and ".join(expired),
                        self.key_file)
        return True

    def _within_lifetime(self) -> bool:
        """A key may not outlive token_expiration_min from now: a shorter setting applies at
        the next start to the keys a file holds. Whether any expiration time moved."""
        latest = self.clock() + self.lifetime
        moved = False
        for kind in EXPIRING:
            expires = self.expires[kind]
            if expires is not None and expires > latest:
                self.expires[kind], moved = latest, True
        return moved

    def _renew(self, kind: str) -> str:
        self.keys[kind] = secrets.token_urlsafe(24)
        if kind in EXPIRING:
            self.expires[kind] = self.clock() + self.lifetime
        return self.keys[kind]

    def _expired(self, kind: str) -> bool:
        """TorchServe's rule: a key is refused from its expiration time on."""
        expires = self.expires.get(kind)
        return expires is not None and self.clock() >= expires

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

    def _generate(self) -> None:
        for kind in KINDS:
            self._renew(kind)
        self._write()
        logger.info("token authorization on; new keys written to %s", self.key_file)

    def _write(self) -> None:
        """Atomically, created 0600 from the start (never readable by others, even briefly)."""
        document: dict[str, dict[str, str]] = {}
        for kind in KINDS:
            document[kind] = {"key": self.keys[kind]}
            expires = self.expires.get(kind)
            if expires is not None:
                document[kind][EXPIRATION] = _instant_text(expires)
        data = json.dumps(document, indent=2).encode()
        try:   # a full or read-only disk leaves the file as it was, and no temp file about
            write_atomically(self.key_file, data, f".{self.key_file.name}.tmp-")
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write the key file {self.key_file} (key_file): "
                                     f"{exc.strerror or exc}") from exc

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
            if secrets.compare_digest(value, expected) and not self._expired(kind):
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
        kept = dict(self.keys), dict(self.expires)
        key = self._renew(kind)
        try:
            self._write()
        except OSError as exc:   # a key the file does not hold would be lost at the restart
            self.keys, self.expires = kept
            raise InternalServerError(f"{exc.strerror}: the {kind} key stays as it was") from exc
        return key


# TorchServe writes java.time.Instant's text: 2024-02-16T21:12:24.801167Z (up to nine digits of
# fraction); Python's datetime reads six at most.
_INSTANT = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")


def _instant(text: object) -> float | None:
    """An expiration time's epoch seconds; None when the key has none. A value that is no time
    is a ValueError: the file is malformed, as one without keys."""
    if text is None:
        return None
    match = _INSTANT.fullmatch(str(text))
    if match is None:
        raise ValueError(f"{EXPIRATION} {text!r} is not a time such as 2024-02-16T21:12:24Z")
    stamp = datetime.datetime.fromisoformat(match.group(1)).replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp() + float("0." + (match.group(2) or "0"))


def _instant_text(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
