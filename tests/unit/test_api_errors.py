"""The HTTP error table resolves through the class hierarchy: a new subclass answers its base's status."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from experiments.errors import (
    ExperimentError,
    LauncherUnknown,
    NotApproved,
    NothingToRollBack,
    NotPending,
    RationaleRequired,
    RationaleTooLong,
    ReportMissing,
    ReportNotRead,
    ReportStale,
    ReviewError,
    SecretKeyError,
    SelfApproval,
    SpecError,
    TrackingError,
    VersionNotFound,
    WrongScope,
)
from feature_store.errors import (
    FeatureDataError,
    FeatureQueryError,
    FeatureRepoError,
    FeatureStoreUnavailable,
    FeatureValueError,
    StoredValueError,
)
from platform_api.errors import (
    Conflict,
    DependencyDown,
    Forbidden,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    PlatformError,
    TooManyRequests,
    Unavailable,
    UnsupportedMedia,
    install_error_handlers,
    status_of,
)
from serving.errors import ModelNotReadyError, PredictionInputError, UnapprovedVersion
from training.errors import ScoringInputError, TrainingError

#: Every status the table answered before it resolved through the hierarchy.
_KEPT = {
    NotAuthenticated: 401, Forbidden: 403, NotFound: 404, Conflict: 409, PayloadTooLarge: 413, UnsupportedMedia: 415,
    Unavailable: 503, PredictionInputError: 422, FeatureDataError: 422, StoredValueError: 409,
    ModelNotReadyError: 503, FeatureRepoError: 503, VersionNotFound: 404, SelfApproval: 403, LauncherUnknown: 409,
    RationaleRequired: 422, RationaleTooLong: 422, NotPending: 409, ReportMissing: 409, ReportStale: 409,
    NotApproved: 409, NothingToRollBack: 409, ReportNotRead: 403, WrongScope: 403, ReviewError: 409,
    TrackingError: 503, SecretKeyError: 503,
}


@pytest.mark.parametrize(("cls", "status"), list(_KEPT.items()), ids=[cls.__name__ for cls in _KEPT])
def test_every_status_of_the_leaf_table_is_kept(cls: type[Exception], status: int) -> None:
    error = StoredValueError("twin t1", {"age": "not finite"}) if cls is StoredValueError else cls("x")
    assert status_of(error) == status


def test_subclasses_the_table_never_named_get_their_bases_status() -> None:
    assert status_of(UnapprovedVersion("x")) == 503
    assert status_of(FeatureStoreUnavailable("x")) == 503
    assert status_of(FeatureValueError("heart_rate", "not finite")) == 422
    assert status_of(FeatureQueryError("x")) == 422  # also a ValueError: the domain base wins
    assert status_of(DependencyDown("x")) == 503
    assert status_of(TooManyRequests("x", 3)) == 429
    assert status_of(ScoringInputError("x")) == status_of(TrainingError("x")) == 422
    assert status_of(SpecError("x")) == status_of(ExperimentError("x")) == 409
    assert status_of(OperationalError("SELECT 1", {}, Exception("down"))) == 503
    assert status_of(PlatformError("x")) == 400
    assert status_of(ValueError("a bug")) == 500


def test_a_brand_new_subclass_of_a_mapped_error_is_answered_with_its_bases_status_not_500() -> None:
    class ReportShredded(ReportStale):
        """Defined here, after the table: the table has never heard of it."""

    class TenantGone(NotFound):
        """Another subclass the table never named."""

    class GateBroken(ReviewError):
        """A refusal of the gate the table never named."""

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/shredded")
    def shredded() -> None:
        raise ReportShredded("the report was shredded")

    @app.get("/gone")
    def gone() -> None:
        raise TenantGone("no tenant t9")

    @app.get("/broken")
    def broken() -> None:
        raise GateBroken("the gate broke")

    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get("/shredded")
    assert answer.status_code == 409 and answer.json() == {"detail": "the report was shredded"}
    assert client.get("/gone").status_code == 404
    assert client.get("/broken").status_code == 409
