"""Audit of ``bridge.checkpoint`` beyond what test_resume_audit.py covers: a failed save (a full
disk under torch's zip writer) keeps the previous checkpoint and says the ``OSError`` it is, the
stage-2 record cannot disagree with the model, and a folder is named as one. Each test failed on
a mutant of the code that the other tests let through."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import pytest
import torch

from ntkrobust.bridge import checkpoint as checkpoint_module
from ntkrobust.bridge.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from ntkrobust.bridge.linearized import LinearizedNetwork
from ntkrobust.bridge.models import build_model, model_config

SHAPE = (1, 8, 8)


@pytest.fixture
def fc2():
    config = model_config("fc2", SHAPE, 10, width=8, seed=2)
    return config, build_model(config)


def _torch_save_fails(monkeypatch):
    """torch's zip writer as it fails on a full disk: a RuntimeError after writing some bytes."""
    real = torch.save

    def failing(payload, path, *args, **kwargs):
        real(payload, path, *args, **kwargs)  # the bytes written so far
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing)


@pytest.mark.parametrize(
    ("free", "code", "said"),
    [
        (2**30, errno.EIO, "torch.save failed: [enforce fail at inline_container.cc:778]"),
        (2**20 - 1, errno.ENOSPC, "No space left on device"),
    ],
    ids=["room-left", "disk-full"],
)
def test_a_failed_save_is_an_oserror_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fc2, free, code, said):
    """torch says "unexpected pos" or "PytorchStreamWriter failed" (a RuntimeError): re-raised as
    ENOSPC when under 1 MiB is free (what the command line reports as a full disk), else as EIO
    with torch's first line; the checkpoint already there is untouched, no temporary is left."""
    config, net = fc2
    path = save_checkpoint(tmp_path / "epoch_001.pt", net, config, epoch=1)
    before = path.read_bytes()
    _torch_save_fails(monkeypatch)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda _: usage(2**40, 2**40 - free, free))
    with pytest.raises(OSError) as error:
        save_checkpoint(path, net, config, epoch=2)
    assert error.value.errno == code and said in error.value.strerror, error.value
    assert not isinstance(error.value, RuntimeError)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["epoch_001.pt"]
    monkeypatch.undo()
    assert read_checkpoint(path)["epoch"] == 1
    assert shutil.disk_usage(tmp_path).free > 0


def test_a_linearization_entry_that_disagrees_with_the_model_is_refused(tmp_path, fc2):
    """A loaded payload passed on with ``**payload`` must not relabel the model: a plain network
    saved with a centered record would load as a wrapper of different outputs."""
    config, net = fc2
    with pytest.raises(ValueError, match=r"the model's linearization is None, not the extra entry's"):
        save_checkpoint(tmp_path / "plain.pt", net, config, linearization={"centered": True})
    wrapped = LinearizedNetwork(net, centered=True)
    with pytest.raises(ValueError, match=r"the model's linearization is \{'centered': True\}, not the extra"):
        save_checkpoint(tmp_path / "wrapped.pt", wrapped, config, linearization={"centered": False})
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(tmp_path / "agrees.pt", wrapped, config, linearization={"centered": True})
    model, _, payload = load_checkpoint(tmp_path / "agrees.pt")
    assert payload["linearization"] == {"centered": True} and isinstance(model, LinearizedNetwork)


def test_a_folder_named_as_a_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path)
    assert str(error.value) == f"checkpoint {tmp_path} is a folder, not a checkpoint file"
