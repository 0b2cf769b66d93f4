"""Every ``--device cuda`` path keeps its tensors on the device: checked without a GPU on torch's
meta device, where tensors have shapes, dtypes and a device but no values.

Each command runs through ``cli.main`` with ``--device cuda`` answered by the meta device. A
tensor left on the CPU that meets one on the device raises there as it would on a GPU ("Expected
all tensors to be on the same device"). Reads of a meta tensor's values (``.item()``,
``.tolist()``, ``.cpu()``, ``.numpy()``, ``float``/``int``) answer ones, and ``bool`` True (all
finite, say) or, where the command would take True for a degenerate input (an eigenvector of
eigenvalue zero), False; so the commands run to their end. Their numbers mean nothing: only the
exit status and that the device was read from are checked. AutoAttack (pyautoattack) branches
on its values and cannot run here; it is the only ``--device cuda`` path left out.

The commands that share their work under torchrun run again as rank 0 and as rank 1 of a launch
of 2 NCCL processes (``nccl_launch``): their paths of a launch on the device, and every tensor handed to an
all-reduce there, as NCCL requires (gloo, which the 2-process tests use, takes CPU tensors and
would not notice one left behind).

Before ``_upload.upload`` moved host draws to any device (it moved them to CUDA only), 8 of these
13 commands failed here (every attack with a random start, TRADES', FGSM-noise's and TE's
training steps) and so did crop-flip: a check that fails when a path leaves a tensor behind.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

import pytest
import torch

TASK = ["--data", "digits", "--n-train", "100", "--n-test", "30"]
CNN = ["--model", "mnist-cnn", "--width", "4"]
FEW_STEPS = ["--pgd-steps", "2", "--eval-pgd-steps", "2", "--full-eval-steps", "2", "--eval-n", "20"]
RESNET = ["--model", "resnet18", "--width", "2"]


@pytest.fixture
def meta_device(monkeypatch):
    """``--device cuda`` as the meta device; returns a counter of the values read from it and
    the truth that ``bool`` of a meta tensor answers."""
    from ntkrobust.studies import _common

    reads: dict[str, Any] = {"count": 0, "truth": True}

    def ones(t: torch.Tensor) -> torch.Tensor:
        reads["count"] += 1
        return torch.ones(t.shape, dtype=t.dtype)

    answers = {
        "item": lambda t: ones(t.reshape(())).item(),
        "tolist": lambda t: ones(t).tolist(),
        "cpu": ones,
        "numpy": lambda t: ones(t).numpy(),
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

    real = _common.torch_device

    def torch_device(name: str) -> torch.device:
        return torch.device("meta") if name == "cuda" else real(name)

    # every study that imported the function by name (their imports are of the module's top level)
    for module in [m for m in list(sys.modules.values()) if getattr(m, "torch_device", None) is real]:
        monkeypatch.setattr(module, "torch_device", torch_device)
    return reads


@pytest.fixture(params=[0, 1], ids=["rank 0", "rank 1"])
def nccl_launch(monkeypatch, request):
    """This process as rank 0 or 1 of a torchrun launch of 2 NCCL processes, its collectives answered
    here: an all-reduce leaves its tensor as it is (only shapes matter on the meta device) and
    refuses one that is not on the device, as NCCL does; the object collectives see 2 equal
    ranks; DistributedDataParallel is the net itself (its gradient all-reduce is torch's).
    Returns the list of the collectives made."""
    import torch.distributed as dist
    import torch.nn.parallel

    import ntkrobust.kernels._jax  # noqa: F401  (first: under a launch it would set this process's JAX up for one GPU)
    from ntkrobust.bridge import distributed

    made: list[str] = []
    rank = request.param

    def all_reduce(tensor: torch.Tensor, op: object = None) -> None:
        made.append("all_reduce")
        if tensor.device.type != "meta":
            raise RuntimeError(f"NCCL reduces tensors on GPUs only: an all-reduce of a tensor on {tensor.device}")

    def all_gather_object(out: list, obj: object) -> None:
        made.append("all_gather_object")
        out[:] = [obj] * len(out)

    class Unwrapped(torch.nn.Module):
        def __init__(self, module: torch.nn.Module, **_: object) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: object, **kwargs: object) -> object:
            return self.module(*args, **kwargs)

    fakes = {
        "is_initialized": lambda: True,
        "get_world_size": lambda group=None: 2,
        "get_rank": lambda group=None: rank,
        "get_backend": lambda group=None: "nccl",
        "all_reduce": all_reduce,
        "all_gather_object": all_gather_object,
        "broadcast_object_list": lambda box, src=0: made.append("broadcast_object_list"),
        "destroy_process_group": lambda group=None: None,
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(dist, name, fake)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", Unwrapped)
    monkeypatch.setattr(distributed, "_barrier", lambda: made.append("barrier"))
    agreed = distributed.agreed_minimum

    def agreed_minimum(value: int, device: torch.device | str = "cpu") -> int:
        agreed(value, device)  # its all-reduce, checked (on the meta device the minimum reads as 1)
        return value

    monkeypatch.setattr(distributed, "agreed_minimum", agreed_minimum)
    for name, value in {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}.items():
        monkeypatch.setenv(name, value)
    return made


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """A 2-epoch PGD training run of the CNN made on the CPU, with real values, for the commands
    that read a checkpoint or resume a run."""
    from ntkrobust import cli

    out = tmp_path_factory.mktemp("cpu") / "run"
    argv = ["train", *TASK, *CNN, "--mode", "pgd", *PGD, "--epochs", "2", "--track-kernel", "10"]
    assert cli.main([*argv, "--device", "cpu", "--quiet", "--out", str(out)]) == 0
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
}
# fmt: on


#: the commands that share their work between the processes of a launch (the others refuse one)
SHARED = [name for name in COMMANDS if COMMANDS[name][0] in ("entk", "train", "dynamics", "transfer")]


def _run_on_the_device(name, cpu_run, tmp_path, meta_device, run_cli) -> None:
    resume = tmp_path / "resumed"
    shutil.copytree(cpu_run, resume)
    fields = {"ckpt": cpu_run / "checkpoints" / "epoch_002.pt", "run": cpu_run, "resume": resume}
    argv = [arg.format(**fields) for arg in COMMANDS[name]]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    meta_device["truth"] = name not in FALSE_TRUTH
    code, _, stderr = run_cli([*argv, "--device", "cuda", "--quiet", *out])
    assert code == 0, stderr
    assert meta_device["count"] > 0  # the compute ran on the meta device, not on the CPU


@pytest.mark.parametrize("name", COMMANDS)
def test_a_cuda_command_runs_on_another_device_without_mixing(name, cpu_run, tmp_path, meta_device, run_cli):
    _run_on_the_device(name, cpu_run, tmp_path, meta_device, run_cli)


@pytest.mark.parametrize("name", SHARED)
def test_under_an_nccl_launch_every_collective_gets_a_tensor_on_the_device(
    name, cpu_run, tmp_path, meta_device, nccl_launch, run_cli
):
    """The paths of a launch (each process's share of rows, batches and attacks; BatchNorm over
    the whole batch; the kernel's all-reduce) on the device, and every tensor an all-reduce gets
    there: the 2-process gloo tests cannot see a CPU tensor that NCCL would refuse."""
    _run_on_the_device(name, cpu_run, tmp_path, meta_device, run_cli)
    assert "all_reduce" in nccl_launch and "all_gather_object" in nccl_launch  # the launch's paths ran


def test_crop_flip_draws_reach_the_device(meta_device):
    """Crop-flip needs sides of 16 pixels, more than the digits' 8: on its own."""
    from ntkrobust.bridge.augment import augment

    x = torch.rand(4, 3, 16, 16, device="meta")
    assert augment(x, seed=0).device == x.device and augment(x, seed=0, shared=True).shape == x.shape
