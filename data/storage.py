"""Storage through fsspec (local paths, file://, s3:// via s3fs, any fsspec URL), optionally obstore for S3.

Every remote call goes through ``with_retries`` (exponential backoff with jitter on transient errors) and
``explain`` (turns a missing object, refused credentials or an unreachable endpoint into a ValueError that
names the object and says what to do).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable

import fsspec

from data.format import checksum

_TRANSIENT_NAMES = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                    "ServerDisconnectedError", "ClientPayloadError", "ResponseStreamingError",
                    "IncompleteReadError", "GenericError", "ConnectionClosedError")
_CREDENTIAL_NAMES = ("PermissionDeniedError", "UnauthenticatedError", "NoCredentialsError")


def _spec_get(storage_spec: Any, name: str):
    if storage_spec is None:
        return None
    if isinstance(storage_spec, dict):
        return storage_spec.get(name)
    return getattr(storage_spec, name, None)


def storage_options(url: str, storage_spec: Any = None) -> dict:
    """fsspec options for ``url``: S3 endpoint from the spec, else AWS_ENDPOINT_URL / S3_ENDPOINT_URL;
    credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (never from the spec). {} for other URLs."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    endpoint = (_spec_get(storage_spec, "endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("S3_ENDPOINT_URL"))
    region = _spec_get(storage_spec, "region") or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION")
    client_kwargs = {k: v for k, v in (("endpoint_url", endpoint), ("region_name", region)) if v}
    opts: dict[str, Any] = {"client_kwargs": client_kwargs,
                            # fail over to our own retries quickly instead of botocore's long defaults
                            "config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                              "retries": {"max_attempts": 2}}}
    if _spec_get(storage_spec, "anon"):
        opts["anon"] = True
    elif os.environ.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = os.environ["AWS_ACCESS_KEY_ID"]
        opts["secret"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    client = _spec_get(storage_spec, "client")
    if client:
        opts["sciscale_client"] = client
    return opts


def _fsspec_options(options: dict | None) -> dict:
    return {k: v for k, v in (options or {}).items() if not k.startswith("sciscale_")}


def filesystem(url: str, options: dict | None = None):
    """(fsspec filesystem, path inside it) for ``url``."""
    try:
        return fsspec.core.url_to_fs(url, **_fsspec_options(options))
    except (ImportError, ValueError) as exc:
        raise ValueError(f"{url}: no fsspec filesystem for this URL ({exc}); install the fsspec backend for "
                         "its scheme or use a local path, file:// or s3://") from exc


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def _endpoint(options: dict | None) -> str:
    return ((options or {}).get("client_kwargs") or {}).get("endpoint_url") or "the default AWS endpoint"


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: connection resets, timeouts, throttling; not missing objects or credentials."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    names = {c.__name__ for c in type(exc).__mro__}
    if names & set(_CREDENTIAL_NAMES) or "NotFoundError" in names:
        return False
    return bool(names & set(_TRANSIENT_NAMES)) or isinstance(exc, (ConnectionError, TimeoutError, OSError))


def explain(exc: BaseException, where: str, options: dict | None = None, missing_hint: str = "") -> ValueError:
    """A ValueError naming ``where`` and what to do, for an error from a storage call."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, FileNotFoundError) or "NotFoundError" in names:
        hint = missing_hint or "check the URL; if the dataset version is incomplete, rewrite it"
        return ValueError(f"{where}: object not found. {hint}")
    if isinstance(exc, PermissionError) or names & set(_CREDENTIAL_NAMES):
        return ValueError(f"{where}: access denied ({exc}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in "
                          f"the environment and that they may read this bucket at {_endpoint(options)}")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"} or isinstance(
            exc, ConnectionRefusedError):
        return ValueError(f"{where}: cannot reach the object store at {_endpoint(options)} ({exc}). Check "
                          "data.storage.endpoint_url / AWS_ENDPOINT_URL and that the server is running")
    return ValueError(f"{where}: storage error {type(exc).__name__}: {exc}")


def with_retries(fn: Callable[[], Any], where: str, options: dict | None = None, *, attempts: int = 4,
                 base_delay: float = 0.2, max_delay: float = 5.0, missing_hint: str = "",
                 sleep: Callable[[float], None] = time.sleep):
    """Call ``fn``; retry transient errors with exponential backoff and full jitter; explain the rest."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc) or attempt == attempts - 1:
                raise explain(exc, where, options, missing_hint) from exc
            sleep(random.uniform(0, min(max_delay, base_delay * 2 ** attempt)))
    raise AssertionError("unreachable")


def read_object(fs, path: str, where: str, options: dict | None = None, missing_hint: str = "") -> bytes:
    """The whole object at ``path`` (retried, explained)."""
    return with_retries(lambda: fs.cat_file(path), where, options, missing_hint=missing_hint)


def write_object(fs, path: str, data: bytes, where: str, options: dict | None = None) -> None:
    """Write ``data`` to ``path``; on a local filesystem through a temporary name and a rename."""
    if _is_local(fs):
        tmp = f"{path}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with_retries(lambda: fs.pipe_file(path, data), where, options)


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


class FsspecClient:
    """Whole-object GETs through fsspec."""

    name = "fsspec"

    def __init__(self, url: str, options: dict | None = None) -> None:
        self.url, self.options = url, options
        self.fs, self.root = filesystem(url, options)

    def get(self, key: str):
        return self.fs.cat_file(join(self.root, key))

    def download(self, key: str, path: str) -> tuple[int, str]:
        """Fetch ``key`` whole and write it to the local file ``path``. Returns (bytes, checksum)."""
        data = self.get(key)
        with open(path, "wb") as f:
            f.write(memoryview(data))
        return len(data), checksum(data)


class ObstoreClient:
    """Whole-object GETs through obstore (Rust); measured faster than s3fs on S3 (docs/benchmarks-data.md)."""

    name = "obstore"

    def __init__(self, url: str, options: dict | None = None) -> None:
        from obstore.store import S3Store

        self.url, self.options = url, options
        options = options or {}
        bucket, _, prefix = url.split("://", 1)[1].partition("/")
        config: dict[str, Any] = {}
        endpoint = (options.get("client_kwargs") or {}).get("endpoint_url")
        if endpoint:
            config["endpoint"] = endpoint
            config["allow_http"] = endpoint.startswith("http://")
        region = (options.get("client_kwargs") or {}).get("region_name")
        config["region"] = region or "us-east-1"
        if options.get("anon"):
            config["skip_signature"] = True
        elif options.get("key"):
            config["access_key_id"], config["secret_access_key"] = options["key"], options.get("secret", "")
        self.store = S3Store(bucket, prefix=prefix.strip("/") or None, config=config)

    def get(self, key: str):
        import obstore

        return obstore.get(self.store, key).bytes()

    def download(self, key: str, path: str) -> tuple[int, str]:
        """Stream ``key`` into the local file ``path``: network and disk writes overlap, and only one chunk
        is in memory. Returns (bytes, checksum)."""
        import obstore
        import xxhash

        hasher, size = xxhash.xxh3_64(), 0
        with open(path, "wb") as f:
            for chunk in obstore.get(self.store, key).stream(min_chunk_size=4 << 20):
                view = memoryview(chunk)
                f.write(view)
                hasher.update(view)
                size += len(view)
        return size, f"xxh3_64:{hasher.hexdigest()}"


def build_client(url: str, options: dict | None = None):
    """The GET client for ``url``: obstore for s3:// when installed (``client: auto``), else fsspec."""
    choice = (options or {}).get("sciscale_client", "auto")
    if url.startswith("s3://") and choice in ("auto", "obstore"):
        try:
            return ObstoreClient(url, options)
        except ImportError:
            if choice == "obstore":
                raise ValueError("data.storage.client is 'obstore' but obstore is not installed; "
                                 "pip install obstore or set client: fsspec") from None
    return FsspecClient(url, options)
