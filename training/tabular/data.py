"""A hospital's data as a LightningDataModule: contract-checked load, split, encode, loaders."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from training.errors import DataContractError
from training.tabular.contract import DataContract, load_hospital_table
from training.tabular.preprocessing import FeatureEncoder, local_statistics

__all__ = ["HospitalDataModule", "HospitalSplit", "TabularDataset", "load_split"]


class TabularDataset(Dataset):
    """Encoded features and labels as two tensors, fetched a whole batch at a time.

    ``__getitems__`` lets the DataLoader (and Opacus's Poisson loader) index the tensors
    once per batch instead of once per row, which is most of a tabular step's cost.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def keep_batch(batch: Any) -> Any:
    """Collate for :class:`TabularDataset`: the batch is already two tensors."""
    return batch


@dataclass(frozen=True)
class HospitalSplit:
    """A hospital's rows in three parts: training, validation (model selection; possibly
    empty) and held-out test rows, each with the contract's columns.

    ``source`` says where the split came from: ``column`` (the data's split column) or
    ``random`` (``test_fraction`` and ``val_fraction``).
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    source: str = "random"


def _random_split(frame: pd.DataFrame, label: str, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = frame[label]
    stratify = labels if labels.nunique() > 1 and labels.value_counts().min() >= 2 else None
    keep, apart = train_test_split(frame, test_size=fraction, random_state=seed, stratify=stratify)
    return keep, apart


@functools.lru_cache(maxsize=16)
def _load_split_cached(
    path: str, mtime_ns: int, contract: DataContract, test_fraction: float, seed: int, val_fraction: float
) -> HospitalSplit:
    frame = load_hospital_table(path, contract)
    assert contract.label is not None
    if contract.split_column:
        part = frame[contract.split_column]
        rows = {name: frame[part == name].drop(columns=[contract.split_column]).reset_index(drop=True)
                for name in ("train", "val", "test")}
        if rows["test"].empty:
            raise DataContractError(path, "no test rows: the split column marks none as test",
                                    column=contract.split_column)
        return HospitalSplit(rows["train"], rows["val"], rows["test"], source="column")
    train, test = _random_split(frame, contract.label, test_fraction, seed)
    val = train.iloc[:0]
    if val_fraction > 0:
        # val_fraction is a share of all rows, taken from the training rows
        train, val = _random_split(train, contract.label, min(val_fraction / (1 - test_fraction), 0.9), seed + 1)
    return HospitalSplit(train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True))


def load_split(path: Path | str, contract: DataContract, test_fraction: float = 0.2, seed: int = 0,
               val_fraction: float = 0.0) -> HospitalSplit:
    """Load a hospital file (checked against the contract) and split it deterministically:
    by the contract's split column when it has one (``test_fraction`` and ``val_fraction``
    unused), else at random (stratified by label) into ``test_fraction`` test rows and
    ``val_fraction`` val rows (shares of all rows).

    Cached per process by path and modification time, so a federated client that trains
    many rounds reads and validates its file once.

    Raises:
        DataContractError: the file breaks the contract, or its split column marks no
            test rows (no train rows is refused when training asks for them).
    """
    resolved = Path(path).resolve()
    mtime = resolved.stat().st_mtime_ns if resolved.exists() else -1
    return _load_split_cached(str(resolved), mtime, contract, test_fraction, seed, val_fraction)


class HospitalDataModule(pl.LightningDataModule):
    """One hospital's data: train/test split, federation-wide encoding, loaders.

    Args:
        path: The hospital's CSV or Parquet file.
        contract: The experiment's data contract.
        batch_size: Rows per batch (the expected batch under Poisson sampling).
        test_fraction: Share of patients held out for evaluation (random split only).
        seed: Seed of the split and the shuffling.
        val_fraction: Share of patients set apart for model selection (random split only).
    """

    def __init__(
        self,
        path: Path | str,
        contract: DataContract,
        batch_size: int = 64,
        test_fraction: float = 0.2,
        seed: int = 0,
        val_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.contract = contract
        self.batch_size = batch_size
        self.test_fraction = test_fraction
        self.seed = seed
        self.val_fraction = val_fraction
        self.encoder: FeatureEncoder | None = None
        self._split: HospitalSplit | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load and split the file (once per process)."""
        if self._split is None:
            self._split = load_split(self.path, self.contract, self.test_fraction, self.seed, self.val_fraction)

    @property
    def split(self) -> HospitalSplit:
        """The train/val/test split, loading it on first use."""
        self.setup()
        assert self._split is not None
        return self._split

    def statistics(self) -> dict[str, Any]:
        """Sufficient statistics of the training rows, for federated preprocessing."""
        return local_statistics(self.split.train, self.contract)

    def dataset(self, part: str) -> TabularDataset:
        """Encoded ``train``, ``val`` or ``test`` rows."""
        if self.encoder is None:
            raise RuntimeError("set the federation's encoder before asking for data")
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be train, val or test, not {part!r}")
        frame = getattr(self.split, part)
        if part == "train" and frame.empty:
            raise DataContractError(self.path, "no train rows: the split column marks none as train",
                                    column=self.contract.split_column)
        return TabularDataset(self.encoder.encode(frame), frame[self.contract.label].to_numpy())

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of training rows."""
        data = self.dataset("train")
        generator = torch.Generator().manual_seed(self.seed)
        sampler = BatchSampler(RandomSampler(data, generator=generator), self.batch_size, drop_last=False)
        return DataLoader(data, batch_sampler=sampler, collate_fn=keep_batch)

    def _eval_loader(self, part: str) -> DataLoader:
        data = self.dataset(part)
        sampler = BatchSampler(range(len(data)), 4096, drop_last=False)  # type: ignore[arg-type]
        return DataLoader(data, batch_sampler=sampler, collate_fn=keep_batch)

    def val_dataloader(self) -> DataLoader:
        """The val rows, or the held-out test rows when the hospital has no val part."""
        return self._eval_loader("val" if len(self.split.val) else "test")

    def test_dataloader(self) -> DataLoader:
        """The held-out rows."""
        return self._eval_loader("test")


def warm_up() -> None:
    """Split a tiny frame as :func:`load_split` does, so that a process about to fork task
    processes has imported what the first real split imports lazily (sklearn's dataframe support)."""
    frame = pd.DataFrame({"x": np.arange(8.0), "y": [0, 1] * 4})
    _random_split(frame, "y", 0.25, 0)
