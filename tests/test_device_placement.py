"""Every ``--device cuda`` path keeps its tensors on the device: checked without a GPU on torch's
meta device, where tensors have shapes, dtypes and a device but no values.

Each command runs through ``cli.main`` with ``--device cuda`` answered by the meta device, under
``OneDevice``: a dispatch mode that refuses any op whose tensors (or generator) lie on two
devices, as CUDA kernels do. (The meta device alone checks only some ops: ``mm``, ``conv2d`` and
``index_select`` take a CPU operand there in silence, ``bmm`` and ``einsum`` even answer on the
CPU.) Allowed, as on a GPU: copies between devices, CPU scalars (0-dim) and CPU index tensors
of advanced indexing. Reads of a meta tensor's values answer ones (``.item()``, ``.tolist()``,
``.cpu()``, ``float``/``int``) and True for ``bool`` (all finite, say) or, where the command would
take True for a degenerate input (an eigenvector of eigenvalue zero), False; ``.numpy()`` raises,
as it does for a CUDA tensor. So the commands run to their end; their numbers mean nothing.

The commands that share their work under torchrun (``cli.DISTRIBUTED_COMMANDS``) run again as
rank 0 and as rank 1 of a launch of 2 NCCL processes (``nccl_launch``): their paths of a launch
on the device, every tensor handed to an all-reduce there, as NCCL requires (gloo, which the
2-process tests use, takes CPU tensors and would not notice one left behind), and the same
collectives in the same order on both ranks (a collective that one rank skips leaves the other
waiting).

Not reached here: AutoAttack (pyautoattack branches on its values: ``evaluate``'s default
attacks, ``train --final-eval autoattack``), TorchScript targets (they cannot go to the meta
device), the pinned non-blocking copy of ``_upload.upload`` (CUDA only; checked with
a stand-in below), and what the meta device skips: ``torch.cuda``'s free memory and peak,
DistributedDataParallel's own buckets.

Before ``_upload.upload`` moved host draws to any device (it moved them to CUDA only, right on a
GPU), 10 of these 15 commands failed here, and so did crop-flip alone: the check fails where a
path leaves a tensor behind.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pkgutil
import shutil
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ntkrobust import cli

TASK = ["--data", "digits", "--n-train", "100", "--n-test", "30"]
CNN = ["--model", "mnist-cnn", "--width", "4"]
FEW_STEPS = ["--pgd-steps", "2", "--eval-pgd-steps", "2", "--full-eval-steps", "2", "--eval-n", "20"]
RESNET = ["--model", "resnet18", "--width", "2"]


aten = torch.ops.aten
#: ops that move data between devices, as ``.to`` and ``copy_`` do on a GPU
COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
#: ops whose index tensors (their second argument) may stay on the CPU: a CUDA tensor takes them
INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class OneDevice(TorchDispatchMode):
    """Refuses an op whose tensors or generator lie on two devices; counts the ops by the device
    of their first output."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in COPIES:
            leaves = tree_leaves((args[:1], args[2:], kwargs) if func in INDEXED else (args, kwargs))
            devices = {
                leaf.device.type
                for leaf in leaves
                if isinstance(leaf, torch.Generator)
                or (isinstance(leaf, torch.Tensor) and (leaf.device.type != "cpu" or leaf.dim() > 0))
            }
            if isinstance(kwargs.get("device"), torch.device):  # where a factory makes its tensor
                devices.add(kwargs["device"].type)
            if len(devices) > 1:
                raise RuntimeError(f"{func} mixes devices: {sorted(devices)}")
        out = func(*args, **kwargs)
        first = next((leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)), None)
        if first is not None:
            self.ops[first.device.type] = self.ops.get(first.device.type, 0) + 1
        return out


def test_one_device_refuses_what_cuda_refuses_and_allows_what_it_allows():
    x, host = torch.zeros(3, 4, device="meta"), torch.zeros(4, 2)
    refused = {
        "mm": lambda: x @ host,
        "einsum": lambda: torch.einsum("ij,jk->ik", x, host),
        "conv2d": lambda: torch.nn.functional.conv2d(x[None, None], host[None, None, :2]),
        "index_select": lambda: x.index_select(0, torch.tensor([0])),
        "a CPU generator": lambda: torch.randn(3, device="meta", generator=torch.Generator()),
    }
    for op in refused.values():
        op()  # the meta device alone lets each of them through
        with OneDevice(), pytest.raises(RuntimeError, match="mixes devices"):
            op()
    with OneDevice() as mode:
        x[torch.tensor([0, 2])], x * torch.tensor(2.0), host.to("meta"), x.copy_(torch.ones(3, 4))
    assert mode.ops["meta"] == 4  # (and the index tensors and scalar made on the CPU)


@pytest.fixture
def meta_device(monkeypatch):
    """``--device cuda`` as the meta device; returns the truth that ``bool`` of a meta tensor
    answers (``reads["truth"]``, settable)."""
    from ntkrobust.studies import _common

    reads: dict[str, Any] = {"truth": True}

    def ones(t: torch.Tensor) -> torch.Tensor:
        return torch.ones(t.shape, dtype=t.dtype)

    answers = {
        "item": lambda t: ones(t.reshape(())).item(),
        "tolist": lambda t: ones(t).tolist(),
        "cpu": ones,
        "__float__": lambda t: float(ones(t)),
        "__int__": lambda t: int(ones(t)),
        "__index__": lambda t: int(ones(t)),
        "__bool__": lambda t: bool(ones(t)) and reads["truth"],
    }
    for name, answer in answers.items():
        method = getattr(torch.Tensor, name)

        def read(self, *args, _method=method, _answer=answer, **kwargs):
            return _answer(self) if self.device.type == "meta" else _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    to = torch.Tensor.to

    def moved(self, *args, **kwargs):
        device = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
        if self.device.type == "meta" and device is not None and torch.device(device).type == "cpu":
            return ones(self).to(kwargs.get("dtype", self.dtype))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", moved)

    numpy = torch.Tensor.numpy

    def host_only(self, *args, **kwargs):
        if self.device.type == "meta":  # as for a CUDA tensor: .cpu() first
            raise TypeError(f"can't convert {self.device} device type tensor to numpy")
        return numpy(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", host_only)

    real = _common.torch_device

    def torch_device(name: str) -> torch.device:
        return torch.device("meta") if name == "cuda" else real(name)

    # every study that imported the function by name: all of them imported first, so that none
    # imported during the test keeps the stand-in after it
    from ntkrobust import studies

    for info in pkgutil.iter_modules(studies.__path__):
        importlib.import_module(f"ntkrobust.studies.{info.name}")
    for module in [m for m in list(sys.modules.values()) if getattr(m, "torch_device", None) is real]:
        monkeypatch.setattr(module, "torch_device", torch_device)
    # --quiet and a later rank quieten the package's logger for the process: restored after
    logger = logging.getLogger("ntkrobust")
    level = logger.level
    yield reads
    logger.setLevel(level)


@pytest.fixture
def nccl_launch(monkeypatch):
    """``nccl_launch(rank)``: a context in which this process is that rank of a torchrun launch
    of 2 NCCL processes, its collectives answered here; it gives the list of the collectives
    made (name, and an all-reduce's shape, dtype and operation). An all-reduce leaves its tensor
    as it is (only shapes matter on the meta device) and refuses one that is not on the device,
    as NCCL does; the object collectives see 2 equal ranks; DistributedDataParallel is the net
    itself (its gradient all-reduce is torch's)."""
    import torch.distributed as dist
    import torch.nn.parallel

    import ntkrobust.kernels._jax  # noqa: F401  (first: under a launch it would set this process's JAX up for one GPU)
    from ntkrobust.bridge import distributed

    class Unwrapped(torch.nn.Module):
        def __init__(self, module: torch.nn.Module, **_: object) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: object, **kwargs: object) -> object:
            return self.module(*args, **kwargs)

    agreed = distributed.agreed_minimum

    def agreed_minimum(value: int, device: torch.device | str = "cpu") -> int:
        agreed(value, device)  # its all-reduce, checked (on the meta device the minimum reads as 1)
        return value

    @contextlib.contextmanager
    def launch(rank: int):
        made: list[tuple] = []

        def all_reduce(tensor: torch.Tensor, op: object = None) -> None:
            made.append(("all_reduce", tuple(tensor.shape), tensor.dtype, str(op)))
            if tensor.device.type != "meta":
                raise RuntimeError(f"NCCL reduces tensors on GPUs only: an all-reduce of a tensor on {tensor.device}")

        def all_gather_object(out: list, obj: object) -> None:
            made.append(("all_gather_object",))
            out[:] = [obj] * len(out)

        fakes = {
            "is_initialized": lambda: True,
            "get_world_size": lambda group=None: 2,
            "get_rank": lambda group=None: rank,
            "get_backend": lambda group=None: "nccl",
            "all_reduce": all_reduce,
            "all_gather_object": all_gather_object,
            "broadcast_object_list": lambda box, src=0: made.append(("broadcast_object_list",)),
            "destroy_process_group": lambda group=None: None,
        }
        with monkeypatch.context() as patch:
            for name, fake in fakes.items():
                patch.setattr(dist, name, fake)
            patch.setattr(torch.nn.parallel, "DistributedDataParallel", Unwrapped)
            patch.setattr(distributed, "_barrier", lambda: made.append(("barrier",)))
            patch.setattr(distributed, "agreed_minimum", agreed_minimum)
            launcher = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"}
            for name, value in {**launcher, "MASTER_PORT": "29500"}.items():
                patch.setenv(name, value)
            yield made

    return launch


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """A 2-epoch PGD training run of the CNN made on the CPU, with real values, for the commands
    that read a checkpoint or resume a run."""
    from ntkrobust import cli

    out = tmp_path_factory.mktemp("cpu") / "run"
    argv = ["train", *TASK, *CNN, "--mode", "pgd", *PGD, "--epochs", "2", "--track-kernel", "10"]
    assert cli.main([*argv, "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    # the run's net as an exported program with a dynamic batch (its weights outside the module tree)
    from ntkrobust.bridge.checkpoint import load_checkpoint

    model = load_checkpoint(out / "checkpoints" / "epoch_002.pt")[0].eval()
    batch = {0: torch.export.Dim("batch")}
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=(batch,))
    torch.export.save(program, out.parent / "net.pt2")
    # colour images of 16 pixels, enough for crop-flip's padding of 4 (the digits have 8)
    rng = np.random.default_rng(0)
    images = {split: rng.random((n, 3, 16, 16), dtype=np.float32) for split, n in (("train", 40), ("test", 20))}
    labels = {split: np.arange(len(images[split])) % 4 for split in images}
    np.savez(out.parent / "colour.npz", **{f"{a}_{split}": (images if a == "x" else labels)[split]
                                           for a in "xy" for split in images})  # fmt: skip
    return out


#: the commands whose checks of degenerate inputs must read False
FALSE_TRUTH = {"dynamics with eigenvector pictures"}

PGD = ["--eps", "0.1", *FEW_STEPS]

# fmt: off
COMMANDS = {
    "entk, class blocks and AE-NTK": ["entk", *TASK, *CNN, "--points", "12", "--adversarial-eps", "0.1"],
    "entk, ResNet-18 with BatchNorm, Rademacher": ["entk", *TASK, *RESNET, "--points", "8", "--kind", "rademacher:2"],
    "entk, float64 full kind of a checkpoint": ["entk", *TASK, "--checkpoint", "{ckpt}", "--points", "8",
                                                "--kind", "full", "--dtype", "float64"],
    "train, TE with full tracking": ["train", *TASK, *CNN, "--mode", "te", *PGD, "--epochs", "2",
                                     "--track-kernel", "8", "--track-full"],
    "train, FGSM-noise, Rademacher tracking": ["train", *TASK, *CNN, "--mode", "fgsm-noise", *PGD, "--epochs", "1",
                                               "--track-kernel", "8", "--estimator", "rademacher:2"],
    "train, TRADES ResNet-18, both BatchNorms": ["train", *TASK, *RESNET, "--mode", "trades", *PGD, "--epochs", "1",
                                                 "--batchnorm", "both", "--track-kernel", "6"],
    "train, switch to PGD": ["train", *TASK, *CNN, "--mode", "pgd", *PGD, "--epochs", "2", "--switch-epoch", "1",
                             "--track-kernel", "0"],
    "train, centered from a checkpoint": ["train", *TASK, "--linearize-from", "{ckpt}", "--centered", "--mode", "pgd",
                                          *PGD, "--epochs", "1", "--track-kernel", "6"],
    "train, resumed on the device": ["train", *TASK, *CNN, "--mode", "pgd", *PGD, "--epochs", "3",
                                     "--track-kernel", "10", "--resume", "--out", "{resume}"],
    "dynamics with eigenvector pictures": ["dynamics", "{run}", "--eigenvectors", "1", "--eigenvector-steps", "3"],
    "two-layer": ["two-layer", *TASK, "--width", "50", "--epochs", "20"],
    "transfer with an eNTK surrogate": ["transfer", *TASK, "--target", "{ckpt}", "--surrogate", "mnist-cnn:4",
                                        "--surrogate-n", "20"],
    "evaluate, PGD and CW": ["evaluate", "{ckpt}", *TASK, "--eps", "0.1", "--attacks", "pgd-20,cw-100"],
    "train, crop-flip on colour images": ["train", "--data", "{colour}", "--model", "fc2", "--width", "16",
                                          "--mode", "pgd", *PGD, "--epochs", "1", "--augment", "crop-flip",
                                          "--track-kernel", "4"],
    "evaluate, an exported program": ["evaluate", "{exported}", "--trust-model-code", *TASK, "--eps", "0.1",
                                      "--attacks", "pgd-20"],
}
# fmt: on


#: the commands that share their work between the processes of a launch (the others refuse one)
SHARED = [name for name in COMMANDS if COMMANDS[name][0] in cli.DISTRIBUTED_COMMANDS]


def _run_on_the_device(name, cpu_run, tmp_path, meta_device, run_cli) -> OneDevice:
    resume = tmp_path / "resumed"
    if "{resume}" in COMMANDS[name]:  # a copy of the CPU run to continue, the same 2 epochs each time
        shutil.rmtree(resume, ignore_errors=True)
        shutil.copytree(cpu_run, resume)
    fields = {"ckpt": cpu_run / "checkpoints" / "epoch_002.pt", "run": cpu_run, "resume": resume,
              "exported": cpu_run.parent / "net.pt2", "colour": cpu_run.parent / "colour.npz"}  # fmt: skip
    argv = [arg.format(**fields) for arg in COMMANDS[name]]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    meta_device["truth"] = name not in FALSE_TRUTH
    with OneDevice() as mode:
        code, _, stderr = run_cli([*argv, "--device", "cuda", "--quiet", *out])
    assert code == 0, stderr
    return mode


@pytest.mark.parametrize("name", COMMANDS)
def test_a_cuda_command_runs_on_another_device_without_mixing(name, cpu_run, tmp_path, meta_device, run_cli):
    mode = _run_on_the_device(name, cpu_run, tmp_path, meta_device, run_cli)
    assert mode.ops.get("meta", 0) > 100, mode.ops  # the compute ran on the device


@pytest.mark.parametrize("name", SHARED)
def test_under_an_nccl_launch_both_ranks_reduce_the_same_tensors_on_the_device(
    name, cpu_run, tmp_path, meta_device, nccl_launch, run_cli
):
    """The paths of a launch (each process's share of rows, batches and attacks; BatchNorm over
    the whole batch; the kernel's all-reduce) on the device, every tensor an all-reduce gets
    there (the 2-process gloo tests cannot see a CPU tensor that NCCL would refuse), and the
    same collectives on both ranks."""
    made, ops = [], []
    for rank in (0, 1):
        with nccl_launch(rank) as collectives:
            ops.append(_run_on_the_device(name, cpu_run, tmp_path / f"rank{rank}", meta_device, run_cli).ops)
        made.append(collectives)
    # the compute ran on the device; rank 1 may have no share of it (evaluate's one batch of PGD)
    assert ops[0].get("meta", 0) > 100 and ops[1].get("meta", 0) > 0, ops
    assert any(c[0] == "all_reduce" for c in made[0]) and any(c[0] == "all_gather_object" for c in made[0])
    assert made[0] == made[1]


def test_crop_flip_draws_reach_the_device(meta_device):
    """Crop-flip alone, per image and with one draw for the batch (``--augment-shared``)."""
    from ntkrobust.bridge.augment import augment

    x = torch.rand(4, 3, 16, 16, device="meta")
    with OneDevice():
        assert augment(x, seed=0).device == x.device and augment(x, seed=0, shared=True).shape == x.shape


def test_upload_to_a_gpu_goes_through_pinned_memory_without_waiting(monkeypatch):
    """The CUDA branch of ``_upload.upload``, which no CPU reaches: a stand-in for a CUDA tensor
    (``is_cuda``, its device: here the meta device) and ``pin_memory`` recorded."""
    from ntkrobust._upload import upload

    pinned, to = [], torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    moves = []

    def recorded_to(self, *args, **kwargs):
        moves.append((args, kwargs))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recorded_to)
    like = types.SimpleNamespace(is_cuda=True, device=torch.device("meta"), dtype=torch.float16)
    out = upload(np.zeros((2, 3)), like=like)
    assert (out.device.type, out.dtype, out.shape) == ("meta", torch.float16, (2, 3))
    assert pinned == [(2, 3)] and moves == [((torch.device("meta"),), {"non_blocking": True})]
