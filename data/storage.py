"""The one storage layer: every URL (local path, file://, s3://, any fsspec protocol) is reached through here.

``SCHEMES`` maps a URL scheme to what it needs: fsspec options (``storage_options``), the pyarrow filesystem Ray
Train's RunConfig takes (``arrow_filesystem``) and the whole-object GET client of the reader (``build_client``);
settings come from the job spec's ``storage`` section first, then the environment, in one documented order
(``resolve_s3``). Runs root, Ray Train storage, reader, writer, converters, generators and the CLI all call it.

Every remote call goes through ``with_retries`` (exponential backoff with jitter on transient errors) and
``explain`` (turns a missing object, refused credentials or an unreachable endpoint into a ValueError that
names the object and says what to do).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import fsspec

from data.format import checksum

_TRANSIENT_NAMES = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                    "ServerDisconnectedError", "ClientPayloadError", "ResponseStreamingError",
                    "IncompleteReadError", "GenericError", "ConnectionClosedError")
_CREDENTIAL_NAMES = ("PermissionDeniedError", "UnauthenticatedError", "NoCredentialsError")


# Read by resolve_s3 in this order; forwarded to Ray workers as they are (orchestrator/launch.py worker_env).
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
ENV_VARS = (*ENDPOINT_VARS, *REGION_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            # SeaweedFS rejects the default CRC checksums of newer AWS SDKs
            "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")


def _spec_get(storage_spec: Any, name: str):
    if storage_spec is None:
        return None
    if isinstance(storage_spec, dict):
        return storage_spec.get(name)
    return getattr(storage_spec, name, None)


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


@dataclass(frozen=True)
class S3Settings:
    """How an S3 store is reached, resolved once: the spec first, then the environment (ENDPOINT_VARS,
    REGION_VARS, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), then AWS's defaults."""

    endpoint_url: str | None
    region: str
    key: str | None
    secret: str | None
    token: str | None
    anon: bool


def resolve_s3(storage_spec: Any = None) -> S3Settings:
    key = os.environ.get("AWS_ACCESS_KEY_ID") or None
    return S3Settings(endpoint_url=_spec_get(storage_spec, "endpoint_url") or _first_env(ENDPOINT_VARS),
                      region=_spec_get(storage_spec, "region") or _first_env(REGION_VARS) or "us-east-1",
                      key=key, secret=os.environ.get("AWS_SECRET_ACCESS_KEY", "") if key else None,
                      token=os.environ.get("AWS_SESSION_TOKEN") or None,
                      anon=bool(_spec_get(storage_spec, "anon")))


class Scheme:
    """How the URLs of one scheme are reached; the base class serves any fsspec protocol (memory://, gs://,
    az://, ... with their fsspec backend installed): fsspec options from the environment, the pyarrow
    filesystem as a wrapper of the fsspec one, whole-object GETs through fsspec."""

    def options(self, storage_spec: Any) -> dict:
        return {}

    def arrow(self, url: str, storage_spec: Any):
        from pyarrow import fs as pafs

        fs, path = filesystem(url, self.options(storage_spec))
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    def client(self, url: str, options: dict):
        return FsspecClient(url, options)


class LocalScheme(Scheme):
    """Local paths and file:// URLs; Ray Train writes to them with its own local handling (no filesystem)."""

    def arrow(self, url: str, storage_spec: Any):
        return None, local_path(url)


class S3Scheme(Scheme):
    """s3:// through s3fs, pyarrow's S3 filesystem for Ray Train's state, and obstore GETs (measured faster)."""

    def options(self, storage_spec: Any) -> dict:
        s3 = resolve_s3(storage_spec)
        client_kwargs = {"region_name": s3.region, **({"endpoint_url": s3.endpoint_url} if s3.endpoint_url else {})}
        opts: dict[str, Any] = {"client_kwargs": client_kwargs,
                                # fail over to our own retries quickly instead of botocore's long defaults
                                "config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                                  "retries": {"max_attempts": 2}}}
        if s3.anon:
            opts["anon"] = True
        elif s3.key:
            opts.update(key=s3.key, secret=s3.secret, **({"token": s3.token} if s3.token else {}))
        return opts

    def arrow(self, url: str, storage_spec: Any):
        from pyarrow import fs as pafs

        s3, kwargs = resolve_s3(storage_spec), {}
        if s3.endpoint_url:
            scheme, _, host = s3.endpoint_url.partition("://")
            kwargs = {"endpoint_override": host, "scheme": scheme}
        # Ray Train persists its own state (checkpoint registry) here from the controller: a 3 s request timeout
        # and 3 attempts (pyarrow's defaults) turn a short object-store outage into a failed run
        fs = pafs.S3FileSystem(access_key=s3.key, secret_key=s3.secret, session_token=s3.token, anonymous=s3.anon,
                               region=s3.region, request_timeout=60, connect_timeout=10,
                               retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=10), **kwargs)
        return fs, url.split("://", 1)[1].rstrip("/")

    def client(self, url: str, options: dict):
        choice = options.get("sciscale_client", "auto")
        if choice in ("auto", "obstore"):
            try:
                return ObstoreClient(url, options)
            except ImportError:
                if choice == "obstore":
                    raise ValueError("storage.client is 'obstore' but obstore is not installed; "
                                     "pip install obstore or set client: fsspec") from None
        return FsspecClient(url, options)


# One entry per URL scheme with settings of its own; any other fsspec protocol is served by Scheme().
SCHEMES: dict[str, Scheme] = {"file": LocalScheme(), "s3": S3Scheme(), "s3a": S3Scheme()}


def scheme_of(url: str) -> str:
    """'file' for local paths and file:// URLs, else the URL's scheme."""
    return url.split("://", 1)[0] if "://" in url else "file"


def _scheme(url: str) -> Scheme:
    return SCHEMES.get(scheme_of(url), Scheme())


def local_path(url: str) -> str:
    """The absolute local path of a local path or file:// URL."""
    return os.path.abspath(os.path.expanduser(url.removeprefix("file://")))


def storage_options(url: str, storage_spec: Any = None) -> dict:
    """fsspec options for ``url`` from the storage settings and the environment ({} for local paths)."""
    opts = _scheme(url).options(storage_spec)
    client = _spec_get(storage_spec, "client")
    if client and scheme_of(url) in ("s3", "s3a"):
        opts["sciscale_client"] = client
    return opts


def open_url(url: str, storage_spec: Any = None):
    """(fsspec filesystem, path inside it) for ``url`` with the storage settings applied."""
    if scheme_of(url) == "file":
        return filesystem("file://" + local_path(url))[0], local_path(url)
    return filesystem(url, storage_options(url, storage_spec))


def arrow_filesystem(url: str, storage_spec: Any = None):
    """(pyarrow filesystem or None for local paths, path inside it): what Ray Train's RunConfig takes as
    storage_filesystem and storage_path."""
    return _scheme(url).arrow(url, storage_spec)


def _fsspec_options(options: dict | None) -> dict:
    return {k: v for k, v in (options or {}).items() if not k.startswith("sciscale_")}


def filesystem(url: str, options: dict | None = None):
    """(fsspec filesystem, path inside it) for ``url``; ``options`` None: resolved from the environment."""
    if options is None:
        options = storage_options(url)
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


class StorageError(ValueError):
    """A storage call that failed, explained; ``transient`` says whether trying again later may succeed (an
    unreachable store) or not (a missing object, refused credentials): trainers/failures.py reads it."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):
        return (type(self), (str(self), self.transient))


def explain(exc: BaseException, where: str, options: dict | None = None, missing_hint: str = "") -> StorageError:
    """A StorageError (a ValueError) naming ``where`` and what to do, for an error from a storage call."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, FileNotFoundError) or "NotFoundError" in names:
        hint = missing_hint or "check the URL; if the dataset version is incomplete, rewrite it"
        return StorageError(f"{where}: object not found. {hint}", transient=False)
    if isinstance(exc, PermissionError) or names & set(_CREDENTIAL_NAMES):
        return StorageError(f"{where}: access denied ({exc}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in "
                            f"the environment and that they may read this bucket at {_endpoint(options)}", False)
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"} or isinstance(
            exc, ConnectionRefusedError):
        return StorageError(f"{where}: cannot reach the object store at {_endpoint(options)} ({exc}). Check "
                            "storage.endpoint_url / AWS_ENDPOINT_URL and that the server is running", True)
    return StorageError(f"{where}: storage error {type(exc).__name__}: {exc}", transient=is_transient(exc))


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
            if options.get("token"):
                config["token"] = options["token"]
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
    """The GET client for ``url`` (its scheme's choice: obstore for s3:// with ``client: auto``, else fsspec)."""
    return _scheme(url).client(url, storage_options(url) if options is None else options)
