"""``studies.train.run(settings)``: a tracked run written into its own folder, ``resume``,
``force``, linearized and centered runs, the summary, and the settings it refuses before any
training. The runs of the suite are the fixtures of ``conftest`` (``small_training``)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from ntkrobust.studies import DataSettings, StudyError, StudyWarning, entk, train

NO_TRAINING = ("ntkrobust.bridge.experiment.run_training",)


@pytest.fixture
def copy_of_untracked(untracked_run, tmp_path):
    """A copy of the one-epoch run without kernels, free to change."""
    return shutil.copytree(untracked_run.out, tmp_path / "run")


def test_a_tracked_pgd_run(tracked_runs):
    result = tracked_runs["pgd"]
    out = result.out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "history.json", "kernels"]
    assert len(list((out / "checkpoints").glob("epoch_*.pt"))) == 3
    assert len(list((out / "kernels").glob("step_*.npz"))) == 3
    history = result.record
    assert history == json.loads((out / "history.json").read_text())
    assert [r["mode"] for r in history["epochs"]] == ["init", "pgd", "pgd"]
    assert history["config"]["train"]["eps"] == 0.1 and history["config"]["model"]["model"] == "fc2"
    assert history["label"] == "fc2 pgd" and history["steps_per_epoch"] == 10
    assert "torch" in history["versions"] and history["argv"] is None
    summary = result.summary()
    assert summary.startswith("fc2 pgd: 2 epochs, test clean ") and "Frobenius" in summary


def test_save_keeps_the_run_in_its_own_folder(tracked_runs, tmp_path):
    result = tracked_runs["standard"]
    assert result.save(result.out) == result.out
    with pytest.raises(StudyError, match="lives in its own folder"):
        result.save(tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_checkpoint_of_a_run_loads_for_entk(tracked_runs):
    checkpoint = tracked_runs["standard"].out / "checkpoints" / "epoch_001.pt"
    settings = entk.EntkSettings(data=DataSettings(n_train=100, n_test=60), checkpoint=checkpoint, n=10)
    network = entk.run(settings).record["network"]
    assert network["model"] == "fc2" and network["width"] == 32 and network["checkpoint"] == str(checkpoint)


def test_resume_continues_a_run(copy_of_untracked, small_training):
    train.run(small_training(copy_of_untracked, epochs=2, track_kernel=0, resume=True))
    history = json.loads((copy_of_untracked / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [0, 1, 2]
    assert json.loads((copy_of_untracked / "config.json").read_text())["train"]["epochs"] == 2


def test_resume_refuses_a_different_configuration(copy_of_untracked, small_training, refuses):
    before = (copy_of_untracked / "history.json").read_text()
    settings = small_training(copy_of_untracked, epochs=1, track_kernel=0, lr=0.2, resume=True)
    refuses(train, settings, "different configuration: train.lr was 0.5, now 0.2")
    assert (copy_of_untracked / "history.json").read_text() == before


def test_force_starts_over_and_leaves_other_files(copy_of_untracked, small_training):
    stale = copy_of_untracked / "checkpoints" / "epoch_005.pt"
    stale.write_bytes(b"a previous, longer run")
    (copy_of_untracked / "notes.txt").write_text("mine")
    train.run(small_training(copy_of_untracked, epochs=1, track_kernel=0, force=True))
    assert not stale.exists() and (copy_of_untracked / "notes.txt").read_text() == "mine"
    assert [r["epoch"] for r in json.loads((copy_of_untracked / "history.json").read_text())["epochs"]] == [0, 1]


def test_linearized_and_centered_runs(tracked_runs, small_training, tmp_path, refuses):
    parent = tracked_runs["standard"].out / "checkpoints" / "epoch_001.pt"
    for centered in (False, True):
        out = tmp_path / ("centered" if centered else "linearized")
        settings = small_training(out, epochs=1, model=None, width=None, linearize_from=parent, centered=centered)
        result = train.run(settings)
        history = result.record
        assert history["config"]["linearization"]["centered"] == centered
        assert history["config"]["linearization"]["spawn_epoch"] == 1
        assert history["label"] == f"fc2 {'centered' if centered else 'linearized'} (standard)"
        magnitudes = [r["relative_magnitude"] for r in history["epochs"]]
        assert magnitudes[0] == 0.0 and magnitudes[1] > 0
        # the linearized network's kernel is frozen: the C-NTK is the parent's at every epoch
        with (
            np.load(out / "kernels" / "step_0000000.npz") as first,
            np.load(out / "kernels" / "step_0000010.npz") as last,
        ):
            np.testing.assert_allclose(first["clean"], last["clean"], rtol=1e-6, atol=1e-9)
    standard = small_training(
        tmp_path / "standard", epochs=1, model=None, width=None, linearize_from=parent, centered_standard=True
    )
    no_norms = "--stage2-batchnorm train: fc2 has no BatchNorm"
    refuses(train, dataclasses.replace(standard, stage2_batchnorm="train"), no_norms)
    history = train.run(standard).record
    assert history["label"] == "fc2 centered-standard (standard)"
    assert history["config"]["linearization"] == {
        "checkpoint": str(parent), "spawn_epoch": 1, "centered": True, "standard": True, "batchnorm": "frozen"
    }  # fmt: skip
    assert history["epochs"][0]["accuracy"]["running"]["test_clean"] == pytest.approx(0.1)  # f = 0 at spawn
    with (  # its kernel moves: it is the trained net's
        np.load(tmp_path / "standard" / "kernels" / "step_0000000.npz") as first,
        np.load(tmp_path / "standard" / "kernels" / "step_0000010.npz") as last,
    ):
        assert not np.allclose(first["clean"], last["clean"], rtol=1e-6, atol=1e-9)
    centered = json.loads((tmp_path / "centered" / "history.json").read_text())
    assert centered["epochs"][0]["accuracy"]["running"]["test_clean"] == pytest.approx(0.1)  # f = 0: class 0
    twice = small_training(
        tmp_path / "twice", model=None, width=None, linearize_from=out / "checkpoints" / "epoch_001.pt"
    )
    refuses(train, twice, "is itself a linearized network", compute=NO_TRAINING)


#: TrainSettings fields (beside small_training's, one epoch) -> the refusal
BAD = {
    "eps above 1": ({"eps": 1.5}, "--eps must lie in (0, 1]"),
    "eps just above 1": ({"eps": 1.0000001}, "--eps must lie in (0, 1] (pixel units), got 1.0000001"),
    "zero eps": ({"eps": 0.0}, "--eps must lie in (0, 1]"),
    "eps in 0-255 units": ({"eps": 8.0}, "--eps must lie in (0, 1] (pixel units), got 8.0; did you mean 8/255?"),
    "unknown mode": ({"mode": "free"}, "unknown training mode 'free'"),
    "probe too large": ({"track_kernel": 500}, "--track-kernel 500 exceeds the 100 training points"),
    "centered alone": ({"centered": True}, "--centered needs --linearize-from"),
    "switch without a mode": ({"switch_epoch": 2}, "--switch-epoch switches from clean training"),
    "switch after the last epoch": ({"mode": "pgd", "switch_epoch": 1}, "the run would never train adversarially"),
    # the warm-up's warning divided by the adversarial epochs (-1 here): a ZeroDivisionError before
    "switch beyond the last epoch": ({"mode": "pgd", "switch_epoch": 2}, "--switch-epoch 2 is not before the last"),
    "a full evaluation turned off": ({"full_eval_every": 1, "full_eval_steps": 0}, "--full-eval-steps 0 turns off"),
    "momentum": ({"momentum": 1.5}, "invalid momentum for training: 1.5"),
    "resume nothing": ({"resume": True}, "holds no run to continue"),
    "resume and force": ({"resume": True, "force": True}, "choose one"),
    "warm-up without an attack": ({"eps_warmup": 2}, "--eps-warmup ramps the training attack's eps"),
    "crop of 8x8 digits": ({"augment": "crop-flip"}, "--augment crop-flip pads by 4 and crops: the 8x8 images"),
    "shared without augmentation": ({"augment_shared": True}, "--augment-shared shares the draws"),
    "init of an NTK twin": ({"init": "normal"}, "fc2 draws its weights as its analytic kernel assumes"),
    "te in one epoch": ({"mode": "te"}, "--mode te ramps its regulariser from epoch 1 to 1"),
    "te ramp without te": ({"te_start": 2}, "--te-start / --te-end / --te-weight set the regulariser of --mode te"),
    "centered standard alone": ({"centered_standard": True}, "--centered-standard needs --linearize-from"),
    "stage-2 BN of a linearized net": ({"stage2_batchnorm": "train"}, "--stage2-batchnorm train applies to"),
    "unknown estimator": ({"estimator": "hutch"}, "--estimator must be exact or rademacher:K"),
    "full kernel estimated": ({"estimator": "rademacher:2", "track_full": True}, "--estimator estimates the trace"),
    "a last batch of one through 1x1 BatchNorm": (
        {"model": "resnet18", "width": 2, "batch_size": 99},
        "--batch-size 99 leaves a last batch of one of the 100 training points, and BatchNorm layer4.0.bn1",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_settings_are_refused_before_training(case, small_training, tmp_path, refuses):
    fields, message = BAD[case]
    out = tmp_path / "run"
    refuses(train, small_training(out, epochs=1, **fields), message, compute=NO_TRAINING)
    assert not out.exists()


def test_cuda_request_without_a_gpu_is_refused(small_training, tmp_path, refuses):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    refuses(train, small_training(tmp_path / "run", device="cuda"), "no CUDA device", compute=NO_TRAINING)


def test_a_folder_holding_other_files_needs_force(small_training, tmp_path, refuses):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refuses(train, small_training(out), "exists and is not empty (use --force", compute=NO_TRAINING)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_linearization_checkpoint(small_training, tmp_path, refuses):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    plain = {"model": None, "width": None}
    for path, message in ((garbage, "is not a checkpoint of this tool"), (tmp_path / "missing.pt", "does not exist")):
        refuses(train, small_training(tmp_path / "run", linearize_from=path, **plain), message, compute=NO_TRAINING)
    refuses(train, small_training(tmp_path / "run", linearize_from=garbage), "--model / --width / --init do not apply")
    from ntkrobust.bridge.checkpoint import save_checkpoint
    from ntkrobust.bridge.models import build_model, model_config

    one_logit = model_config("two-layer", (1, 8, 8), 1, width=4)  # as two-layer writes for a binary task
    save_checkpoint(tmp_path / "one-logit.pt", build_model(one_logit), one_logit)
    binary = dataclasses.replace(small_training(tmp_path / "run").data, classes=(3, 8))
    refuses(
        train,
        small_training(tmp_path / "run", linearize_from=tmp_path / "one-logit.pt", data=binary, **plain),
        "has 1 output, a one-logit binary net (as two-layer writes); this command needs one output per class",
        compute=NO_TRAINING,
    )


def test_seeds_write_one_run_each_on_one_probe(small_training, tmp_path, refuses):
    import json

    import numpy as np

    out = tmp_path / "seeds"
    result = train.run(small_training(out, epochs=1, seeds=(0, 1)))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["seed_0", "seed_1"]
    result.save(out)
    stored = json.loads((out / "seeds.json").read_text())
    assert stored["seeds"] == [0, 1] and [r["folder"] for r in stored["runs"]] == ["seed_0", "seed_1"]
    finals = [r["final"]["test_clean"] for r in stored["runs"]]
    assert stored["mean"]["test_clean"] == pytest.approx(np.mean(finals))
    assert stored["std"]["test_clean"] == pytest.approx(np.std(finals, ddof=1))
    histories = [json.loads((out / f"seed_{s}" / "history.json").read_text()) for s in (0, 1)]
    assert [h["config"]["train"]["seed"] for h in histories] == [0, 1]
    assert [h["config"]["model"]["seed"] for h in histories] == [0, 1]
    probes = [np.load(out / f"seed_{s}" / "kernels" / "probe.npz")["x"] for s in (0, 1)]
    np.testing.assert_array_equal(*probes)  # the kernels of both seeds are on the same points
    assert histories[0]["epochs"][-1]["train_loss"] != histories[1]["epochs"][-1]["train_loss"]
    assert "2 seeds: test_clean" in result.summary()
    more = train.run(small_training(out, epochs=2, seeds=(0, 1), resume=True))
    assert [len(r.record["epochs"]) for r in more.runs] == [3, 3]
    refuses(train, small_training(tmp_path / "twice", seeds=(1, 1)), "names a seed twice", compute=NO_TRAINING)


def test_each_seed_records_its_own_gpu_peak_and_seeds_json_the_largest(small_training, tmp_path, monkeypatch):
    """``train --seeds`` runs its seeds in one process: the peak GPU memory counts from each seed's
    start (its history's own), and ``seeds.json`` holds the largest, not the last seed's. Every
    history says which GPU arithmetic it got (``gpu``: the first GPU run's histories had the peak
    but not this). torch's CUDA counters stand in as functions here (no GPU)."""
    import json

    from ntkrobust.studies import _base

    gpu = {"name": "H200", "tf32_convolutions": True, "tf32_matmul": False}
    restarts, peaks = [], iter([5.0, 9.0, 2.0])  # the last: the counter after the last seed's restart
    monkeypatch.setattr(train, "restart_gpu_peak", lambda: restarts.append(1))
    monkeypatch.setattr(_base, "peak_gpu_memory", lambda: next(peaks))
    monkeypatch.setattr(_base, "gpu_precision", lambda: gpu)
    out = tmp_path / "seeds"
    train.run(small_training(out, epochs=1, seeds=(0, 1), track_kernel=0)).save(out)
    histories = [json.loads((out / f"seed_{s}" / "history.json").read_text()) for s in (0, 1)]
    assert len(restarts) == 2 and [h["peak_gpu_memory_mib"] for h in histories] == [5.0, 9.0]
    assert [h["gpu"] for h in histories] == [gpu, gpu]
    seeds = json.loads((out / "seeds.json").read_text())
    assert seeds["peak_gpu_memory_mib"] == 9.0 and seeds["gpu"] == gpu


def test_batchnorm_batch_trains_a_net_without_running_statistics(small_training, tmp_path, refuses):
    import torch

    settings = small_training(tmp_path / "run", model="resnet18", width=2, epochs=1, batchnorm="batch", track_kernel=8)
    history = train.run(settings).record
    assert history["config"]["model"]["running_stats"] is False
    assert set(history["epochs"][-1]["accuracy"]) == {"batch"}
    assert history["kernels"][-1]["clean"]["frobenius_norm"] > 0  # the kernel of batch statistics
    stored = torch.load(tmp_path / "run" / "checkpoints" / "epoch_001.pt", weights_only=True)["state_dict"]
    assert not [key for key in stored if "running" in key or "num_batches" in key]
    refuses(train, small_training(tmp_path / "fc", batchnorm="batch"), "--batchnorm batch: fc2 has no BatchNorm layers")


def test_an_estimated_trace_kernel_is_tracked_without_the_specialization(small_training, tmp_path):
    """--estimator rademacher:K tracks the trace kernel's estimate; the metrics that need the class
    blocks are left out, the others recorded."""
    history = train.run(small_training(tmp_path / "run", epochs=1, estimator="rademacher:2")).record
    assert history["config"]["tracking"]["estimator"] == "rademacher:2"
    clean = history["kernels"][-1]["clean"]
    assert clean["frobenius_norm"] > 0 and "effective_rank" in clean and "mean_specialization" not in clean
    from ntkrobust.bridge.runs import dynamics_summary, load_run

    assert dynamics_summary(load_run(tmp_path / "run"))["estimator"] == "rademacher:2"  # for dynamics' figures


def test_final_eval_autoattack_records_robustbenchs_attacks(small_training, tmp_path):
    import json

    out = tmp_path / "run"
    # a net that learned (0.70 clean here), so that AutoAttack has points to take: at chance every
    # attack reads 0 and the order below holds whatever AutoAttack does
    data = DataSettings(n_train=400, n_test=60)
    settings = small_training(
        out, data=data, mode="standard", epochs=3, lr=1.0, track_kernel=0, eval_n=20, final_eval="autoattack"
    )
    history = train.run(settings).record
    final = history["final_evaluation"]
    assert final["points"] == 20 and set(final["accuracy"]) >= {"clean", "pgd-20", "autoattack", "worst_case"}
    accuracy = final["accuracy"]
    assert accuracy["clean"] > 0.3 and accuracy["worst_case"] <= accuracy["autoattack"] < accuracy["clean"]
    assert json.loads((out / "history.json").read_text())["final_evaluation"] == final


def test_a_net_left_at_chance_is_said_and_recorded(tmp_path, small_training):
    # lr 1e-4 moves fc2 nowhere in two steps: its test accuracy stays at chance (0.1 + 0.05 at most)
    settings = small_training(tmp_path / "run", epochs=1, track_kernel=0, lr=1e-4)
    with pytest.warns(StudyWarning, match=r"after 1 epochs is near chance \(0.100 for 10 classes\)"):
        result = train.run(settings)
    assert result.record["warnings"] == json.loads((tmp_path / "run" / "history.json").read_text())["warnings"]
    assert "near chance" in result.record["warnings"][-1]


def test_a_warmup_longer_than_the_adversarial_epochs_is_said_and_recorded(tmp_path, small_training):
    """Two adversarial epochs (of three, after one clean) of a three-epoch ramp: the attack ends at
    2/3 of its eps. Said, not refused: a resume with more epochs finishes the ramp."""
    settings = small_training(
        tmp_path / "run", mode="pgd", eps=0.3, epochs=3, switch_epoch=1, eps_warmup=3, track_kernel=0
    )
    with pytest.warns(
        StudyWarning, match=r"--eps-warmup 3 ramps over more than the 2 adversarial epochs: .* eps 0.2, not 0.3"
    ):
        result = train.run(settings)
    assert any("--eps-warmup 3" in text for text in result.record["warnings"])


def test_a_net_that_learned_and_an_untrained_start_are_not_flagged(tmp_path, small_training):
    data = DataSettings(n_train=400, n_test=60)
    learned = train.run(small_training(tmp_path / "learned", data=data, epochs=3, track_kernel=0, lr=1.0))
    assert learned.record["epochs"][-1]["accuracy"]["running"]["test_clean"] > 0.3
    start = train.run(small_training(tmp_path / "init", epochs=0, track_kernel=0))
    assert not any("near chance" in text for text in learned.record["warnings"] + start.record["warnings"])
