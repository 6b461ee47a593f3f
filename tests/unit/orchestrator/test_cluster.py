"""orchestrator.cluster without a Ray head: the token is found in Ray's order, and a refusal reads as one
screen naming where sciscale looked and how to get the token."""

from __future__ import annotations

import pytest

from orchestrator import cluster


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no token variables: nothing from the machine's ~/.ray or shell leaks in."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def _default_file(home, text: str) -> None:
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(text)


def test_no_source_means_no_token(home):
    assert cluster.resolve_token() is None
    assert cluster.auth_headers(None) == {}


def test_sources_win_in_rays_order(home, tmp_path, monkeypatch):
    _default_file(home, "from-home\n")
    assert cluster.resolve_token() == cluster.Token("from-home", str(home / ".ray" / "auth_token"))
    (tmp_path / "tok").write_text("  from-path\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert cluster.resolve_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "")  # empty counts as unset, as in Ray's loader
    assert cluster.resolve_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    token = cluster.resolve_token()
    assert token == cluster.Token("from-env", "$RAY_AUTH_TOKEN")
    assert cluster.auth_headers(token) == {"Authorization": "Bearer from-env"}


@pytest.mark.parametrize("content", [None, ""])
def test_a_token_path_without_a_token_is_an_error(home, tmp_path, monkeypatch, content):
    _default_file(home, "from-home")  # Ray does not fall back to it either
    path = tmp_path / "tok"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    with pytest.raises(ValueError, match=f"RAY_AUTH_TOKEN_PATH={path}: no such file"):
        cluster.resolve_token()


def test_missing_token_message_names_every_source_and_the_fix(home):
    text = cluster.auth_error("http://head:8265", None, "Authentication required: Unauthorized\n\nmore")
    assert "http://head:8265 requires an auth token" in text
    assert "$RAY_AUTH_TOKEN: unset" in text and "$RAY_AUTH_TOKEN_PATH: unset" in text
    assert f"{home / '.ray' / 'auth_token'}: absent" in text
    assert "ray get-auth-token" in text and "sciscale stack status --env" in text and "sciscale-ray-auth" in text
    assert len(text.splitlines()) <= 12


def test_rejected_token_message_says_which_one(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    text = cluster.auth_error("http://head:8265", cluster.resolve_token(), "Authentication failed: Forbidden")
    assert "rejected the auth token from $RAY_AUTH_TOKEN (Authentication failed: Forbidden)" in text
    assert "$RAY_AUTH_TOKEN: set" in text and "wrong" not in text  # never the token itself


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "ray://head:10001", "auto"])
def test_only_job_api_urls_are_accepted(address):
    with pytest.raises(ValueError, match="expected the Ray Job API URL"):
        cluster.job_client(address)
