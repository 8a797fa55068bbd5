"""A built dataset read back: its ``manifest.json`` and its token arrays as memory maps.

``melody data build`` (``models.data.dataset.build_dataset``) writes, per split of
``SPLITS``, ``{split}.tokens.npy`` (uint16, pieces concatenated, each ``BOS ... EOS``) and
``{split}.offsets.npy`` (int64, ``n + 1`` start offsets), plus ``manifest.json``.
``load_manifest`` reads and checks the manifest, ``TokenDataset`` opens one split.

The file names, format and version live here, with the readers, because everything that
uses a dataset (training, evaluation, export, the engine's tools) reads it through this
module and needs none of the build's code. Torch-free: the training loop wraps
``TokenDataset`` in its own torch dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.core.exceptions import DataError
from models.core.tokenizer import MelodyTokenizer

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "melodyd-dataset"
MANIFEST_VERSION = 1
SPLITS = ("train", "validation", "test")


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check a dataset's ``manifest.json``.

    Raises:
        DataError: the folder or manifest is missing, or the manifest is malformed.
    """
    folder = Path(directory).expanduser()
    hint = f"build one with `melody data build --source SRC --out {folder}`"
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}; {hint}")
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"{folder} has no {MANIFEST_NAME} (not a dataset, or its build "
                        f"did not finish); {hint}") from err
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}; {hint}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} is not a melodyd dataset manifest; {hint}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path} has manifest version {manifest.get('version')!r}, this "
                        f"melodyd reads version {MANIFEST_VERSION}; {hint}")
    splits = manifest.get("splits")
    if (not isinstance(splits, dict) or not all(isinstance(splits.get(s), dict) for s in SPLITS)
            or not isinstance(manifest.get("tokenizer"), dict)):
        raise DataError(f"{path} lacks its splits or tokenizer; {hint}")
    return manifest


class TokenDataset:
    """One split of a built dataset, as memory maps.

    Attributes:
        directory: the dataset folder.
        split: ``train``, ``validation`` or ``test``.
        manifest: the parsed ``manifest.json``.
        tokens: uint16 ids of every sequence, concatenated (read-only memmap).
        offsets: int64 start of each sequence, plus the total length at the end.
    """

    def __init__(self, directory: str | Path, split: str) -> None:
        """Open a split.

        Raises:
            DataError: unknown split, missing manifest or arrays, or arrays that do not
                agree with each other or with the manifest.
        """
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)} (received {split!r})")
        self.directory = Path(directory).expanduser()
        self.split = split
        self.manifest = load_manifest(self.directory)
        self.tokens = self._load(f"{split}.tokens.npy", np.uint16)
        self.offsets = self._load(f"{split}.offsets.npy", np.int64)
        info = self.manifest["splits"][split]
        if (self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0
                or int(self.offsets[-1]) != len(self.tokens)
                or len(self.offsets) - 1 != info.get("num_sequences")):
            raise DataError(f"{self.directory}: {split} arrays do not match each other or "
                            f"the manifest; rebuild with `melody data build`")

    def _load(self, name: str, dtype: type) -> np.ndarray:
        path = self.directory / name
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError as err:
            raise DataError(f"{path} is missing; rebuild with `melody data build`") from err
        except (OSError, ValueError) as err:
            raise DataError(f"{path} is not a readable array ({err}); rebuild with "
                            f"`melody data build`") from err
        if array.dtype != dtype:
            raise DataError(f"{path} holds {array.dtype}, expected {np.dtype(dtype)}")
        return array

    def __len__(self) -> int:
        """Number of sequences (pieces and their transposed copies)."""
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        """Token ids of one sequence, ``BOS ... EOS``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} out of range (0..{len(self) - 1})")
        index %= len(self)
        return self.tokens[self.offsets[index]:self.offsets[index + 1]]

    @property
    def tokenizer(self) -> MelodyTokenizer:
        """The vocabulary the dataset was built with."""
        return MelodyTokenizer.from_dict(self.manifest["tokenizer"])
