"""The API's edge (issue 10 items 16, 17, 19): timestamps with a zone, every status in the
OpenAPI document, Allow on OPTIONS and 405, offline /docs, rate limits on the token
endpoint and on failed key checks, who may read /metrics, no object reprs in 415s."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from platform_api.ratelimit import RateLimits, TokenBuckets
from tests.integration.conftest import clear_platform_caches

METRICS_TOKEN = "scrape-" + "x" * 40
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The app on a SQLite file, a metrics token configured, and keys of several kinds."""
    yield from _serve(f"sqlite:///{tmp_path / 'platform.db'}", tmp_path, monkeypatch)


@pytest.fixture()
def api_on_postgresql(postgres_database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """The same app on a fresh PostgreSQL database."""
    yield from _serve(postgres_database.sqlalchemy_url, tmp_path, monkeypatch)
    from platform_api.db import get_engine

    get_engine(postgres_database.sqlalchemy_url).dispose()


def _serve(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    monkeypatch.setenv("BIOVERSE_API_DATABASE_URL", url)
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOVERSE_API_METRICS_TOKEN", METRICS_TOKEN)
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.main import create_app

    clear_platform_caches()
    app = create_app()
    with TestClient(app) as client:
        with db.session_factory()() as session:
            keys = {"app": create_key(session, role="app", tenant_id="t1"),
                    "app_b": create_key(session, role="app", tenant_id="t1"),
                    "tenant_admin": create_key(session, role="admin", tenant_id="t1"),
                    "root": create_key(session, role="admin", tenant_id=None)}
        yield {"client": client, "keys": keys, "app": app}
    clear_platform_caches()


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


UTC_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.mark.parametrize("backend", ["api", "api_on_postgresql"])
def test_timestamps_carry_a_zone_and_post_and_get_agree(backend: str, request: pytest.FixtureRequest) -> None:
    """Item 16/19: SQLite hands back naive datetimes; every answer says UTC, the same way."""
    api = request.getfixturevalue(backend)
    client, key = api["client"], api["keys"]["app"]
    made = client.post("/v1/twins", json={"patient_id": "zone-1"}, headers=_h(key))
    assert made.status_code == 201
    read = client.get(f"/v1/twins/{made.json()['id']}", headers=_h(key)).json()
    listed = client.get("/v1/twins", params={"patient_id": "zone-1"}, headers=_h(key)).json()["items"][0]
    for answer in (made.json(), read, listed):
        for field in ("created_at", "updated_at"):
            assert UTC_STAMP.match(answer[field]), (field, answer[field])
    assert made.json()["created_at"] == read["created_at"] == listed["created_at"]
    audit = client.get("/v1/admin/audit", headers=_h(api["keys"]["root"])).json()["items"]
    assert audit and all(UTC_STAMP.match(event["at"]) for event in audit)


def test_openapi_documents_every_error_status_with_the_body_sent(api: dict) -> None:
    """Item 16: 401/403/404/409/413/415/422/429/503 are in the document, with the schema sent."""
    client, keys = api["client"], api["keys"]
    document = client.get("/openapi.json").json()
    assert document["components"]["schemas"]["ErrorDetail"]["required"] == ["detail"]
    error = "#/components/schemas/ErrorDetail"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("security"):
                for status in ("401", "403", "429", "503"):
                    assert responses[status]["content"]["application/json"]["schema"] == {"$ref": error}, (method, path, status)
                assert "Retry-After" in responses["429"]["headers"]
            if "{" in path:
                assert "404" in responses, (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= set(responses), (method, path)
    for path in ("/v1/twins", "/v1/twins/{twin_id}/predictions", "/v1/predictions/batch",
                 "/v1/registry/models/{name}/versions/{version}/approve", "/v1/registry/models/{name}/rollback"):
        assert "409" in document["paths"][path]["post"]["responses"], path
    twins = document["paths"]["/v1/twins"]["post"]["responses"]
    assert twins["409"]["content"]["application/json"]["schema"] == {"$ref": error}
    upload = document["paths"]["/v1/twins/{twin_id}/images"]["post"]["responses"]
    assert upload["415"]["content"]["application/json"]["schema"] == {"$ref": error}
    assert {"$ref": error} in twins["422"]["content"]["application/json"]["schema"]["anyOf"]
    token = document["paths"]["/v1/oauth/token"]["post"]["responses"]
    assert token["429"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OAuthError"}
    assert "Retry-After" in token["429"]["headers"] and token["503"]["content"]["application/json"]["schema"] == {"$ref": error}
    # and the bodies really are {"detail": "..."}: a 409 and a 401
    client.post("/v1/twins", json={"patient_id": "dup"}, headers=_h(keys["app"]))
    again = client.post("/v1/twins", json={"patient_id": "dup"}, headers=_h(keys["app"]))
    assert again.status_code == 409 and isinstance(again.json()["detail"], str)
    assert set(client.get("/v1/twins").json()) == {"detail"}


def test_options_answers_204_and_405_lists_every_method_in_allow(api: dict) -> None:
    """Item 16: OPTIONS answered 405 without Allow, and 405 named only one route's methods."""
    client = api["client"]
    options = client.options("/v1/twins")
    assert options.status_code == 204
    assert {m.strip() for m in options.headers["allow"].split(",")} == {"GET", "OPTIONS", "POST"}
    refused = client.delete("/v1/twins")
    assert refused.status_code == 405 and refused.headers["allow"] == options.headers["allow"]
    assert "DELETE" in refused.json()["detail"]
    one = client.options("/v1/twins/any-id")
    assert {m.strip() for m in one.headers["allow"].split(",")} == {"GET", "OPTIONS", "PATCH"}
    head = client.head("/v1/twins")  # not served, so not advertised
    assert head.status_code == 405 and "HEAD" not in head.headers["allow"]
    batch = client.options("/v1/predictions/batch")  # not /v1/predictions/{prediction_id}
    assert {m.strip() for m in batch.headers["allow"].split(",")} == {"OPTIONS", "POST"}
    assert client.options("/no/such/path").status_code == 404


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_work_offline(api: dict, page: str) -> None:
    """Item 19: /docs loaded Swagger UI from a CDN (a blank page offline)."""
    client = api["client"]
    html = client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'|spec-url=["']([^"']+)["']""", html.text)
    urls = [u for group in urls for u in group if u]
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}", html.text, re.I), "the page names an external host"
    assert len(urls) >= 2, urls
    for url in urls:
        assert url.startswith("/"), url
        assert client.get(url).status_code == 200, url


def test_token_endpoint_is_rate_limited_per_address(api: dict) -> None:
    """Item 17: the OAuth2 token endpoint took any number of guesses."""
    client, app = api["client"], api["app"]
    app.state.rate_limits = RateLimits(per_minute=1, burst=3)
    guess = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "wrong"}
    assert [client.post("/v1/oauth/token", data=guess).status_code for _ in range(3)] == [401, 401, 401]
    limited = client.post("/v1/oauth/token", data={**guess, "client_id": "someone-else"})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"] == "too_many_requests"
    other = TestClient(app, client=("203.0.113.9", 50000))  # another address has its own bucket
    assert other.post("/v1/oauth/token", data={**guess, "client_id": "fresh"}).status_code == 401


def test_token_endpoint_is_rate_limited_per_client_id() -> None:
    """Item 17: one client id guessed from many addresses runs out too."""
    limits = RateLimits(per_minute=1, burst=2)
    assert [limits.token_request(f"10.0.0.{i}", "target") for i in range(2)] == [0, 0]
    assert limits.token_request("10.0.0.99", "target") >= 1
    assert limits.token_request("10.0.0.99", "another") == 0


def test_failed_key_checks_are_rate_limited_per_address(api: dict) -> None:
    """Item 17: wrong API keys could be tried without limit."""
    client, keys, app = api["client"], api["keys"], api["app"]
    app.state.rate_limits = RateLimits(per_minute=1, burst=3)
    assert client.get("/v1/twins", headers=_h(keys["app"])).status_code == 200  # verified: now in the cache
    for _ in range(5):  # no credentials at all guess nothing: not counted
        assert client.get("/v1/twins").status_code == 401
    assert [client.get("/v1/twins", headers=_h(f"bv_nokey_guess{i}")).status_code for i in range(3)] == [401] * 3
    blocked = client.get("/v1/twins", headers=_h("bv_nokey_guess4"))
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert "failed credential checks" in blocked.json()["detail"]
    assert client.get("/v1/twins", headers=_h(keys["app"])).status_code == 200  # a verified key still works
    assert client.get("/v1/twins", headers=_h(keys["app_b"])).status_code == 429  # unverified ones wait
    other = TestClient(app, client=("203.0.113.7", 50000))
    assert other.get("/v1/twins", headers=_h(keys["app_b"])).status_code == 200


def test_token_buckets_refill() -> None:
    buckets = TokenBuckets(per_minute=120, burst=1)  # one token every 0.5 s
    assert buckets.take("a") == 0.0
    assert 0 < buckets.take("a") <= 0.5 and buckets.wait("a") > 0
    import time

    time.sleep(0.6)
    assert buckets.wait("a") == 0.0 and buckets.take("a") == 0.0


def test_metrics_need_the_metrics_token_or_a_platform_admin(api: dict) -> None:
    """Item 17: /metrics answered anyone."""
    client, keys = api["client"], api["keys"]
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=_h("not-the-token")).status_code == 401
    assert client.get("/metrics", headers=_h(keys["app"])).status_code == 403
    assert client.get("/metrics", headers=_h(keys["tenant_admin"])).status_code == 403  # metrics span tenants
    for credential in (METRICS_TOKEN, keys["root"]):
        scraped = client.get("/metrics", headers=_h(credential))
        assert scraped.status_code == 200 and "bioverse_http_request_duration_seconds" in scraped.text


def test_an_unreadable_image_is_named_without_a_python_repr() -> None:
    """Item 17: a 415 said 'cannot identify image file <_io.BytesIO object at 0x7f...>'."""
    from training.errors import ImageDecodeError
    from training.imaging.decode import decode_image

    for data in (b"\xff\xd8\xff" + b"x" * 64, b"\x89PNG\r\n\x1a\n" + b"y" * 64):
        with pytest.raises(ImageDecodeError) as raised:
            decode_image(data, size=8, channels=1, name="scan.jpg")
        message = str(raised.value)
        assert "scan.jpg" in message and "0x" not in message and "object at" not in message and "<" not in message


def test_readme_curl_examples_quote_urls_with_query_strings() -> None:
    """Item 19: `curl ...?limit=50&offset=0` ran in the background in a shell."""
    lines = [line for line in README.read_text().splitlines() if line.lstrip().startswith("curl")]
    assert lines
    for line in lines:
        for word in line.split():
            if "?" in word or "&" in word:
                assert word[0] in "\"'", line


def test_an_unknown_query_parameter_is_refused_naming_it(api: dict) -> None:
    """Item 16 (schemathesis: schema-violating request accepted): `?limt=5` was ignored."""
    client, key = api["client"], api["keys"]["app"]
    typo = client.get("/v1/twins", params={"limt": 5}, headers=_h(key))
    assert typo.status_code == 422
    assert typo.json()["detail"][0]["loc"] == ["query", "limt"] and "limit" in typo.json()["detail"][0]["msg"]
    assert client.get("/v1/twins", params={"limit": 5}, headers=_h(key)).status_code == 200
    assert client.get("/healthz", params={"x": 1}).status_code == 422
    assert "422" in client.get("/openapi.json").json()["paths"]["/healthz"]["get"]["responses"]


def test_review_page_sign_in_counts_against_the_same_limit(api: dict) -> None:
    """Item 17: the review page's sign-in form checked keys without limit."""
    client, app = api["client"], api["app"]
    app.state.rate_limits = RateLimits(per_minute=1, burst=2)
    tries = [client.post("/review/login", data={"api_key": f"bv_nokey_guess{i}"}, follow_redirects=False) for i in range(3)]
    assert [t.status_code for t in tries] == [401, 401, 429]
    assert int(tries[-1].headers["retry-after"]) >= 1 and "too many failed sign-ins" in tries[-1].text
    assert client.get("/v1/twins", headers=_h("bv_nokey_guess9")).status_code == 429  # one bucket for both doors


REDIS_URL = "redis://127.0.0.1:6379/0"


def test_rate_limits_are_shared_by_api_processes_through_redis() -> None:
    """Item 17: with several API processes, each counting alone multiplies the budget."""
    import uuid

    import redis

    prefix = f"bioverse-test:{uuid.uuid4().hex}"
    one, two = (RateLimits(per_minute=1, burst=2, redis_url=REDIS_URL, prefix=prefix) for _ in range(2))
    try:
        assert one.token_request("198.51.100.1", "c1") == 0 and two.token_request("198.51.100.1", "c2") == 0
        assert one.token_request("198.51.100.1", "c3") >= 1  # the other process spent the address's tokens
        one.auth_failed("198.51.100.2")
        two.auth_failed("198.51.100.2")
        assert one.auth_blocked("198.51.100.2") >= 1 and two.auth_blocked("198.51.100.2") >= 1
        assert two.auth_blocked("198.51.100.3") == 0
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_rate_limits_fall_back_to_the_process_when_redis_does_not_answer() -> None:
    """Redis down is no 500 and no open door: the process's own buckets stand in."""
    limits = RateLimits(per_minute=1, burst=1, redis_url="redis://127.0.0.1:1/0")
    assert limits.token_request("198.51.100.9", None) == 0
    assert limits.token_request("198.51.100.9", None) >= 1
