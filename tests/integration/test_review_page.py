"""The validators' review page in headless Chromium (Debian's, driven by Playwright):
sign in, open a pending version, approve it, promote it and see the alias move; other
roles cannot decide."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient

from federation.processes import free_port
from tests.integration.conftest import clear_platform_caches, register_risk_models

# Skipped where Debian's chromium is missing, except in CI (.ci/run installs it and sets
# BIOVERSE_REQUIRE_BROWSER, so there a missing browser fails the test).
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("BIOVERSE_REQUIRE_BROWSER"),
                                 reason="needs Debian's chromium (apt-get install chromium)")]
MODEL = "page-risk"


@pytest.fixture()
def site(hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The platform API on a real port, two registered versions with validation reports."""
    import uvicorn

    from experiments.report import write_report_artifacts
    from training.tabular.validation import local_report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, versions=2, production=False)
    client = MlflowClient(uri, registry_uri=uri)
    rng = __import__("numpy").random.default_rng(0)
    for version in ("1", "2"):  # what the coordinator stores with a version
        label = rng.integers(0, 2, 600)
        risk = (label * 0.3 + rng.random(600) * 0.7).clip(0.01, 0.99)
        report = local_report(risk, label, {"sex": list(rng.choice(["F", "M"], 600))}, [0.2, 0.5])
        out = write_report_artifacts(report, {"model_name": MODEL, "version": version}, tmp_path / f"report-{version}")
        run_id = client.get_model_version(MODEL, version).run_id
        client.log_artifacts(run_id, str(out["report.json"].parent), "validation")
        client.set_model_version_tag(MODEL, version, "validation.status", "complete")
        client.set_model_version_tag(MODEL, version, "validation.report_sha256",
                                     hashlib.sha256(out["report.json"].read_bytes()).hexdigest())
    for key, value in {"BIOVERSE_DATA_DIR": str(tmp_path), "BIOVERSE_TRACKING_URI": uri, "BIOVERSE_API_MODEL_NAME": MODEL,
                       "BIOVERSE_API_DATABASE_URL": f"sqlite:///{tmp_path / 'platform.db'}"}.items():
        monkeypatch.setenv(key, value)
    clear_platform_caches()
    from platform_api import db
    from platform_api.auth import create_key
    from platform_api.db import migrate
    from platform_api.deps import registry_at
    from platform_api.main import create_app

    registry_at.cache_clear()
    migrate(f"sqlite:///{tmp_path / 'platform.db'}")
    with db.session_factory()() as session:  # a platform-wide model: its validators' keys have no tenant
        keys = {"clinical_validator": create_key(session, role="clinical_validator", tenant_id=None, name="Dr Quinn"),
                "data_scientist": create_key(session, role="data_scientist", tenant_id="t1", name="Dana Scientist"),
                "app": create_key(session, role="app", tenant_id="t1", name="ward app")}
    for version in ("1", "2"):  # launched by Dana, with her key
        client.set_model_version_tag(MODEL, version, "launched_by", f"key:{keys['data_scientist'].split('_')[1]}/Dana Scientist")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield {"base": base, "keys": keys, "client": client, "shots": tmp_path}
    server.should_exit = True
    thread.join(10)
    clear_platform_caches()


@pytest.fixture()
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _sign_in(browser: Any, base: str, key: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base}/review")
    assert page.url.endswith("/review/login")
    page.fill("#key", key)
    page.click("button:has-text('Sign in')")
    return page


def test_validator_approves_and_promotes_in_the_browser(site: dict[str, Any], browser: Any) -> None:
    page = _sign_in(browser, site["base"], site["keys"]["clinical_validator"])
    assert page.locator("h1").first.inner_text() == "Pending review"
    assert page.locator("h1").nth(1).inner_text() == f"{MODEL}: versions"
    rows = page.locator("table").nth(1).locator("tr")
    assert rows.count() == 3 and "pending" in rows.nth(1).inner_text()
    page.click(f"text={MODEL} version 1")
    assert page.title().startswith(f"{MODEL} version 1")
    assert "Compared with production" in page.content()
    assert page.frame_locator("iframe").locator("body").inner_text().count("AUROC") >= 1  # the stored report
    page.screenshot(path=str(site["shots"] / "version.png"), full_page=False)

    page.fill("#rationale", "too short")  # the browser's own minlength check keeps this from being sent
    page.click("button:has-text('Approve')")
    assert "approved" not in page.locator("h1").inner_text()
    page.fill("#rationale", "AUROC and calibration acceptable overall and in both sexes.")
    page.click("button:has-text('Approve')")
    assert page.locator(".flash").count() == 1, page.url + page.content()[-800:]
    assert "version 1 approved" in page.locator(".flash").inner_text()
    page.click("button:has-text('Promote to production')")
    assert "version 1 is now production" in page.locator(".flash").inner_text()
    assert "production" in page.locator("h1").inner_text()
    page.screenshot(path=str(site["shots"] / "promoted.png"), full_page=False)
    assert str(site["client"].get_model_version_by_alias(MODEL, "production").version) == "1"


def test_other_roles_cannot_decide(site: dict[str, Any], browser: Any) -> None:
    page = _sign_in(browser, site["base"], site["keys"]["data_scientist"])
    page.click(f"text={MODEL} version 2")
    assert page.locator("button:has-text('Approve')").count() == 0  # read-only for data scientists
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.post(f"{site['base']}/review/{MODEL}/2/decision", cookies=cookies, follow_redirects=False,
                        data={"action": "approve", "rationale": "I would like this one in production now.", "csrf": csrf})
    assert forged.status_code == 403
    no_csrf = httpx.post(f"{site['base']}/review/{MODEL}/2/decision", cookies=cookies, follow_redirects=False,
                         data={"action": "approve", "rationale": "I would like this one in production now."})
    assert no_csrf.status_code == 303 and "/review/login" in no_csrf.headers["location"]

    app = browser.new_page()
    app.goto(f"{site['base']}/review/login")
    app.fill("#key", site["keys"]["app"])
    app.click("button:has-text('Sign in')")
    assert "has no access to model review" in app.locator(".flash").inner_text()
    tags = site["client"].get_model_version(MODEL, "2").tags
    assert tags.get("review_status", "pending") == "pending" and "review.decided_by" not in tags  # nothing was decided
