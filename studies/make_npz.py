"""``make-npz``: resolve the data settings (classes, subsets, the test split cut in two) and save
the result as an .npz that every command's ``--data`` accepts (``bridge.data``'s layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntkrobust.studies._common import DataSettings


@dataclass(frozen=True)
class MakeNpzSettings:
    data: DataSettings = field(default_factory=DataSettings)


@dataclass
class MakeNpzResult:
    """The dataset, saved as one file (not a folder): ``save(path)`` writes it atomically."""

    dataset: Any

    def save(self, out: str | Path) -> Path:
        from ntkrobust.bridge.data import save_dataset_npz
        from ntkrobust.bridge.files import write_atomically

        return write_atomically(out, lambda temporary: save_dataset_npz(self.dataset, temporary))

    def summary(self) -> str:
        data = self.dataset
        sizes = f"{data.x_train.shape[0]} train, {data.x_test.shape[0]} test"
        return f"{data.name}: {sizes}, classes {list(data.classes)}"


def run(settings: MakeNpzSettings, *, progress: bool = False, argv: list[str] | None = None) -> MakeNpzResult:
    """Load the data as the settings say (``progress`` and ``argv`` are unused: an .npz holds
    arrays only)."""
    return MakeNpzResult(settings.data.load())
