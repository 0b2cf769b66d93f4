"""Audit of how a net to attack, evaluate or transfer to is named and loaded (``bridge.targets``,
``bridge.checkpoint``'s reader): each test failed on a mutant of the code that the other tests
let through. Hostile files are built here by hand; a payload's only effect is to create a marker
file, whose absence is the check that no code from the file ran."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import pickle
import zipfile

import pytest
import torch

from ntkrobust.bridge.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from ntkrobust.bridge.linearized import LinearizedNetwork
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.targets import TargetError, load_target

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
SHAPE = (1, 8, 8)


@pytest.fixture
def fc2():
    config = model_config("fc2", SHAPE, 10, width=8, seed=1)
    return config, build_model(config).eval()


def _load(spec, classes=10, *, trust_code=False, device="cpu"):
    return load_target(str(spec), image_shape=SHAPE, num_classes=classes, trust_code=trust_code, device=device)


class _Touch:
    """Unpickling this creates ``marker`` (``pathlib.Path.touch``): its only effect."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _refused(spec, message, **kwargs):
    """The one-line refusal of ``spec``, which must contain ``message``."""
    with pytest.raises(TargetError) as error:
        _load(spec, **kwargs)
    said = str(error.value)
    assert message in said and "\n" not in said, said
    return said


# -- nothing in a stranger's file runs without --trust-model-code ---------------------------------


def _hostile_files(folder, marker, fc2):
    """Files whose unpickling creates ``marker``: a checkpoint of ours and a state dict (zip
    format) with the payload among their entries, the same in torch's legacy (non-zip) format, and
    a bare pickle."""
    config, net = fc2
    payload = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "state_dict": net.state_dict()}
    files = {
        "checkpoint.pt": lambda p: torch.save({**payload, "note": _Touch(marker)}, p),
        "state.pt": lambda p: torch.save({**net.state_dict(), "extra": _Touch(marker)}, p),
        "legacy.pt": lambda p: torch.save({"x": _Touch(marker)}, p, _use_new_zipfile_serialization=False),
        "bare.pkl": lambda p: p.write_bytes(pickle.dumps(_Touch(marker))),
    }
    for name, write in files.items():
        write(folder / name)
    # the payload itself works: unpickled without the safe loader, it creates the marker
    pickle.loads(pickle.dumps(_Touch(marker)))
    assert marker.exists()
    marker.unlink()
    return [folder / name for name in files]


def test_a_pickle_that_runs_code_never_runs_as_a_checkpoint_or_a_state_dict(tmp_path, fc2):
    """``torch.load(weights_only=True)`` everywhere: as a checkpoint (``load_checkpoint``, a
    target without trust) and as ``MODEL=STATE_DICT`` the payload never runs, and the refusal says
    why in our words. A mutant loading either with ``weights_only=False`` created the marker (the
    existing hostile .pt2 fails in ``torch.load`` before its blob is unpickled, so it cannot tell)."""
    marker = tmp_path / "payload-ran"
    for path in _hostile_files(tmp_path, marker, fc2):
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        zipped = path.name in ("checkpoint.pt", "state.pt")
        reason = "pickled Python objects, which are never unpickled here" if zipped else "not a zip archive"
        _refused(path, reason)
        said = _refused(f"fc2:8={path}", "is not a state dict that loads safely")
        assert reason in said, said
        assert not marker.exists(), path.name


def test_without_trust_a_pt2_is_named_as_a_program_and_never_loaded(tmp_path):
    """An exported program named as a target: the whole refusal says what the file is (the
    TorchScript one is pinned in test_targets), and ``torch.export.load`` is never reached."""
    net = build_model(model_config("fc1", SHAPE, 10, width=4)).eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, *SHAPE),)), path)
    with pytest.raises(TargetError) as error:
        _load(path)
    assert str(error.value) == (
        f"target {path} is an exported program (.pt2), which carries code and loads only with --trust-model-code"
    )


def test_a_zip_holding_constants_pkl_is_said_to_be_torchscript(tmp_path):
    """``program_kind`` tells TorchScript by its ``constants.pkl`` alone too (older archives
    hold no ``code/`` folder under that name): kept, it is refused as TorchScript, not as damage."""
    path = tmp_path / "net.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("net/constants.pkl", b"\x80\x02}q\x00.")
        archive.writestr("net/data.pkl", b"\x80\x02}q\x00.")
    _refused(path, "is a TorchScript program, which carries code")


# -- how a target is named ----------------------------------------------------------------------


def test_a_file_whose_name_holds_an_equals_sign_is_a_file(tmp_path, fc2):
    """``run=1/net.pt`` names an existing checkpoint, not a model called ``run``."""
    config, net = fc2
    path = save_checkpoint(tmp_path / "lr=0.1" / "net.pt", net, config)
    target = _load(path)
    assert target.description["kind"] == "checkpoint" and target.label == "net"


def test_an_unknown_model_is_refused_before_its_file_is_read(tmp_path):
    """The model name is checked first: a missing weights file is not what is wrong with
    ``nosuchmodel=missing.pt``, and the refusal lists the models."""
    said = _refused(f"nosuchmodel={tmp_path / 'missing.pt'}", "unknown model 'nosuchmodel' (MODEL is one of fc1, ")
    assert "does not exist" not in said and "does not fit" not in said, said


@pytest.mark.parametrize("tail", ["", " ", "\t"])
def test_a_blank_weights_file_after_the_equals_sign_is_refused(tail):
    _refused(f"fc2={tail}", f"fc2={tail}: no weights file after '=' (MODEL=WEIGHTS)")


def test_a_missing_file_or_a_loop_of_links_is_said_so_for_both_forms(tmp_path):
    """Checked before any loader opens the file (``files.not_a_file``): the same words for
    ``PATH`` and ``MODEL=PATH``, not torch's errno text in parentheses."""
    (tmp_path / "a.pt").symlink_to(tmp_path / "b.pt")
    (tmp_path / "b.pt").symlink_to(tmp_path / "a.pt")
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "nowhere.pt")
    for name, reason in [("missing.pt", "does not exist"), ("a.pt", "is a symbolic link that loops")]:
        path = tmp_path / name
        assert _refused(path, reason) == f"target {path} {reason}"
        assert _refused(f"fc2:8={path}", reason) == f"target {path} {reason}"
    assert _refused(tmp_path / "dangling.pt", "") == f"target {tmp_path / 'dangling.pt'} does not exist"


def test_a_fifo_as_a_state_dict_is_refused_without_being_opened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: it is refused by its type first.
    A writer keeps knocking meanwhile (and closes at once), so a mutant that opened it would get an
    empty file and fail the test instead of hanging it."""
    import threading
    import time

    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    done = threading.Event()

    def writer():
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while no reader opens it
            except OSError:
                time.sleep(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for spec in (fifo, f"fc2:8={fifo}"):
            assert _refused(spec, "is not a regular file") == f"target {fifo} is not a regular file"
    finally:
        done.set()
        thread.join(5)


# -- what a loaded checkpoint says of itself ------------------------------------------------------


def test_a_linearized_checkpoint_is_described_as_linearized(tmp_path, fc2):
    config, net = fc2
    for centered in (False, True):
        path = save_checkpoint(tmp_path / f"c{centered}.pt", LinearizedNetwork(net, centered=centered), config)
        description = _load(path).description
        assert (description["kind"], description["centered"]) == ("linearized", centered)
    assert _load(save_checkpoint(tmp_path / "plain.pt", net, config)).description["kind"] == "checkpoint"


@pytest.mark.parametrize("epoch", ["7", 7.0, None])
def test_an_epoch_that_is_no_whole_number_is_not_taken_as_one(tmp_path, fc2, epoch):
    config, net = fc2
    path = save_checkpoint(tmp_path / "net.pt", net, config, **({} if epoch is None else {"epoch": epoch}))
    assert _load(path).epoch is None
    assert _load(save_checkpoint(tmp_path / "seven.pt", net, config, epoch=7)).epoch == 7


def _run_checkpoint(folder, fc2, linearization, *, config_text=None):
    config, net = fc2
    run = folder / "lin-run"
    (run / "checkpoints").mkdir(parents=True)
    if config_text is None and linearization is not None:
        config_text = json.dumps({"linearization": linearization})
    if config_text is not None:
        (run / "config.json").write_text(config_text)
    model = LinearizedNetwork(net, centered=bool((linearization or {}).get("centered")))
    return save_checkpoint(run / "checkpoints" / "epoch_003.pt", model, config, epoch=3)


@pytest.mark.parametrize(
    ("linearization", "curve"),
    [
        (
            {"checkpoint": "runs/std/checkpoints/epoch_004.pt", "spawn_epoch": 4, "centered": False},
            ("linearized from std", 4),
        ),
        (
            {"checkpoint": "runs/std/checkpoints/epoch_004.pt", "spawn_epoch": 4, "centered": True},
            ("centered from std", 4),
        ),
        (
            {"checkpoint": "r/base/checkpoints/epoch_009.pt", "spawn_epoch": "9", "centered": True, "standard": True},
            ("centered-standard from base", 9),
        ),
    ],
)
def test_a_linearized_runs_checkpoint_names_its_dynamics(tmp_path, fc2, linearization, curve):
    """LOO sec. 5's curves: linearized, centered and centered-standard runs from their parent."""
    assert _load(_run_checkpoint(tmp_path, fc2, linearization)).curve == curve


@pytest.mark.parametrize(
    "config_text",
    [
        json.dumps({"linearization": {"centered": True}}),  # KeyError
        json.dumps({"linearization": {"checkpoint": 5, "spawn_epoch": 1, "centered": True}}),  # TypeError
        json.dumps({"linearization": "yes"}),  # TypeError (a str indexed by a str)
        json.dumps({"linearization": {"checkpoint": "a/b/c.pt", "spawn_epoch": "x", "centered": True}}),  # ValueError
        json.dumps([1, 2]),  # AttributeError (a list has no get)
        "{not json",  # JsonFileError
    ],
)
def test_a_run_config_that_is_not_this_tools_falls_back_to_the_folders_name(tmp_path, fc2, config_text):
    """A config.json that says no linearization this tool wrote: the run's name and the epoch,
    never a traceback."""
    target = _load(_run_checkpoint(tmp_path, fc2, None, config_text=config_text))
    assert (target.curve, target.label) == (("lin-run", 3), "lin-run epoch 3")


# -- the loaders leave torch's logging as they found it -------------------------------------------


def test_loading_a_trusted_program_leaves_torchs_logger_and_warnings_as_they_were(tmp_path, fc2):
    """``_quiet_torch`` silences torch's loaders for the load only: the logger's level (and the
    warning filters) are the caller's again afterwards, also when the load fails."""
    import warnings

    _, net = fc2
    x = torch.rand(3, *SHAPE)
    torch.jit.save(torch.jit.trace(net, x), tmp_path / "net.ts")
    (tmp_path / "junk.ts").write_bytes(b"PK\x03\x04 not really")
    logger = logging.getLogger("torch")
    before = logger.level
    logger.setLevel(logging.INFO)
    filters = list(warnings.filters)
    try:
        _load(tmp_path / "net.ts", trust_code=True)
        assert logger.level == logging.INFO and warnings.filters == filters
        _refused(tmp_path / "junk.ts", "not a torchscript that loads", trust_code=True)
        assert logger.level == logging.INFO and warnings.filters == filters
    finally:
        logger.setLevel(before)


def test_a_trusted_programs_load_says_no_warning_of_torchs(tmp_path, fc2):
    """A target's load is quiet: torch.jit.load's deprecation warning and its kin are not the
    user's business (``_quiet_torch``), shown here with every warning switched on."""
    import warnings

    _, net = fc2
    torch.jit.save(torch.jit.trace(net, torch.rand(3, *SHAPE)), tmp_path / "net.ts")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.jit.load(str(tmp_path / "net.ts"))  # what torch itself says on such a load
        assert seen, "torch.jit.load no longer warns: this test shows nothing"
        seen.clear()
        _load(tmp_path / "net.ts", trust_code=True)
    assert [str(w.message) for w in seen] == []


# -- state dict targets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        lambda sd: list(sd.values()),
        lambda sd: tuple(sd.values()),
        lambda sd: {**sd, "note": "text"},
        lambda sd: {**sd, "step": 3},
    ],
    ids=["list", "tuple", "dict-with-a-string", "dict-with-an-int"],
)
def test_what_is_no_dict_of_tensors_is_refused_as_a_state_dict(tmp_path, fc2, content):
    _, net = fc2
    path = tmp_path / "weights.pt"
    torch.save(content(net.state_dict()), path)
    assert _refused(f"fc2:8={path}", "") == f"target {path} is not a state dict (a dict of tensors)"


def test_a_binary_state_dict_that_fits_neither_head_reports_the_two_output_attempt(tmp_path):
    """Tried with 2 outputs first and then with 1: the mismatch said is the first attempt's (the
    head of the 2 outputs the task has), not the one-logit fallback's."""
    torch.save(build_model(model_config("fc1", SHAPE, 3, width=8)).state_dict(), tmp_path / "w.pt")
    said = _refused(
        f"fc1:8={tmp_path / 'w.pt'}", "does not fit the fc1 model (tried with 2 outputs and with 1): ", classes=2
    )
    assert said.endswith(
        "size mismatch for 3.weight: copying a param with shape torch.Size([3, 8]) from checkpoint, "
        "the shape in current model is torch.Size([2, 8])."
    ), said


def test_a_state_dict_mismatch_says_its_first_line_after_torchs_heading(tmp_path, fc2):
    """``load_state_dict`` heads its message "Error(s) in loading state_dict for ...:"; the refusal
    says the line after it (what does not fit), whole up to 240 characters."""
    _, net = fc2
    state = dict(net.state_dict())
    state["unexpected.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pt")
    said = _refused(f"fc2:8={tmp_path / 'extra.pt'}", "does not fit the fc2 model: ")
    assert said.endswith('Unexpected key(s) in state_dict: "unexpected.weight".'), said
    assert "Error(s) in loading" not in said


# -- the forward check --------------------------------------------------------------------------


class _Scaled(torch.nn.Module):
    """Logits with a gradient to the images and no parameter at all (a fixed linear map)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.linspace(-1, 1, 640).reshape(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


class _Stacked(torch.nn.Module):
    """Logits of shape (N, 10, 1): one more dimension than a task's logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10, None] * 2


def test_a_net_without_parameters_whose_logits_follow_the_images_is_accepted(tmp_path):
    """The check asks for a gradient to the images: the probe must ask for one, or a net without
    parameters (a fixed map) is refused for having none."""
    torch.jit.script(_Scaled()).save(str(tmp_path / "fixed.pt"))
    target = _load(tmp_path / "fixed.pt", trust_code=True)
    x = torch.rand(3, *SHAPE)
    torch.testing.assert_close(target.model(x), x.flatten(1) @ torch.linspace(-1, 1, 640).reshape(64, 10))


def test_logits_with_an_extra_dimension_are_refused(tmp_path):
    torch.jit.script(_Stacked()).save(str(tmp_path / "stacked.pt"))
    said = _refused(
        tmp_path / "stacked.pt", "returns (2, 10, 1) for 2 images; the task needs (2, 10) logits", trust_code=True
    )
    assert said.startswith("target ")


def test_every_target_is_handed_back_in_eval_mode(tmp_path, fc2):
    """``Target.model`` is in eval mode (BatchNorm and dropout would otherwise follow the batch):
    a checkpoint and a state dict, whose models are built in train mode, come back in eval mode."""
    config, net = fc2
    path = save_checkpoint(tmp_path / "net.pt", net.train(), config)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    for spec in (path, f"fc2:8={tmp_path / 'weights.pt'}"):
        target = _load(spec)
        assert not any(module.training for module in target.model.modules()), spec


class _DetachedInput(torch.nn.Module):
    """A layer with parameters on detached images: its logits require a gradient (the
    parameters'), yet none reaches the images."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1).detach())


def test_logits_whose_gradient_stops_before_the_images_are_refused(tmp_path):
    """Bug found by this audit: the check read ``outputs.requires_grad`` alone, which the
    parameters give, so this net was accepted and the first attack step raised torch's "The
    differentiated Tensor at index 0 appears to not have been used in the graph" (a traceback).
    The independent route: ``torch.autograd.grad`` of the logits to the images, as the attacks take it."""
    from ntkrobust.bridge.adversarial import adversarial_examples

    net = _DetachedInput()
    x = torch.rand(2, *SHAPE, requires_grad=True)
    assert net(x).requires_grad and torch.autograd.grad(net(x).sum(), x, allow_unused=True)[0] is None
    with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
        adversarial_examples(net, x.detach(), torch.tensor([0, 1]), method="fgsm", eps=0.1)
    torch.jit.script(net).save(str(tmp_path / "detached.pt"))
    _refused(tmp_path / "detached.pt", "returns logits without a gradient to the images", trust_code=True)


def test_one_logit_is_a_binary_tasks_convention_only(tmp_path):
    """A single logit reads as a binary task's (``bridge.adversarial``); for 10 classes it is
    refused, and the message offers no (2, 1) alternative."""
    config = model_config("fc1", SHAPE, 1, width=4)
    path = save_checkpoint(tmp_path / "one.pt", build_model(config), config)
    assert _load(path, classes=2).description["num_classes"] == 1
    said = _refused(path, "", classes=10)
    assert said == f"target {path} returns (2, 1) for 2 images; the task needs (2, 10) logits"


def test_a_net_of_another_task_is_refused_naming_the_classes_it_was_trained_on(tmp_path):
    """A 10-class net of ``train`` on a binary task: the refusal names the classes its checkpoint
    records (before, only the shapes: "(2, 10) ... the task needs (2, 2)"); a checkpoint without
    that record, or one whose record does not match its outputs, gets the shapes alone."""
    config = model_config("fc1", SHAPE, 10, width=4)
    names = [str(c) for c in range(10)]
    path = save_checkpoint(tmp_path / "ten.pt", build_model(config), config, history={"class_names": names})
    said = _refused(path, "", classes=2)
    assert said == (
        f"target {path} returns (2, 10) for 2 images; the task needs (2, 2) logits or (2, 1); it was trained on "
        "the classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9): give that task's --classes"
    )
    bare = save_checkpoint(tmp_path / "bare.pt", build_model(config), config)
    assert _refused(bare, "", classes=2).endswith("the task needs (2, 2) logits or (2, 1)")
    wrong = save_checkpoint(tmp_path / "wrong.pt", build_model(config), config, history={"class_names": names[:3]})
    assert _refused(wrong, "", classes=2).endswith("the task needs (2, 2) logits or (2, 1)")
    one_logit = model_config("fc1", SHAPE, 1, width=4)  # a binary net of one output: two classes recorded
    binary = save_checkpoint(
        tmp_path / "bin.pt", build_model(one_logit), one_logit, history={"class_names": ["3", "8"]}
    )
    assert _refused(binary, "", classes=10).endswith(
        "the task needs (2, 10) logits; it was trained on the classes (3, 8): give that task's --classes"
    )


@pytest.mark.parametrize(
    ("spec", "shape", "reason"),
    [
        ("fc2:0", SHAPE, "does not fit the fc2 model: num_classes and width must be positive, got 10 and 0"),
        ("mnist-cnn", (1, 2, 2), "does not fit the mnist-cnn model: mnist-cnn needs images at least 4x4, got 2x2"),
    ],
)
def test_a_model_that_cannot_be_built_for_the_data_is_a_one_line_refusal(tmp_path, fc2, spec, shape, reason):
    """``model_config``'s ModelError (a width of 0, images too small for the net) is said as the
    target's refusal, not raised past it."""
    torch.save(fc2[1].state_dict(), tmp_path / "w.pt")
    with pytest.raises(TargetError) as error:
        load_target(f"{spec}={tmp_path / 'w.pt'}", image_shape=shape, num_classes=10)
    assert str(error.value) == f"target {tmp_path / 'w.pt'} {reason}"


def test_a_state_dict_in_a_run_folder_is_labelled_by_run_and_epoch(tmp_path, fc2):
    path = tmp_path / "wide" / "checkpoints" / "epoch_004.pt"
    path.parent.mkdir(parents=True)
    torch.save(fc2[1].state_dict(), path)
    assert _load(f"fc2:8={path}").label == "wide epoch 4"
    torch.save(fc2[1].state_dict(), tmp_path / "plain.pt")
    assert _load(f"fc2:8={tmp_path / 'plain.pt'}").label == "plain"
