"""The review page over HTTP, without a browser (issue 10 items 1, 3, 4 and the page half of 18):
every model's pending versions, the quality warning first, the report before the decision
buttons, the page titled with its version, the page's own read receipt, and a production alias
moved by hand marked on it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from tests.integration.conftest import attach_report, register_risk_models, review_api

MODEL, OTHER = "page-gate-risk", "page-gate-other"
WARNING = "AUROC 0.45 (95% CI 0.41-0.49 reaches 0.5) and calibration slope -1.99: no better than the trivial model"
WHY = "Discrimination and calibration acceptable in every subgroup I checked."


@pytest.fixture()
def page(hospital_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, versions=2, production=False)
    register_risk_models(uri, OTHER, hospital_files, versions=1, production=False)
    client = MlflowClient(uri, registry_uri=uri)
    for name, version in ((MODEL, "1"), (MODEL, "2"), (OTHER, "1")):
        attach_report(client, name, version, {"overall": {"n": 400, "auroc": 0.81}},
                      f"<html><body>report of {name} {version}</body></html>")
    client.set_model_version_tag(MODEL, "2", "validation.quality_warning", WARNING)
    people = {"quinn": ("clinical_validator", None, "Dr Quinn"), "dana": ("clinical_validator", None, "Dana Scientist"),
              "ds": ("data_scientist", "t1", "Dana Scientist")}
    with review_api(tmp_path, monkeypatch, uri, MODEL, people) as (http, keys):
        for name, version in ((MODEL, "1"), (MODEL, "2"), (OTHER, "1")):
            client.set_model_version_tag(name, version, "launched_by", f"key:{keys['ds'].split('_')[1]}/Dana Scientist")
        yield {"http": http, "keys": keys, "client": client}


def _sign_in(http: TestClient, key: str) -> None:
    http.cookies.clear()
    answer = http.post("/review/login", data={"api_key": key}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found is not None, html[-2000:]
    return found.group(1)


def test_the_list_shows_every_models_pending_versions(page: dict[str, Any]) -> None:
    http = page["http"]
    _sign_in(http, page["keys"]["quinn"])
    listing = http.get("/review").text
    pending = listing.split("<h1>Pending review</h1>")[1].split(f"<h1>{MODEL}: versions</h1>")[0]
    for name, version in ((MODEL, "1"), (MODEL, "2"), (OTHER, "1")):  # not only the served model's
        assert f'href="/review/{name}/{version}">{name} version {version}</a>' in pending
    assert WARNING in pending
    assert "Dr Quinn" in listing  # who is signed in, by name


def test_the_version_page_warns_first_shows_the_report_then_the_buttons(page: dict[str, Any]) -> None:
    http, client = page["http"], page["client"]
    _sign_in(http, page["keys"]["quinn"])
    html = http.get(f"/review/{MODEL}/2").text
    assert f"<title>{MODEL} version 2 · BioVerse review</title>" in html
    main = html.split("<main>", 1)[1]
    assert main.index("Quality warning: " + WARNING) < main.index("<h1>")  # the warning comes first
    assert main.index('title="validation report"') < main.index('value="approve"')  # report before the decision
    receipt = _field(html, "receipt")
    sha = client.get_model_version(MODEL, "2").tags["validation.report_sha256"]
    assert receipt.startswith(f"{sha}.")  # the page fetched the report for this validator

    csrf = _field(html, "csrf")
    copied = http.post(f"/review/{MODEL}/2/decision", data={"action": "approve", "rationale": WHY, "csrf": csrf,
                                                             "receipt": sha}, follow_redirects=True)
    assert "receipt is required" in copied.text  # the hash alone approves nothing
    assert client.get_model_version(MODEL, "2").tags.get("review_status", "pending") == "pending"
    done = http.post(f"/review/{MODEL}/2/decision", data={"action": "approve", "rationale": WHY, "csrf": csrf,
                                                           "receipt": receipt}, follow_redirects=True)
    assert "version 2 approved" in done.text, done.text[-2000:]
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["review.decided_by"].startswith("Dr Quinn (key ") and tags["review.approval"].startswith("v1 platform ")
    assert "decided by Dr Quinn (key " in done.text


def test_the_launcher_cannot_approve_on_the_page_and_a_hand_moved_alias_is_marked(page: dict[str, Any]) -> None:
    http, client = page["http"], page["client"]
    _sign_in(http, page["keys"]["dana"])  # Dana's validator key; Dana launched the model
    html = http.get(f"/review/{MODEL}/1").text
    refused = http.post(f"/review/{MODEL}/1/decision", data={"action": "approve", "rationale": WHY,
                                                             "csrf": _field(html, "csrf"), "receipt": _field(html, "receipt")},
                        follow_redirects=True)
    assert "independent clinical validator" in refused.text
    assert client.get_model_version(MODEL, "1").tags.get("review_status", "pending") == "pending"

    client.set_registered_model_alias(OTHER, "production", "1")  # with the plain MLflow client
    listing = http.get("/review").text
    assert f"{OTHER} version 1: production alias without approval" in listing
    assert "production alias without approval" in http.get(f"/review/{OTHER}/1").text
