"""``make-npz``: resolve the data settings (classes, subsets, the test split cut in two) and save
the result as an .npz that every command's ``--data`` accepts (``bridge.data``'s layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntkrobust.studies._common import DataSettings, check_counts
from ntkrobust.studies._errors import StudyError


@dataclass(frozen=True)
class MakeNpzSettings:
    data: DataSettings = field(default_factory=DataSettings)


@dataclass
class MakeNpzResult:
    """The dataset, saved as one file (not a folder): ``save(path)`` writes it atomically."""

    dataset: Any

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """The file ``out``; an existing one is refused (``StudyError``) unless ``overwrite``."""
        from ntkrobust.bridge.data import save_dataset_npz
        from ntkrobust.bridge.files import write_atomically

        if not overwrite and Path(out).exists():
            raise StudyError(f"{out} exists: save(out, overwrite=True) replaces it")
        return write_atomically(out, lambda temporary: save_dataset_npz(self.dataset, temporary))

    def summary(self) -> str:
        data = self.dataset
        sizes = f"{data.x_train.shape[0]} train, {data.x_test.shape[0]} test"
        return f"{data.name}: {sizes}, classes {list(data.classes)}"


def run(settings: MakeNpzSettings, *, progress: bool = False, argv: list[str] | None = None) -> MakeNpzResult:
    """Load the data as the settings say (``progress`` and ``argv`` are unused: an .npz holds
    arrays only)."""
    check_counts(settings)
    import numpy as np

    from ntkrobust.bridge.data import task_indices

    data = settings.data.load()
    # every command reads a dataset file whole, and refuses one whose split misses a class of the
    # task; a subset that small (--n-test 5 of 10 classes) is written only as something no command takes
    for split, y, flag in (("train", data.y_train, "--n-train"), ("test", data.y_test, "--n-test")):
        missing = len(data.classes) - np.unique(task_indices(y, data.classes)).size
        if missing:
            raise StudyError(
                f"{flag} {y.shape[0]} leaves {missing} class(es) without a {split} point, and a dataset file's "
                f"splits must hold every class: at least {len(data.classes)} for {len(data.classes)} classes"
            )
    return MakeNpzResult(data)
