"""Seventh audit of ``bridge.checkpoint``: checkpoints written by hand (``torch.save`` of a dict)
that a run could not have written, and the records of the stage-2 wrappers. Weights with one
non-finite value among finite ones, of a transposed shape, or not tensors at all; a pickle that
would run code; a ``linearization`` record of another type or without its BatchNorm mode. Each
test failed on a mutant of the code that the earlier tests let through."""

from __future__ import annotations

import errno
import re
from collections import namedtuple

import pytest
import torch
from test_checkpoint_audit import _torch_save_fails
from torch import nn

from ntkrobust.bridge import checkpoint as checkpoint_module
from ntkrobust.bridge.checkpoint import (
    CheckpointError,
    ForeignFileError,
    check_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ntkrobust.bridge.linearized import CenteredStandardNetwork, LinearizedNetwork
from ntkrobust.bridge.models import build_model, model_config

TAG = "ntkrobust-checkpoint-v1"  # the format tag of this tool's checkpoints, written out by hand
UNPICKLED: list[str] = []  # what _run_code was called with


def _run_code(said: str) -> str:
    UNPICKLED.append(said)
    return said


class _Hook:
    """An object whose unpickling calls ``_run_code``: code run from the file."""

    def __reduce__(self):
        return _run_code, ("a call from the file",)


def _net() -> nn.Module:
    """A linear layer (float weights) and a BatchNorm (an int64 step count among its buffers)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _weights(**changes) -> dict[str, torch.Tensor]:
    """The state dict of ``_net``, written out by hand, with ``changes`` (``0_weight`` for ``0.weight``)."""
    weights = {
        "0.weight": torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.5, -0.6]]),
        "0.bias": torch.tensor([0.0, 0.1]),
        "1.weight": torch.ones(2),
        "1.bias": torch.zeros(2),
        "1.running_mean": torch.zeros(2),
        "1.running_var": torch.ones(2),
        "1.num_batches_tracked": torch.tensor(7),
    }
    return {**weights, **{key.replace("_", ".", 1): value for key, value in changes.items()}}


def test_hand_written_weights_of_the_models_names_shapes_and_kinds_pass():
    """The reference for the refusals below: the hand-written state dict fits ``_net``, and a
    float step count where the model holds an int64 one is taken (copied in, it is the same
    count), unlike the other way round."""
    check_state_dict("hand.pt", _weights(), _net())
    check_state_dict("hand.pt", _weights(**{"1_num_batches_tracked": torch.tensor(7.0)}), _net())


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"0_weight": torch.tensor([[0.1, -0.2, 0.3], [0.4, float("nan"), -0.6]])}, "0.weight holds NaN or infinite"),
        ({"0_bias": torch.tensor([0.0, float("inf")])}, "0.bias holds NaN or infinite values"),
        ({"1_running_var": torch.tensor([1.0, float("-inf")])}, "1.running_var holds NaN or infinite values"),
        (
            {"0_weight": torch.zeros(3, 2)},
            "cannot rebuild its model (0.weight has shape (3, 2), its config's model needs (2, 3))",
        ),
        ({"0_bias": [0.0, 0.1]}, "its state_dict is not a dict of tensors"),
    ],
    ids=["one-nan", "one-inf", "one-minus-inf-in-a-buffer", "transposed", "a-list"],
)
def test_weights_a_run_could_not_have_written_are_refused_naming_the_tensor(changes, said):
    """One NaN or infinity among finite values (an overflow in one unit) poisons every output
    that depends on it; a transposed weight has as many values but is not the model's (its
    refusal names both shapes, not load_state_dict's paragraph); a list is no tensor (it was an
    AttributeError)."""
    with pytest.raises(CheckpointError, match=re.escape(f"hand.pt: {said}")) as error:
        check_state_dict("hand.pt", _weights(**changes), _net())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (
            torch.empty(2, 3, device="meta"),
            "0.weight is not a dense tensor of values (layout torch.strided, device meta)",
        ),
        (torch.eye(2, 3).to_sparse(), "0.weight is not a dense tensor of values (layout torch.sparse_coo, device cpu)"),
    ],
    ids=["meta", "sparse"],
)
def test_a_weight_without_values_or_of_a_sparse_layout_is_refused(tmp_path, value, said):
    """A model saved from the meta device holds shapes without values, a sparse tensor no dense
    values to copy: the checks of the values raised RuntimeError ("Tensor.item() cannot be called
    on meta tensors", NotImplementedError for sparse), a traceback from ``train --resume`` and
    torch's words from ``load_checkpoint``. Refused now, naming the tensor."""
    with pytest.raises(CheckpointError) as error:
        check_state_dict("hand.pt", _weights(**{"0_weight": value}), _net())
    assert str(error.value) == f"hand.pt: {said}"
    config = model_config("fc2", (1, 8, 8), 3, width=2, seed=0)
    weights = build_model(config).state_dict()
    torch.save(
        {"format": TAG, "config": config.to_dict(), "state_dict": {**weights, "1.weight": value}}, tmp_path / "m.pt"
    )
    with pytest.raises(CheckpointError, match=re.escape(said.replace("0.weight", "1.weight"))):
        load_checkpoint(tmp_path / "m.pt")


@pytest.mark.parametrize("entry", ["missing", None, [1, 2]])
def test_a_checkpoint_without_a_dict_of_weights_is_refused_in_one_line(tmp_path, entry):
    """A file with the format tag and the config but no ``state_dict`` entry, or ``None`` or a
    list for it, is no checkpoint of a model: refused as such, not an AttributeError."""
    config = model_config("fc2", (1, 8, 8), 3, width=4, seed=0)
    payload = {"format": TAG, "config": config.to_dict()}
    if entry != "missing":
        payload["state_dict"] = entry
    torch.save(payload, tmp_path / "hand.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'hand.pt'}: its state_dict is not a dict of")):
        load_checkpoint(tmp_path / "hand.pt")


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    """The file is read with ``weights_only=True``: an object whose unpickling calls a function is
    refused as not ours, and the function is never called (``weights_only=False`` would have run
    it, and taken the dict around it as a checkpoint)."""
    torch.save({"format": TAG, "hook": _Hook()}, tmp_path / "code.pt")
    UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="holds pickled Python objects, which are never unpickled here"):
        read_checkpoint(tmp_path / "code.pt")
    assert UNPICKLED == []


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"PK\x03\x04 cut short", "is not a checkpoint of this tool ("),
        ({"state_dict": {"weight": torch.zeros(2)}}, f"is not a checkpoint of this tool (no '{TAG}' format tag)"),
        (torch.zeros(2), f"is not a checkpoint of this tool (no '{TAG}' format tag)"),
        # torch.save(model.state_dict()): the message says which commands take it and how
        (
            {"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)},
            "is not a checkpoint of this tool but a bare state dict, without the model it belongs to: "
            "evaluate and transfer take it as MODEL[:WIDTH]=",
        ),
    ],
    ids=["bytes", "a-dict-without-the-tag", "a-tensor", "a-bare-state-dict"],
)
def test_a_file_that_is_no_checkpoint_of_ours_is_a_foreign_file(tmp_path, content, said):
    """Unreadable bytes, a dict without the format tag (a plain state dict file) or a tensor are
    ``ForeignFileError``: no checkpoint of this tool at all, which ``load_target`` then reads as
    a state dict or a program; not a damaged checkpoint of ours."""
    path = tmp_path / "other.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ForeignFileError, match=re.escape(f"{path} {said}")) as error:
        read_checkpoint(path)
    assert error.value.program is None


@pytest.mark.parametrize("config", ["missing", None, {}])
def test_a_checkpoint_without_a_model_config_says_so(tmp_path, config):
    """A checkpoint of ours (the format tag) without its ``config`` entry, or with None or {} for
    it, is a damaged one: ``CheckpointError`` (not a foreign file) saying it is no model config."""
    payload = {"format": TAG, "state_dict": {}}
    if config != "missing":
        payload["config"] = config
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "c.pt")
    missing = "no model, input_shape, num_classes, width"
    assert str(error.value) == f"{tmp_path / 'c.pt'}: cannot rebuild its model (not a model config: {missing})"
    assert not isinstance(error.value, ForeignFileError)


# -- the stage-2 records -----------------------------------------------------------------------


@pytest.fixture
def fc2():
    config = model_config("fc2", (1, 8, 8), 3, width=4, seed=0)
    return config, build_model(config)


def test_a_standard_record_without_its_batchnorm_mode_loads_frozen(tmp_path, fc2):
    """A centered standard network's record without ``batchnorm`` (as written before the mode was
    recorded) loads with the parent's BatchNorm frozen, the default of ``CenteredStandardNetwork``."""
    config, net = fc2
    path = save_checkpoint(tmp_path / "c.pt", CenteredStandardNetwork(net, batchnorm="frozen"), config, epoch=1)
    payload = torch.load(path, weights_only=True)
    assert payload["linearization"] == {"centered": True, "kind": "standard", "batchnorm": "frozen"}
    payload["linearization"] = {"centered": True, "kind": "standard"}
    torch.save(payload, path)
    loaded, _, _ = load_checkpoint(path)
    assert isinstance(loaded, CenteredStandardNetwork) and loaded.batchnorm == "frozen"


@pytest.mark.parametrize("centered", [1, 0, "true"])
def test_a_linearization_record_whose_centered_is_no_bool_is_refused(tmp_path, fc2, centered):
    """``centered`` is written as a bool: 1, 0 or "true" is a record this tool did not write
    (1 == True would otherwise pass for one)."""
    config, net = fc2
    path = save_checkpoint(tmp_path / "lin.pt", LinearizedNetwork(net, centered=True), config)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "linearization": {"centered": centered}}, path)
    with pytest.raises(CheckpointError, match=re.escape(f"bad linearization entry {{'centered': {centered!r}}}")):
        load_checkpoint(path)


def test_a_linearized_record_of_an_unknown_kind_is_refused_naming_the_kind(tmp_path, fc2):
    """A record of kind "other" around a linearized network's weights: the weights would fit a
    ``LinearizedNetwork``, and were loaded as one; the kinds this tool writes are linearized and
    standard."""
    config, net = fc2
    path = save_checkpoint(tmp_path / "lin.pt", LinearizedNetwork(net, centered=True), config)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "linearization": {"centered": True, "kind": "other"}}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f"{path}: cannot rebuild its model (bad linearization entry: its kind is linearized or standard, not 'other')"
    )


def test_saving_a_wrapper_with_a_linearization_entry_of_none_is_refused(tmp_path, fc2):
    """An extra ``linearization=None`` (a plain network's payload passed on) disagrees with a
    wrapper's record: refused, and nothing is written."""
    config, net = fc2
    with pytest.raises(ValueError, match=re.escape("the model's linearization is {'centered': False}, not the")):
        save_checkpoint(tmp_path / "lin.pt", LinearizedNetwork(net), config, linearization=None)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_with_exactly_one_mib_free_is_an_io_error(tmp_path, monkeypatch, fc2):
    """The disk counts as full under 1 MiB free (2**20 bytes): with exactly that much left, a
    failed write is EIO with torch's words, not ENOSPC."""
    config, net = fc2
    _torch_save_fails(monkeypatch)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda _: usage(2**40, 2**40 - 2**20, 2**20))
    with pytest.raises(OSError) as error:
        save_checkpoint(tmp_path / "epoch_001.pt", net, config, epoch=1)
    assert error.value.errno == errno.EIO and "torch.save failed" in error.value.strerror


def test_a_standard_record_that_is_not_centered_is_refused(tmp_path, fc2):
    """A centered standard network is f - f0 by construction: a record of kind standard with
    ``centered: False`` is one this tool never writes, and loading it as centered would give
    another function than the record claims."""
    config, net = fc2
    path = save_checkpoint(tmp_path / "c.pt", CenteredStandardNetwork(net, batchnorm="frozen"), config, epoch=1)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "linearization": {"centered": False, "kind": "standard", "batchnorm": "frozen"}}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f"{path}: cannot rebuild its model (bad linearization entry: a stage-2 standard net is centered, "
        "not centered: False)"
    )


@pytest.mark.parametrize("key", ["format", "state_dict"])
def test_an_extra_entry_that_would_replace_the_checkpoints_own_is_refused(tmp_path, fc2, key):
    """``save_checkpoint``'s extras come after its fixed entries: ``state_dict={}`` would have
    replaced the model's weights, and ``format`` the tag that marks the file as ours. Refused,
    and nothing is written."""
    config, net = fc2
    with pytest.raises(ValueError, match=re.escape(f"extra entry {key!r} would replace the checkpoint's own")):
        save_checkpoint(tmp_path / "net.pt", net, config, **{key: {}})
    assert list(tmp_path.iterdir()) == []


def test_an_extra_minus_initial_entry_must_agree_with_the_model(tmp_path, fc2):
    """``minus_initial`` makes loading wrap the net as f - f0: passed for a plain net it would load
    as another function, so it is refused; a False one agrees with a plain net and is stored as
    no entry at all, a True one with an ``OutputChange``."""
    from ntkrobust.bridge.two_layer import OutputChange

    config, net = fc2
    with pytest.raises(ValueError, match=re.escape("the model is not an OutputChange, unlike the extra entry")):
        save_checkpoint(tmp_path / "net.pt", net, config, minus_initial=True)
    assert list(tmp_path.iterdir()) == []
    change = OutputChange(net, build_model(config))
    with pytest.raises(ValueError, match=re.escape("the model is an OutputChange, unlike the extra entry")):
        save_checkpoint(tmp_path / "net.pt", change, config, minus_initial=False)
    plain = save_checkpoint(tmp_path / "plain.pt", net, config, minus_initial=False)
    assert "minus_initial" not in torch.load(plain, weights_only=True)
    loaded, _, payload = load_checkpoint(save_checkpoint(tmp_path / "change.pt", change, config, minus_initial=True))
    assert isinstance(loaded, OutputChange) and payload["minus_initial"] is True
