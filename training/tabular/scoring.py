"""Inference without the training stack: a registered risk model as float32 NumPy matrices (RiskScorer).

Scores raw rows (dicts, a DataFrame, column arrays) with a few matrix products, equal to the torch
model's ``predict_proba`` to 1e-6; neither Lightning nor MLflow's pyfunc is needed at scoring time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.artifacts import ARRAYS_FILE, DECISION_FILE, ENCODER_FILE, MODEL_FILE, WEIGHTS_FILE
from training.categories import CategoryLookup
from training.decision import Decision
from training.errors import ScoringInputError
from training.tabular.columns import MISSING_CODE, OTHER_CODE, as_series, category_codes, category_slot, number_rows
from training.tabular.preprocessing import FeatureEncoder

__all__ = ["RiskScorer"]

CHUNK = 16_384  # rows per encode/score step: the encoded chunk stays in cache


@dataclass(frozen=True, eq=False)
class RiskScorer:
    """Encoder + dense layers (ReLU between, sigmoid at the end), all float32."""

    encoder: FeatureEncoder
    weights: tuple[np.ndarray, ...]  # (out, in) per layer, like torch.nn.Linear
    biases: tuple[np.ndarray, ...]
    #: The version's decision rule (``decision.json``); 0.5 for packages registered before it.
    decision: Decision = field(default_factory=Decision.default)

    @classmethod
    def from_state_dict(cls, encoder: FeatureEncoder, kind: str, state: Mapping[str, Any]) -> RiskScorer:
        """Build from a risk model's ``state_dict`` (``logistic`` or ``mlp``)."""
        if kind not in ("logistic", "mlp"):
            raise ValueError(f"no NumPy scorer for model kind {kind!r}")
        layers = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("net") and k.endswith(".weight")},
                        key=lambda name: int(name.rsplit(".", 1)[1]) if name != "net" else 0)
        weights = tuple(np.ascontiguousarray(_array(state[f"{n}.weight"]), dtype=np.float32) for n in layers)
        biases = tuple(np.ascontiguousarray(_array(state[f"{n}.bias"]), dtype=np.float32) for n in layers)
        if not weights or weights[0].shape[1] != encoder.input_dim or weights[-1].shape[0] != 1:
            raise ValueError("the weights do not fit the encoder (input width) or a single risk output")
        return cls(encoder, weights, biases)

    @classmethod
    def from_files(cls, directory: Path) -> RiskScorer:
        """Load the artifacts a registered model carries: encoder.json, model.json and the
        weights as NumPy arrays (weights.npz), or from weights.pt with PyTorch for versions
        registered before the arrays were added."""
        encoder = FeatureEncoder.from_json((directory / ENCODER_FILE).read_text())
        meta = json.loads((directory / MODEL_FILE).read_text())
        if (directory / ARRAYS_FILE).exists():
            with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
                state: Mapping[str, Any] = {k: arrays[k] for k in arrays.files}
        else:
            state = _torch().load(directory / WEIGHTS_FILE, weights_only=True, map_location="cpu")
        scorer = cls.from_state_dict(encoder, meta["kind"], state)
        if (directory / DECISION_FILE).exists():
            scorer = replace(scorer, decision=Decision.from_json((directory / DECISION_FILE).read_text()))
        return scorer

    @property
    def threshold(self) -> float:
        """The version's decision threshold on the risk (0.5 for packages without one)."""
        return self.decision.threshold if self.decision.threshold is not None else 0.5

    @property
    def features(self) -> tuple[str, ...]:
        """Raw input columns, numeric first."""
        return self.encoder.numeric + self.encoder.categorical

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encode raw feature dicts (missing or None -> missing) without building a DataFrame.

        Raises:
            ScoringInputError: an unknown feature, or a non-number where a number belongs.
        """
        enc = self.encoder
        known = set(self.features)
        raw = np.empty((len(rows), len(enc.numeric)), dtype=np.float64)
        codes = np.empty((len(rows), len(enc.categorical)), dtype=np.int64)
        lookups = self._lookups
        for i, row in enumerate(rows):
            for key in row:
                if key not in known:
                    raise ScoringInputError(f"{key}: not a feature of this model (expects {', '.join(self.features)})")
            for j, column in enumerate(enc.numeric):
                value = row.get(column)
                if value is None:
                    raw[i, j] = math.nan
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ScoringInputError(f"{column}: expected a number, got {value!r}")
                else:
                    raw[i, j] = value
            for j, column in enumerate(enc.categorical):
                value = row.get(column)
                codes[i, j] = category_slot(lookups[j], value)
        return self._encode(raw, codes)

    def encode_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Encode column arrays (a DataFrame, or a dict of NumPy, pandas or Arrow arrays;
        NaN/None/null = missing), vectorised."""
        return self._encode(*self._raw_columns(columns))

    def _raw_columns(self, columns: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Columns -> raw numbers (float64, NaN = missing; column-major) and category codes (int64)."""
        numbers, codes = self._convert(columns)
        raw = np.empty((len(codes), len(numbers)), dtype=np.float64, order="F")
        for j, rows in enumerate(numbers):
            raw[:, j] = rows(0, len(codes))
        return raw, codes

    def _convert(self, columns: Mapping[str, Any]) -> tuple[list[Callable[[int, int], np.ndarray]], np.ndarray]:
        """Check the columns; return, per numeric feature, a function giving rows [a, b) as
        numbers (NaN = missing), and every row's category codes.

        Categories are matched once per distinct value (pandas categoricals and Arrow
        dictionaries carry them; other string columns are factorised), never string by string.
        """
        missing = [c for c in self.features if c not in columns]
        if missing:
            raise ScoringInputError(f"{missing[0]}: column missing (expects {', '.join(self.features)})")
        enc = self.encoder
        n = len(columns[self.features[0]])
        numbers = [number_rows(columns[column], column) for column in enc.numeric]
        codes = np.empty((n, len(enc.categorical)), dtype=np.int64)
        for j, column in enumerate(enc.categorical):
            codes[:, j] = category_codes(columns[column], self._lookups[j])
        return numbers, codes

    @property
    def _lookups(self) -> tuple[CategoryLookup, ...]:
        return self.encoder.lookups

    def unknown_counts(self, columns: Mapping[str, Any]) -> dict[str, dict[str, int]]:
        """Per categorical feature, the present values that fall into ``__other`` and how
        many rows hold each (columns without any are left out); see
        :meth:`FeatureEncoder.unknown_counts`."""
        import pandas as pd

        return self.encoder.unknown_counts(pd.DataFrame({c: as_series(columns[c]) for c in self.encoder.categorical}))

    def unknown_in_row(self, row: Mapping[str, Any]) -> list[str]:
        """The categorical features of one raw row whose value falls into ``__other``."""
        return [column for column, lookup in zip(self.encoder.categorical, self._lookups, strict=True)
                if row.get(column) is not None and category_slot(lookup, row[column]) == OTHER_CODE]

    def _encode(self, raw: np.ndarray, codes: np.ndarray, *, ones: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """Raw numbers and category codes (index in the vocabulary, OTHER_CODE or MISSING_CODE) ->
        the encoder's matrix, identical to :meth:`FeatureEncoder.encode` (same float64
        arithmetic, column by column; a column-major ``raw`` reads fastest). ``ones`` adds a
        last column of 1.0, the input :meth:`_logits` takes; ``out``: a matrix to reuse."""
        enc = self.encoder
        n, m = len(raw), len(enc.numeric)
        width = enc.input_dim + ones
        if out is None:
            out = np.zeros((n, width), dtype=np.float32)
        else:
            out.fill(0.0)
        if ones:
            out[:, -1] = 1.0
        for j, (mean, std) in enumerate(zip(enc.means, enc.stds, strict=True)):
            absent = np.isnan(raw[:, j])
            z = (raw[:, j] - mean) / std
            z[absent] = 0.0
            out[:, j] = np.clip(z, -10.0, 10.0, out=z)
            out[:, m + j] = absent
        flat = out.reshape(-1)
        first = np.arange(0, n * width, width)  # each row's offset in ``flat``
        for j, columns in enumerate(self._one_hot_columns):
            flat[first + columns[codes[:, j] - MISSING_CODE]] = 1.0
        return out

    @functools.cached_property
    def _one_hot_columns(self) -> tuple[np.ndarray, ...]:
        """Per categorical feature: its one-hot column for code c at index c - MISSING_CODE
        (missing, other, then the vocabulary)."""
        tables, k = [], 2 * len(self.encoder.numeric)
        for vocabulary in self.encoder.vocabulary:
            size = len(vocabulary)
            tables.append(k + np.concatenate([[size, size + 1], np.arange(size)]).astype(np.int64))
            k += size + 2
        return tuple(tables)

    def score_encoded(self, x: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
        """Risk (float64) for an encoded float32 matrix; large inputs go in cache-sized chunks."""
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk):
            rows = x[start:start + chunk]
            with_ones = np.empty((len(rows), rows.shape[1] + 1), dtype=np.float32)
            with_ones[:, :-1] = rows
            with_ones[:, -1] = 1.0
            out[start:start + chunk] = self._logits(with_ones)
        return 1.0 / (1.0 + np.exp(-out))

    @functools.cached_property
    def _folded(self) -> tuple[np.ndarray, ...]:
        """Each layer as one (in + 1, out + 1) matrix: the bias is the row for a constant 1
        input, and a last column passes that 1 on to the next layer (the last layer's has none).
        The bias is then added inside the matrix product, not in a pass of its own."""
        folded = []
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            out, inputs = w.shape
            layer = np.zeros((inputs + 1, out + (i < last)), dtype=np.float32)
            layer[:inputs, :out] = w.T
            layer[inputs, :out] = b
            if i < last:
                layer[inputs, out] = 1.0
            folded.append(layer)
        return tuple(folded)

    def _logits(self, x: np.ndarray, buffers: Sequence[np.ndarray] = ()) -> np.ndarray:
        """The last layer's output (before the sigmoid) for one chunk of encoded rows that
        end with a column of ones (``_encode(..., ones=True)``); ``buffers``: one matrix per
        layer to reuse for its output."""
        h = x
        last = len(self._folded) - 1
        for i, layer in enumerate(self._folded):
            h = np.matmul(h, layer, out=buffers[i][:len(h)]) if buffers else h @ layer
            if i < last:
                np.maximum(h, 0.0, out=h)  # the constant column stays 1
        return h[:, 0]

    def score_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Risk of each raw feature dict."""
        if len(rows) == 1:
            return np.array([self.score_one(rows[0])])
        return self.score_encoded(self.encode_rows(rows))

    def score_one(self, row: Mapping[str, Any]) -> float:
        """Risk of one raw feature dict: the encoding in plain Python, then one small matrix
        product per layer (the API's per-request path; equal to :meth:`score_rows`)."""
        enc = self.encoder
        known = self._known
        for key in row:
            if key not in known:
                raise ScoringInputError(f"{key}: not a feature of this model (expects {', '.join(self.features)})")
        m = len(enc.numeric)
        x = [0.0] * (enc.input_dim + 1)
        x[-1] = 1.0  # the folded layers' bias input
        for j, (column, mean, std) in enumerate(zip(enc.numeric, enc.means, enc.stds, strict=True)):
            value = row.get(column)
            if value is None or (isinstance(value, float) and value != value):
                x[m + j] = 1.0
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScoringInputError(f"{column}: expected a number, got {value!r}")
            else:
                z = (value - mean) / std
                x[j] = -10.0 if z < -10.0 else 10.0 if z > 10.0 else z
        k = 2 * m
        for column, lookup in zip(enc.categorical, self._lookups, strict=True):
            size = len(lookup)
            code = category_slot(lookup, row.get(column))
            x[k + (size if code == MISSING_CODE else size + 1 if code == OTHER_CODE else code)] = 1.0
            k += size + 2
        logit = float(self._logits(np.array([x], dtype=np.float32))[0])
        return 1.0 / (1.0 + math.exp(-logit))

    @functools.cached_property
    def _known(self) -> frozenset[str]:
        return frozenset(self.features)

    def score_columns(self, columns: Mapping[str, Any], *, threads: int = 1,
                      unknown: dict[str, int] | None = None) -> np.ndarray:
        """Risk of each row of column arrays, equal to ``score_encoded(encode_columns(columns))``.

        The categories are matched once; then each chunk's numbers are read, encoded and
        scored while in cache, in matrices each thread reuses, so a million rows never
        materialise as one encoded matrix. ``threads`` > 1 scores chunks in parallel (NumPy
        releases the GIL), with BLAS held to one thread each. ``unknown``, when given, receives
        per categorical feature the number of rows whose value fell into ``other``.
        """
        numbers, codes = self._convert(columns)
        if unknown is not None:
            for j, column in enumerate(self.encoder.categorical):
                n = int(np.count_nonzero(codes[:, j] == OTHER_CODE))
                if n:
                    unknown[column] = n
        out = np.empty(len(codes), dtype=np.float64)
        local = threading.local()

        def run(start: int) -> None:
            stop = min(start + CHUNK, len(codes))
            if not hasattr(local, "raw"):  # this thread's matrices
                local.raw = np.empty((CHUNK, len(numbers)), dtype=np.float64, order="F")
                local.x = np.empty((CHUNK, self.encoder.input_dim + 1), dtype=np.float32)
                local.h = [np.empty((CHUNK, layer.shape[1]), dtype=np.float32) for layer in self._folded]
            raw = local.raw[:stop - start]
            for j, rows in enumerate(numbers):
                raw[:, j] = rows(start, stop)
            x = self._encode(raw, codes[start:stop], ones=True, out=local.x[:stop - start])
            out[start:stop] = self._logits(x, local.h)

        starts = range(0, len(codes), CHUNK)
        if threads > 1 and len(starts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with _one_blas_thread(), ThreadPoolExecutor(min(threads, len(starts))) as pool:
                list(pool.map(run, starts))
        else:
            for start in starts:
                run(start)
        return 1.0 / (1.0 + np.exp(-out))


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Hold BLAS to one thread: parallel chunks would otherwise oversubscribe the cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def _torch() -> Any:
    """PyTorch, imported for real even where a server process keeps it out by default
    (``sys.modules["torch"] = None``, see ``platform_api.asgi``)."""
    import sys

    if "torch" in sys.modules and sys.modules["torch"] is None:
        del sys.modules["torch"]
    import torch

    return torch


def _array(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
