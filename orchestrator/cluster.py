"""How sciscale talks to a Ray head: the Job API client for an address, with the head's auth token.

Ray (2.5x and later) heads may require token authentication: always when started with RAY_AUTH_MODE=token,
and by themselves when the head's machine holds ``~/.ray/auth_token``. sciscale looks the token up in
Ray's own order (``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else
``~/.ray/auth_token``; the first one set wins) and sends it as an explicit ``Authorization: Bearer``
header. Ray's client adds that header itself only when RAY_AUTH_MODE=token was set before ``ray`` was
imported, which a CLI cannot promise. A missing or rejected token and an unreachable head each end in one
ValueError (the CLI prints ``error: ...`` and exits 2). Torch-free: imported by the CLI at start-up.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# the Kubernetes secret `sciscale render kuberay` reads the token from (docs/deploy.md creates it)
KUBERAY_TOKEN_SECRET, KUBERAY_TOKEN_KEY = "sciscale-ray-auth", "token"
# Ray's Job client takes this variable (then RAY_ADDRESS) over its address argument
_API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


@dataclass(frozen=True)
class Token:
    """An auth token and where it was found (for messages; never print ``value``)."""

    value: str
    source: str


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def resolve_token() -> Token | None:
    """The token Ray itself would use here, or None. An empty variable counts as unset, as in Ray; a
    RAY_AUTH_TOKEN_PATH naming no readable, non-empty file is an error (Ray aborts on it too)."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return Token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    if os.environ.get(TOKEN_PATH_ENV):
        path = Path(os.environ[TOKEN_PATH_ENV]).expanduser()
        value = _read_token(path)
        if not value:
            raise ValueError(f"{TOKEN_PATH_ENV}={path}: no such file, or it is empty; expected a file holding the "
                             f"Ray head's auth token. Hint: fix the path, or unset {TOKEN_PATH_ENV}\n{_how_to_get()}")
        return Token(value, f"{path} (${TOKEN_PATH_ENV})")
    value = _read_token(default_token_path())
    return Token(value, str(default_token_path())) if value else None


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read the Ray auth token file {path}: {exc}. Hint: it must be readable by "
                         "this user (chmod 600 and owned by you)") from None


def auth_headers(token: Token | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.value}"} if token else {}


def job_client(address: str):
    """A ``ray.job_submission.JobSubmissionClient`` for the Job API at ``address`` (http://HEAD:8265), sending
    the token from :func:`resolve_token` when there is one. ``address`` wins over RAY_ADDRESS and
    RAY_API_SERVER_ADDRESS in the environment. Raises ValueError (one screen) for a bad or unreachable
    address and for a head that wants a token we lack or rejects the one we sent."""
    if not address.startswith(("http://", "https://")):
        raise ValueError(f"cluster address {address!r}: expected the Ray Job API URL, http://HEAD:8265 (the "
                         "dashboard port), not a GCS or ray:// address")
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token = resolve_token()
    try:
        with _api_server(address):
            return JobSubmissionClient(address, headers=auth_headers(token))
    except AuthenticationError as exc:
        raise ValueError(auth_error(address, token, exc.message)) from None
    except (ConnectionError, RuntimeError, requests.RequestException) as exc:
        raise ValueError(f"cannot reach the Ray Job API at {address}: {str(exc).rstrip('.')}. Hint: is the head "
                         "running (`ray start --head` or `sciscale stack up`) and is the dashboard port right?") from None


@contextlib.contextmanager
def _api_server(address: str) -> Iterator[None]:
    old = os.environ.get(_API_SERVER_ENV)
    os.environ[_API_SERVER_ENV] = address
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_API_SERVER_ENV, None)
        else:
            os.environ[_API_SERVER_ENV] = old


def auth_error(address: str, token: Token | None, detail: str) -> str:
    """The one-screen message for a head that refused us: what happened, where we looked, what to do."""
    reason = detail.strip().splitlines()[0] if detail.strip() else "refused"
    what = (f"the Ray head at {address} rejected the auth token from {token.source} ({reason})" if token else
            f"the Ray head at {address} requires an auth token (token authentication is on) and none was found")
    return f"{what}.\n{looked_in()}\n{_how_to_get()}"


def looked_in() -> str:
    """Where sciscale looks for the token, in Ray's order, and what each source holds now."""
    path_var = os.environ.get(TOKEN_PATH_ENV)
    default = default_token_path()
    return "\n".join([
        "sciscale looks for the token in this order (the first one set wins, as in Ray):",
        f"  1. ${TOKEN_ENV}: {'set' if os.environ.get(TOKEN_ENV, '').strip() else 'unset'}",
        f"  2. the file named by ${TOKEN_PATH_ENV}: {path_var if path_var else 'unset'}",
        f"  3. {default}: {'present' if default.is_file() else 'absent'}"])


def _how_to_get() -> str:
    return "\n".join([
        f"Hint: run `ray get-auth-token` on the head's machine and put its output into {default_token_path()} "
        f"(chmod 600), or `export {TOKEN_ENV}=...`;",
        "  a `sciscale stack` head: eval \"$(sciscale stack status --env)\";",
        f"  KubeRay: export {TOKEN_ENV}=$(kubectl -n NAMESPACE get secret {KUBERAY_TOKEN_SECRET} -o "
        f"jsonpath='{{.data.{KUBERAY_TOKEN_KEY}}}' | base64 -d)"])
