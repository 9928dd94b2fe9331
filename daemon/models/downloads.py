"""Fetch a model archive into the model store: http(s) with requests, S3 with boto3.

A download is written under a hidden temporary name in the model store, fsynced, and only then
given its final name, so a failed or interrupted download never leaves a partial archive that a
later registration could pick up. The final name is claimed with ``os.link`` (which fails if the
name exists) so two concurrent registrations of the same URL cannot overwrite each other. A
download is bounded as an archive's unpacking is (daemon/models/size_limits.py): its
Content-Length is checked before its body is read, and the bytes read as they come.

S3 sources (``s3_sse_kms``): boto3 reads its own settings (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``) from the environment;
this module never reads the environment itself. Which URLs go through boto3:

* ``s3://bucket/key`` always;
* with ``s3_sse_kms=True``, https URLs of the forms ``bucket.s3[.region].amazonaws.com/key`` and
  ``s3[.region].amazonaws.com/bucket/key``, and ``http(s)://host[:port]/bucket/key`` when
  ``host[:port]`` is the endpoint boto3 resolved (``AWS_ENDPOINT_URL``, for S3-compatible servers);
* with ``s3_sse_kms=True``, any other http(s) URL (a CloudFront or custom domain in front of a
  bucket) is fetched with a plain GET signed with AWS SigV4 for the ``s3`` service.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests

from daemon.errors import DownloadArchiveError, InternalServerError, ModelNotFound
from daemon.models.size_limits import SizeLimit, TooLarge, size_limit
from daemon.osutil import fsync_dir

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
MAX_REDIRECTS = 10
_SCHEME = re.compile(r"^(https?|file|s3)://", re.IGNORECASE)
# bucket.s3.amazonaws.com, bucket.s3.<region>.amazonaws.com, bucket.s3-<region>.amazonaws.com,
# and the same without "bucket." for path-style URLs.
_AWS_S3_HOST = re.compile(
    r"^(?:(?P<bucket>.+)\.)?s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$", re.IGNORECASE)

Signer = Callable[[str], dict[str, str]]


class FetchFailed(Exception):
    """The remote side failed us; the text is the cause, logged (the client sees TorchServe's
    fixed message)."""


def url_scheme(url: str) -> str | None:
    """``http``, ``https``, ``file`` or ``s3`` (lower case) for a URL; None for a plain name."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def url_is_allowed(url: str, allowed_urls: list[str]) -> bool:
    """True if one allowed_urls regex matches the whole URL, ignoring case."""
    for pattern in allowed_urls:
        try:
            if re.fullmatch(pattern, url, re.IGNORECASE):
                return True
        except re.error as exc:
            # A broken pattern in the config must not allow anything, nor break registration.
            logger.warning("ignoring invalid allowed_urls pattern %r: %s", pattern, exc)
    return False


def check_allowed(url: str, allowed_urls: list[str]) -> None:
    if not url_is_allowed(url, allowed_urls):
        raise ModelNotFound(f"Given URL {url} does not match any allowed URL(s)")


def archive_file_name(url: str) -> str:
    """The name a downloaded archive gets in the model store: the URL path's last segment, as
    written in the URL (not percent-decoded, so it can never turn into a path)."""
    return urlsplit(url).path.rsplit("/", 1)[-1]


def download_to_store(url: str, *, model_store: Path, allowed_urls: list[str],
                      s3_sse_kms: bool = False, timeout: float = 120.0,
                      max_size: int | None = None) -> Path:
    """Download ``url`` to ``model_store/<archive_file_name(url)>`` and return that path.
    ``max_size``: max_unpacked_archive_size (None: what leaves 1 GiB free in the store).

    Raises InternalServerError if the name is taken, DownloadArchiveError if the fetch fails
    or is too large (nothing is left behind), InternalServerError if the store cannot be
    written.
    """
    name = archive_file_name(url)
    failed = DownloadArchiveError(f"Failed to download archive from: {url}")
    if name in ("", ".", "..") or "\x00" in name:
        logger.error("cannot download %s: the URL path names no file", url)
        raise failed
    target = model_store / name
    if os.path.lexists(target):
        raise InternalServerError(f"Model file already exists {name}")
    started = time.monotonic()
    limit = size_limit(max_size, model_store)
    try:
        chunks = _bounded(_chunks_for(url, allowed_urls, s3_sse_kms, timeout, limit), limit)
        size = _write_atomically(target, chunks)
    except TooLarge as exc:
        logger.error("download of %s refused: %s", url, exc)
        raise DownloadArchiveError(f"Failed to download archive from: {url}: the archive "
                                   f"is {exc}") from exc
    except FetchFailed as exc:
        logger.error("download of %s failed: %s", url, exc)
        raise failed from exc
    except FileExistsError as exc:
        raise InternalServerError(f"Model file already exists {name}") from exc
    except OSError as exc:
        logger.error("cannot store %s as %s: %s", url, target, exc)
        raise InternalServerError(f"Failed to save archive {name}: {exc.strerror or exc}") from exc
    logger.info("downloaded %s to %s (%d bytes in %.2f s)", url, target, size,
                time.monotonic() - started)
    return target


def _chunks_for(url: str, allowed_urls: list[str], s3_sse_kms: bool,
                timeout: float, limit: SizeLimit | None = None) -> Iterator[bytes]:
    """Pick the fetcher for a URL; the iterator raises FetchFailed for remote failures, and
    TooLarge at once for a plain HTTP(S) answer whose Content-Length passes ``limit``."""
    if url_scheme(url) == "s3":
        parts = urlsplit(url)
        return _s3_chunks(parts.netloc, parts.path.lstrip("/"), None, timeout)
    if not s3_sse_kms:
        return _http_chunks(url, allowed_urls, timeout, limit=limit)
    return _s3_https_chunks(url, allowed_urls, timeout)


def _bounded(chunks: Iterator[bytes], limit: SizeLimit) -> Iterator[bytes]:
    """``chunks``, raising TooLarge once they pass ``limit`` (a server may send more than it
    declared, or declare nothing)."""
    received = 0
    try:
        for chunk in chunks:
            received += len(chunk)
            limit.check(received)
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()   # releases the connection early when we stop mid-stream


def _write_atomically(target: Path, chunks: Iterator[bytes]) -> int:
    """Write chunks to a temp file beside target, fsync, then claim target's name."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:80]}.",
                                    suffix=".part")
    tmp = Path(tmp_name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        _claim_name(tmp, target)
        fsync_dir(target.parent)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # releases the connection early if we stopped mid-stream
        tmp.unlink(missing_ok=True)
    return size


def _claim_name(tmp: Path, target: Path) -> None:
    """Give tmp the name target without ever replacing an existing file."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    # The filesystem has no hard links: claim the name with an exclusive create, then replace
    # our own placeholder.
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    try:
        os.replace(tmp, target)
    except OSError:
        target.unlink(missing_ok=True)
        raise



def _http_chunks(url: str, allowed_urls: list[str], timeout: float,
                 sign: Signer | None = None, limit: SizeLimit | None = None) -> Iterator[bytes]:
    """Stream a URL's body; redirects are followed only to URLs allowed_urls also allows."""
    try:
        with requests.Session() as session, _open_following(session, url, allowed_urls,
                                                             timeout, sign) as resp:
            if not 200 <= resp.status_code < 300:
                raise FetchFailed(f"HTTP {resp.status_code} {resp.reason}")
            expected = _expected_length(resp)
            if limit is not None and expected is not None:
                limit.check(expected)   # before a byte of the body is read
            received = 0
            for chunk in resp.iter_content(CHUNK_SIZE):
                received += len(chunk)
                yield chunk
            if expected is not None and received != expected:
                raise FetchFailed(f"body truncated: {received} of {expected} bytes")
    except requests.RequestException as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc


def _open_following(session: requests.Session, url: str, allowed_urls: list[str],
                    timeout: float, sign: Signer | None) -> requests.Response:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        headers = sign(current) if sign else {}
        resp = session.get(current, stream=True, timeout=timeout, allow_redirects=False,
                           headers=headers)
        if not resp.is_redirect:
            return resp
        resp.close()
        current = urljoin(current, resp.headers["location"])
        # Checking only the first URL would let any allowed server bounce us anywhere.
        if not url_is_allowed(current, allowed_urls):
            raise FetchFailed(f"redirected to {current}, which allowed_urls does not allow")
    raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")


def _expected_length(resp: requests.Response) -> int | None:
    """Content-Length when it describes the bytes we will see (no content-encoding)."""
    length = resp.headers.get("content-length")
    if resp.headers.get("content-encoding") or not length or not length.isdigit():
        return None
    return int(length)


def _s3_https_chunks(url: str, allowed_urls: list[str], timeout: float) -> Iterator[bytes]:
    """An https URL with s3_sse_kms: boto3 for S3 URLs, a SigV4-signed GET for anything else."""
    location = parse_s3_https_url(url, _s3_endpoint(timeout))
    if location is not None:
        bucket, key, region = location
        return _s3_chunks(bucket, key, region, timeout)
    return _http_chunks(url, allowed_urls, timeout, sign=_sigv4_signer())


def parse_s3_https_url(url: str, endpoint_url: str | None) -> tuple[str, str, str | None] | None:
    """(bucket, key, region or None) for an http(s) S3 URL, or None if it is not one.

    ``endpoint_url`` is the endpoint boto3 resolved; an URL on that host is path-style.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    path = unquote(parts.path.lstrip("/"))
    endpoint = urlsplit(endpoint_url) if endpoint_url else None
    aws = _AWS_S3_HOST.match(host)
    if endpoint is not None and parts.netloc.lower() == endpoint.netloc.lower() and not aws:
        return _path_style(path, None)
    if aws is None:
        return None
    if aws.group("bucket"):
        return (aws.group("bucket"), path, aws.group("region")) if path else None
    return _path_style(path, aws.group("region"))


def _path_style(path: str, region: str | None) -> tuple[str, str, str | None] | None:
    bucket, _, key = path.partition("/")
    return (bucket, key, region) if bucket and key else None


def _s3_client(region: str | None, timeout: float) -> Any:  # a botocore S3 client
    # boto3 is imported on first use: it costs a few hundred ms the daemon need not pay at start.
    import boto3
    from botocore.config import Config

    # A session per call: boto3's default session is not safe to share between threads.
    session = boto3.session.Session()
    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"max_attempts": 3, "mode": "standard"})
    return session.client("s3", region_name=region or session.region_name, config=config)


def _s3_endpoint(timeout: float) -> str | None:
    try:
        return _s3_client(None, timeout).meta.endpoint_url
    except Exception as exc:  # botocore raises many types for a bad local config
        raise FetchFailed(f"cannot configure the S3 client: {exc}") from exc


def _s3_chunks(bucket: str, key: str, region: str | None, timeout: float) -> Iterator[bytes]:
    from botocore.exceptions import BotoCoreError, ClientError

    if not bucket or not key:
        raise FetchFailed("an S3 URL needs a bucket and a key")
    try:
        body = _s3_client(region, timeout).get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        finally:
            body.close()
    except (BotoCoreError, ClientError) as exc:
        raise FetchFailed(f"S3 s3://{bucket}/{key}: {exc}") from exc


def _sigv4_signer() -> Signer:
    """Headers that sign a GET of a URL for the s3 service with the environment's credentials."""
    import boto3
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    try:
        session = boto3.session.Session()
        credentials = session.get_credentials()
    except Exception as exc:  # a bad profile or config file: botocore has many error types
        raise FetchFailed(f"cannot load AWS credentials: {exc}") from exc
    if credentials is None:
        raise FetchFailed("s3_sse_kms is set but no AWS credentials are configured")
    frozen = credentials.get_frozen_credentials()
    region = session.region_name or "us-east-1"

    def sign(url: str) -> dict[str, str]:
        request = AWSRequest(method="GET", url=url)
        S3SigV4Auth(frozen, "s3", region).add_auth(request)
        return dict(request.headers.items())

    return sign
