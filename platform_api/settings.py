"""Settings of the platform API (environment variables prefixed ``BIOVERSE_API_``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_store.profile import get_profile

__all__ = ["ApiSettings", "get_settings"]


class ApiSettings(BaseSettings):
    """Database and limits of the platform API.

    Attributes:
        data_dir: BioVerse's data directory (``BIOVERSE_DATA_DIR``).
        database_url: SQLAlchemy URL; empty means the production profile's PostgreSQL
            (docs/operations.md), else SQLite ``platform.db`` in the data dir.
            PostgreSQL: ``postgresql+psycopg2://user@host/db``.
        max_body_bytes: Larger request bodies answer 413.
        tracking_uri: MLflow registry the API scores from (default: the embedded store).
        model_name, model_alias: The model predictions use (``models:/name@alias``),
            re-resolved every ``model_poll_seconds``.
        rollout_controller_seconds: The API process judges the served model's running
            rollout this often and advances, completes, pauses or rolls it back by its rules
            (docs/rollouts.md); 0 leaves that to ``bioverse rollout watch``.
        twin_cache_seconds, prediction_cache_seconds: TTLs of the twin-state and
            prediction caches (the deployment guide's 60 s and 300 s).
        alert_threshold: A prediction at or above this risk raises an alert.
        monitor_window, monitor_window_minutes: Drift is computed on each served version's
            last ``monitor_window`` recorded predictions, only those of the last
            ``monitor_window_minutes`` when that is set (0: no time bound).
        monitor_min_predictions: A smaller window reports "too few predictions", no PSI.
        monitor_psi_threshold: A PSI (feature or prediction) at or above it sets
            ``bioverse_model_drift_alert`` (docs/monitoring.md).
        monitor_refresh_seconds: /metrics recomputes drift at most this often per process.
        monitor_active_hours: Versions with a prediction in this period are exported.
        auth_cache_seconds: How long an authenticated key is remembered in-process (a
            revocation elsewhere takes effect within this time; 0 disables).
        token_secret: HS256 key signing OAuth2 access tokens; empty means a random key
            kept in ``<data dir>/oauth-signing.key`` (set it when several API hosts share tokens).
        token_lifetime_seconds: Lifetime of an access token (default 15 minutes).
        cookie_secure: Mark the review page's session cookie Secure (set it behind HTTPS).
        cache_url: Empty for in-process caches (the production profile fills in its Redis),
            or ``redis://host:port/db`` to share the twin-state and prediction caches between API processes.
        vision_url: The Ray Serve ``VisionClassifier`` route image uploads are classified by.
        max_image_bytes: Larger image uploads answer 413.
        vision_timeout_seconds: How long an upload waits for its classification.
        audit_checkpoints: The file signed checkpoints of the audit chain's head are
            appended to (empty: ``<data dir>/audit/checkpoints.jsonl``); keep it off the
            database's volume.
        audit_checkpoint_events, audit_checkpoint_seconds: A process checkpoints the head
            after this many appended events, or this many seconds after its last checkpoint.
        rate_limit_per_minute, rate_limit_burst: Token buckets of the OAuth2 token
            endpoint (per source address and per client id) and of failed credential
            checks (per source address); over them answers 429 with Retry-After.
        metrics_token: A bearer token Prometheus scrapes ``/metrics`` with (admin keys
            work too); empty means only admin keys.
        risk_scoring: ``in-process`` (the small-clinic default: the API scores with the
            model it loads) or ``serve`` (the model call goes to the Ray Serve risk
            application at ``risk_serve_url``; auth, features, audit and recording stay here).
        risk_serve_url, risk_serve_timeout_seconds, risk_serve_connections: The risk
            route of Serve's HTTP proxy, how long a prediction waits for it (then 503),
            and the size of the pooled client's connection pool.
        audit_verify_seconds: Each API process verifies the audit chain this often in a
            background thread for ``bioverse_audit_verify_*`` (0: never; docs/monitoring.md).
        privacy_refresh_seconds: How often the hospitals' budget figures are re-read from the
            tracking store for ``bioverse_privacy_*`` (0: never).
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_API_")

    data_dir: Path = Field(default=Path.home() / ".bioverse", validation_alias=AliasChoices("BIOVERSE_DATA_DIR"))
    database_url: str = ""
    max_body_bytes: int = 1_000_000
    tracking_uri: str = Field(default="", validation_alias=AliasChoices("BIOVERSE_API_TRACKING_URI", "BIOVERSE_TRACKING_URI"))
    model_name: str = "cardiac-risk"
    model_alias: str = "production"
    model_poll_seconds: float = 5.0
    rollout_controller_seconds: float = Field(default=5.0, ge=0)
    twin_cache_seconds: float = 60.0
    prediction_cache_seconds: float = 300.0
    alert_threshold: float = 0.3
    monitor_window: int = Field(default=1000, ge=1, le=100_000)
    monitor_window_minutes: float = Field(default=0.0, ge=0)
    monitor_min_predictions: int = Field(default=300, ge=1)
    monitor_psi_threshold: float = Field(default=0.2, gt=0)
    monitor_refresh_seconds: float = Field(default=30.0, ge=0)
    monitor_active_hours: float = Field(default=24.0, gt=0)
    auth_cache_seconds: float = 10.0
    token_secret: str = ""
    cookie_secure: bool = False
    token_lifetime_seconds: int = Field(default=900, ge=60, le=86_400)
    cache_url: str = ""
    vision_url: str = "http://127.0.0.1:8000/vision"
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    vision_timeout_seconds: float = Field(default=30.0, gt=0)
    audit_checkpoints: Path | None = None
    audit_checkpoint_events: int = Field(default=1000, ge=1)
    audit_checkpoint_seconds: float = Field(default=10.0, gt=0)
    rate_limit_per_minute: float = Field(default=30.0, gt=0)
    rate_limit_burst: int = Field(default=10, ge=1)
    metrics_token: str = ""
    risk_scoring: Literal["in-process", "serve"] = "in-process"
    risk_serve_url: str = "http://127.0.0.1:8000/risk"
    risk_serve_timeout_seconds: float = Field(default=10.0, gt=0)
    risk_serve_connections: int = Field(default=64, ge=1, le=1024)
    audit_verify_seconds: float = Field(default=3600.0, ge=0)
    privacy_refresh_seconds: float = Field(default=300.0, ge=0)

    @field_validator("cache_url")
    @classmethod
    def _redis_or_empty(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (in-process caches) or a redis:// URL")
        return value

    @model_validator(mode="after")
    def _from_profile(self) -> ApiSettings:
        profile = get_profile()
        self.database_url = self.database_url or profile.platform_database_url() or ""
        self.cache_url = self.cache_url or profile.cache_url() or ""
        return self

    def resolved_tracking_uri(self) -> str:
        """The configured MLflow URI, or the embedded store the experiments write to."""
        from experiments.settings import get_settings as experiment_settings

        return self.tracking_uri or experiment_settings().resolved_tracking_uri()

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite database."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'platform.db').resolve()}"


@functools.cache
def get_settings() -> ApiSettings:
    """The process's settings, read once from the environment."""
    return ApiSettings()
