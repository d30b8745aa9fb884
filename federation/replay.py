"""A hospital's last reply per run and stage, kept beside its ledger and replayed when the same round is asked again."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from experiments.errors import ExperimentError
from federation.errors import FederationError
from federation.site import Site, resolve_site, spec_from_run_config

__all__ = ["ReplyStore", "replayed", "reply_store"]

log = logging.getLogger(__name__)

Handler = Callable[[Message, Context], Message]
_HEADER = struct.Struct(">q")  # the round the stored reply answered


class ReplyStore:
    """The last ``ok`` reply a hospital sent per (run, stage), in files it owns.

    A resumed coordinator asks again for the round it lost. Training that round again
    would release a second noised update of the same round (and charge it again), so the
    hospital sends the very same reply instead, and charges nothing.

    Args:
        folder: Where the replies live (beside the hospital's privacy ledger).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, run_key: str, stage: str) -> Path:
        return self.folder / f"{hashlib.sha256(run_key.encode()).hexdigest()[:24]}-{stage}.bin"

    def get(self, run_key: str, stage: str, server_round: int) -> RecordDict | None:
        """The reply stored for this run, stage and round, if any."""
        path = self._path(run_key, stage)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < _HEADER.size or _HEADER.unpack_from(data)[0] != server_round:
            return None
        proto = ProtoRecordDict()
        proto.ParseFromString(data[_HEADER.size:])
        return recorddict_from_proto(proto)

    def put(self, run_key: str, stage: str, server_round: int, content: RecordDict) -> None:
        """Keep this reply (replacing the run's previous one for the stage), atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(run_key, stage)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_HEADER.pack(server_round) + recorddict_to_proto(content).SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def reply_store(site: Site) -> ReplyStore:
    """The hospital's reply store: ``<ledger>.replies/`` beside its privacy ledger."""
    return ReplyStore(site.ledger_path.with_name(site.ledger_path.stem + ".replies"))


def _request(message: Message, context: Context) -> tuple[ReplyStore, str, int] | None:
    config = message.content.config_records.get("config")
    if config is None or "run-key" not in config or "server-round" not in config:
        return None
    try:
        spec = spec_from_run_config(dict(context.run_config))
        site = resolve_site(dict(context.node_config), spec, str(context.run_config.get("ledger-dir", "")))
    except (FederationError, ExperimentError, OSError):
        return None  # the handler reports what is wrong
    return reply_store(site), str(config["run-key"]), int(config["server-round"])


def _ok(reply: Message) -> bool:
    site = reply.content.config_records.get("site") if not reply.has_error() else None
    return site is not None and str(site.get("status", "")) == "ok"


def replayed(stage: str) -> Callable[[Handler], Handler]:
    """Decorate a ClientApp handler so that a round it already answered in this run is
    answered again with the stored reply (no training, no charge), and each new ``ok``
    reply is stored before it is sent."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(message: Message, context: Context) -> Message:
            request = _request(message, context)
            if request is not None:
                found = request[0].get(request[1], stage, request[2])
                if found is not None:
                    log.info("%s round %d of run %s was answered before: replaying that reply", stage, request[2], request[1])
                    return Message(found, reply_to=message)
            reply = handler(message, context)
            if request is not None and _ok(reply):
                request[0].put(request[1], stage, request[2], reply.content)
            return reply

        return run

    return wrap
