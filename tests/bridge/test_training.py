"""Training modes, the step schedule, BatchNorm evaluation modes, and resumable runs."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

from ntkrobust.attacks import AttackSpec
from ntkrobust.bridge.data import load_dataset, task_indices
from ntkrobust.bridge.experiment import RunFolderError, TrackingConfig, run_training
from ntkrobust.bridge.models import build_model, model_config
from ntkrobust.bridge.tracking import batch_statistics, clean_accuracy
from ntkrobust.bridge.training import MODES, TrainConfig, learning_rate, train_epoch, training_inputs, training_loss

warnings.filterwarnings("ignore", message="CUDA initialization")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=100, n_test=60, seed=0)


def _tensors(data):
    x = torch.as_tensor(data.x_train)
    y = torch.as_tensor(task_indices(data.y_train, data.classes))
    return x, y


def _fc2(data, width=64, seed=0):
    config = model_config("fc2", data.image_shape, len(data.classes), width=width, seed=seed)
    return build_model(config), config


def test_modes_are_the_cli_choices():
    from ntkrobust import cli
    from ntkrobust.bridge.augment import AUGMENTATIONS
    from ntkrobust.bridge.initialisation import INITIALISATIONS

    assert (cli.TRAINING_MODES, cli.AUGMENTATIONS, cli.INITIALISATIONS) == (MODES, AUGMENTATIONS, INITIALISATIONS)


def test_the_study_defaults_are_the_trainers():
    """The study's defaults, written without importing torch, compare with the trainer's to tell
    a flag given from one left alone (``studies._train_settings.unread_flags``)."""
    from ntkrobust.bridge.training import TRADES_BETA, TrainConfig
    from ntkrobust.studies.train import TrainSettings

    assert TrainSettings.trades_beta == TRADES_BETA == TrainConfig.trades_beta
    assert TrainSettings.gamma == TrainConfig.gamma


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_lowers_its_loss(digits, mode):
    x, y = _tensors(digits)
    x, y = x[:64], y[:64]
    model, _ = _fc2(digits)
    ramp = {"te_start": 1, "te_end": 2} if mode == "te" else {}
    config = TrainConfig(mode=mode, lr=0.5, momentum=0.0, eps=0.1, pgd_step=0.03, pgd_steps=3, **ramp)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    te = (torch.full((64, 10), 0.1), 50.0) if mode == "te" else (None, 0.0)  # TE towards uniform targets

    def loss() -> float:  # the mode's own loss on the batch, with the same attack draws
        model.train()
        return float(training_loss(model, x, y, mode, config, 7, te)[0].detach())

    before = loss()
    for _ in range(3):
        optimizer.zero_grad()
        training_loss(model, x, y, mode, config, 7, te)[0].backward()
        optimizer.step()
    assert loss() < before - 0.02


def test_a_non_finite_loss_stops_the_epoch(digits):
    """The running loss is read every 20 steps and at the epoch's end (no host round trip per
    step): a net whose loss is NaN from the first step stops with FloatingPointError there."""
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    config = TrainConfig(mode="standard", lr=0.1, batch_size=32, epochs=1)
    with pytest.raises(FloatingPointError, match=r"the training loss became nan by step 4 \(epoch 1\)"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, config, 1)


def test_an_update_that_overflows_the_net_stops_the_epoch(digits):
    """One step at lr 1e30: its loss is finite, the weights after it are finite (about 1e27) but
    the net's outputs are not. The epoch's end checks the outputs on its last batch."""
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    config = TrainConfig(mode="standard", lr=1e30, batch_size=x.shape[0], epochs=1)
    with pytest.raises(FloatingPointError, match=r"outputs became NaN or inf after the last update of epoch 1"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=1e30), x, y, config, 1)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("mode", ["fgsm", "fgsm-noise", "pgd", "trades"])
def test_training_inputs_stay_in_the_threat_model(digits, mode):
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    config = TrainConfig(mode=mode, eps=0.1, pgd_step=0.03, pgd_steps=3)
    x_adv = training_inputs(model, x, y, mode, config, seed=3)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_adv - x).abs().max()) > 0.05  # it moved
    assert torch.equal(x_adv, training_inputs(model, x, y, mode, config, seed=3))  # seeded
    assert model.training  # the mode was restored


def _per_example_cross_entropy(model, x, y):
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("mode", ["fgsm", "fgsm-noise", "pgd"])
def test_training_attacks_raise_each_examples_loss(digits, mode):
    """The inputs the net trains on are attacks: every example's cross-entropy rises (an attack
    whose gradient's sign was flipped lowered it and passed the threat-model test above). Float64
    on the net at initialisation, ε = 0.1: every example of the 100 rose by 0.2 or more (median
    0.48-0.57), the test asks 0.01."""
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    model, x = model.double(), x.double()
    config = TrainConfig(mode=mode, eps=0.1, pgd_step=0.03, pgd_steps=5)
    raised = _per_example_cross_entropy(model, training_inputs(model, x, y, mode, config, seed=3), y)
    assert bool((raised > _per_example_cross_entropy(model, x, y) + 0.01).all())


def test_fgsm_training_inputs_are_the_sign_step_of_autograd(digits):
    """FGSM's training inputs are clip(x + ε·sign(∇ₓ CE(f(x), y)), 0, 1) exactly, with the
    gradient taken here by plain autograd on the summed loss."""
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    model, x = model.double(), x.double()
    z = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(z), y, reduction="sum"), z)
    expected = (x + 0.1 * gradient.sign()).clamp(0, 1)
    got = training_inputs(model, x, y, "fgsm", TrainConfig(mode="fgsm", eps=0.1), seed=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


def test_trades_loss_is_cross_entropy_plus_beta_kl_of_its_attack(digits):
    """TRADES (Zhang et al. 2019, eq. 5): CE(f(x), y) + β·KL(p(x) ‖ p(x̃)), averaged over the
    batch, with x̃ the inputs its inner attack found; and that attack finds a larger KL than a
    random corner of the ball. Float64, β = 6, tolerance 1e-12 relative. A robust term left out,
    or taken as KL(p(x̃) ‖ p(x)), passed the β = 0 test below."""
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    model, x = model.double(), x.double()
    config = TrainConfig(mode="trades", eps=0.1, pgd_step=0.03, pgd_steps=5, trades_beta=6.0)
    x_adv = training_inputs(model, x, y, "trades", config, seed=2)
    loss, logits = training_loss(model, x, y, "trades", config, seed=2)
    with torch.no_grad():
        clean = torch.log_softmax(model(x), dim=1)
        adversarial = torch.log_softmax(model(x_adv), dim=1)
        kl = (clean.exp() * (clean - adversarial)).sum(dim=1)
        cross_entropy = -clean.gather(1, y[:, None])[:, 0]
        expected = (cross_entropy + 6.0 * kl).mean()
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(logits, model(x_adv), rtol=1e-12, atol=0)
        # a random corner of the ball: the attack beats it on every example (0.056 against
        # 0.0066 on average); an attack that descended the KL beat it on 18 of 100
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
        corner = torch.log_softmax(model((x + 0.1 * noise.sign()).clamp(0, 1)), dim=1)
        assert float((kl > (clean.exp() * (clean - corner)).sum(dim=1)).double().mean()) >= 0.95


def test_anisotropic_noise_differs_per_example(digits):
    """FGSM with noise: the same image twice in a batch gets different starts, hence (generally)
    different training inputs; plain FGSM gives identical ones."""
    x, y = _tensors(digits)
    pair, labels = x[:1].repeat(2, 1, 1, 1), y[:1].repeat(2)
    model, _ = _fc2(digits)
    config = TrainConfig(mode="fgsm-noise", eps=0.1)
    noisy = training_inputs(model, pair, labels, "fgsm-noise", config, seed=0)
    plain = training_inputs(model, pair, labels, "fgsm", config, seed=0)
    assert torch.equal(plain[0], plain[1])
    assert float((noisy[0] - noisy[1]).abs().max()) > 0.01


def test_trades_without_its_robust_term_is_cross_entropy(digits):
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    config = TrainConfig(mode="trades", eps=0.1, pgd_step=0.03, pgd_steps=2, trades_beta=0.0)
    loss, _ = training_loss(model, x, y, "trades", config, seed=0)
    clean = torch.nn.functional.cross_entropy(model(x), y)
    assert float(loss.detach()) == pytest.approx(float(clean.detach()), rel=1e-6)


def test_switch_epoch_and_step_schedule():
    config = TrainConfig(mode="pgd", switch_epoch=2, lr=0.1, milestones=(2, 4), gamma=0.5)
    assert [config.mode_at(e) for e in (1, 2, 3, 10)] == ["standard", "standard", "pgd", "pgd"]
    assert [learning_rate(config, e) for e in (1, 2, 3, 4, 5)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_eps_warms_up_batch_by_batch_over_the_first_adversarial_epochs():
    config = TrainConfig(mode="pgd", eps=0.3, pgd_step=0.01, eps_warmup=2, switch_epoch=1)
    # epoch 1 is clean; epochs 2-3 ramp over 2 x 4 batches; epoch 4 is at full strength
    ramp = [config.eps_at(epoch, b, 4) for epoch in (2, 3, 4) for b in range(4)]
    assert ramp == pytest.approx([0.3 * k / 8 for k in range(1, 9)] + [0.3] * 4)
    assert config.at_eps(0.15).pgd_step == pytest.approx(0.005) and config.at_eps(0.3) is config
    assert TrainConfig(mode="pgd", eps=0.3).eps_at(1, 0, 4) == 0.3  # no warm-up


def test_the_warm_up_attack_stays_in_its_smaller_ball(digits):
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    config = TrainConfig(mode="pgd", epochs=2, lr=0.1, batch_size=50, eps=0.2, pgd_step=0.05, pgd_steps=4, eps_warmup=2)
    seen = []
    real = training_inputs

    def spy(model, x, y, mode, config, seed, te, part=None):
        x_adv = real(model, x, y, mode, config, seed, te, part)
        seen.append((config.eps, float((x_adv - x).abs().max())))
        return x_adv

    import ntkrobust.bridge.training as training

    training.training_inputs = spy
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        summary = train_epoch(model, optimizer, x, y, config, 1)
    finally:
        training.training_inputs = real
    assert [eps for eps, _ in seen] == pytest.approx([0.05, 0.1])  # 2 of the 4 warm-up batches
    assert all(moved <= eps + 1e-6 for eps, moved in seen) and seen[1][1] > 0.05
    assert summary["eps"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "free"}, "unknown training mode"),
        ({"eps_warmup": -1}, "invalid eps warm-up"),
        ({"eps": 1.5}, "eps must lie in [0, 1]"),
        ({"mode": "pgd", "eps": 0.0}, "needs eps > 0"),
        ({"batch_size": 0}, "invalid batch size"),
        # types before bounds: each of these passed every bound check before
        ({"batch_size": 2.5}, "invalid batch size for training: 2.5 (not a whole number)"),
        ({"epochs": True}, "invalid epochs for training: True (not a whole number)"),
        ({"pgd_steps": 10.0}, "invalid PGD steps for training: 10.0 (not a whole number)"),
        ({"switch_epoch": 1.5}, "invalid switch epoch for training: 1.5 (not a whole number)"),
        # named as the bound checks name them
        ({"eps_warmup": 1.5}, "invalid eps warm-up for training: 1.5 (not a whole number)"),
        ({"te_weight": "300"}, "invalid TE weight for training: '300' (not a number)"),
        ({"mode": "pgd", "eps": True}, "invalid eps for training: True (not a number)"),
        ({"lr": "0.1"}, "invalid lr for training: '0.1' (not a number)"),  # was math's TypeError
        ({"milestones": (2.5,)}, "invalid milestones for training: [2.5] (not whole numbers)"),
        ({"augment_shared": "no"}, "invalid augment shared for training: 'no' (not True or False)"),
        ({"seed": -1}, "invalid seed for training: -1"),  # was SeedSequence's error at the first epoch
    ],
)
def test_bad_training_configuration(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**changes)


def test_training_configuration_takes_numpys_numbers():
    config = TrainConfig(epochs=np.int64(3), batch_size=np.int32(8), lr=np.float32(0.5), milestones=(np.int64(2),))
    assert config == TrainConfig(epochs=3, batch_size=8, lr=0.5, milestones=(2,))
    assert TrainConfig(switch_epoch=None).switch_epoch is None


def test_epoch_uses_the_switch_mode_and_reports(digits):
    x, y = _tensors(digits)
    model, _ = _fc2(digits)
    config = TrainConfig(mode="fgsm", switch_epoch=1, lr=0.3, batch_size=32, eps=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    steps = []
    first = train_epoch(model, optimizer, x, y, config, 1, after_step=steps.append)
    second = train_epoch(model, optimizer, x, y, config, 2, first_step=4)
    assert first["mode"] == "standard" and second["mode"] == "fgsm"
    assert steps == [1, 2, 3, 4] and first["steps"] == 4
    assert 0 <= second["train_accuracy_running"] <= 1


def test_batch_statistics_evaluation_is_train_mode_batchnorm_without_side_effects():
    import copy

    config = model_config("resnet18", (3, 8, 8), 3, width=4, seed=0)
    model = build_model(config)
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 8, 8))  # non-trivial running statistics
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(10, 3, 8, 8) * 0.5 + 0.5  # statistics far from the running ones
    with torch.no_grad(), batch_statistics(model) as net:
        batch_out = net(x)
        assert not net.training
    with torch.no_grad():
        reference = copy.deepcopy(model).train()(x)  # train-mode BatchNorm: the batch's statistics
        running_out = model(x)
    torch.testing.assert_close(batch_out, reference, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch_out, running_out, atol=1e-3)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the batch counts too
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert norm.momentum == 0.1 and not model.training


def test_single_value_batchnorms_are_those_on_one_by_one_maps():
    """ResNet-18 on 8 x 8 images: its last stage's maps are 1 x 1, so a one-example batch gives
    its BatchNorm one value per channel; on 32 x 32 none; a linearized net's BatchNorm is frozen."""
    from ntkrobust.bridge.linearized import LinearizedNetwork
    from ntkrobust.bridge.tracking import single_value_batchnorms

    small = build_model(model_config("resnet18", (3, 8, 8), 3, width=2, seed=0)).eval()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    found = single_value_batchnorms(small, torch.rand(2, 3, 8, 8))
    assert found and all(name.startswith("layer4.") for name in found) and "layer4.0.bn1" in found
    assert not small.training and all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())  # a copy ran
    large = build_model(model_config("resnet18", (3, 32, 32), 3, width=2, seed=0))
    assert single_value_batchnorms(large, torch.rand(2, 3, 32, 32)) == []
    assert single_value_batchnorms(LinearizedNetwork(small), torch.rand(2, 3, 8, 8)) == []


def test_batch_statistics_do_not_move_running_ones():
    config = model_config("resnet18", (3, 8, 8), 3, width=4, seed=0)
    model = build_model(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    clean_accuracy(model, torch.rand(12, 3, 8, 8), torch.zeros(12, dtype=torch.int64), batchnorm="batch")
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not model.training


# -- runs on disk ---------------------------------------------------------------------------


def _run(tmp, data, *, epochs=3, every=None, resume=False, interrupt_at=None, probe=16, mode="pgd", budget=None):
    model, config = _fc2(data, width=32)
    # the ε warm-up and the full evaluations every 2 epochs are part of what a resume reproduces
    ramp = {"te_start": 1, "te_end": 2} if mode == "te" else {}
    train = TrainConfig(
        mode=mode, epochs=epochs, lr=0.3, batch_size=32, eps=0.1, pgd_step=0.03, pgd_steps=2, eps_warmup=2, **ramp
    )
    tracking = TrackingConfig(
        eps=0.1,
        step=0.03,
        steps=2,
        probe=probe,
        every=every,
        eval_n=30,
        full_step=0.02,
        full_steps=6,
        full_every=2,
        memory_budget=budget,
    )
    run_config = {"model": config.to_dict(), "train": train.to_dict(), "tracking": tracking.to_dict(), "device": "cpu"}
    if interrupt_at is not None:
        import ntkrobust.bridge.experiment as experiment

        real = experiment.train_epoch

        def interrupted(*args, **kwargs):
            if args[5] == interrupt_at:  # the epoch argument
                after = kwargs["after_step"]

                def stop(step: int) -> None:
                    after(step)
                    if step == kwargs["first_step"] + 2:
                        raise KeyboardInterrupt

                kwargs["after_step"] = stop
            return real(*args, **kwargs)

        experiment.train_epoch = interrupted
        try:
            with pytest.raises(KeyboardInterrupt):
                run_training(tmp, model, config, data, train, tracking, config=run_config, label="t", device="cpu")
        finally:
            experiment.train_epoch = real
        return None
    return run_training(
        tmp,
        model,
        config,
        data,
        train,
        tracking,
        config=run_config,
        label="t",
        device=torch.device("cpu"),
        resume=resume,
    )


def _without_times(history):
    history = json.loads(json.dumps(history))
    for record in history["epochs"] + history["kernels"]:
        record.pop("seconds", None)
        record.get("full_evaluation", {}).pop("seconds", None)
    return history


def test_run_tracks_one_kernel_per_epoch(tmp_path, digits):
    history = _run(tmp_path, digits, epochs=2)
    assert [r["epoch"] for r in history["epochs"]] == [0, 1, 2]
    assert [k["epoch"] for k in history["kernels"]] == [0.0, 1.0, 2.0]
    files = sorted(p.name for p in (tmp_path / "kernels").iterdir())
    assert files == ["probe.npz", "step_0000000.npz", "step_0000004.npz", "step_0000008.npz"]
    with np.load(tmp_path / "kernels" / "step_0000004.npz", allow_pickle=False) as arrays:
        assert arrays["clean"].shape == arrays["adversarial"].shape == (16, 16)
        np.testing.assert_allclose(arrays["clean"], arrays["clean"].T, rtol=1e-10)
        assert arrays["x_adversarial"].shape == (16, 1, 8, 8)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_000.pt",
        "epoch_001.pt",
        "epoch_002.pt",
    ]
    record = history["epochs"][-1]
    assert set(record["accuracy"]["running"]) == {"train_clean", "train_pgd", "test_clean", "test_pgd"}
    assert np.isfinite(record["train_loss"]) and record["mode"] == "pgd"
    assert {"frobenius_norm", "concentration_top10", "mean_specialization"} <= set(history["kernels"][-1]["clean"])
    assert json.loads((tmp_path / "history.json").read_text())["epochs"] == json.loads(json.dumps(history["epochs"]))


def test_the_full_evaluation_runs_every_k_epochs_and_after_the_last(tmp_path, digits):
    history = _run(tmp_path, digits, epochs=3, probe=0)
    assert [("full_evaluation" in record) for record in history["epochs"]] == [False, False, True, True]
    initial = _run(tmp_path / "init", digits, epochs=0, probe=0)  # the last epoch of none: the initialisation
    assert ["full_evaluation" in record for record in initial["epochs"]] == [True]
    full = history["epochs"][-1]["full_evaluation"]
    assert (full["steps"], full["step"]) == (6, 0.02) and full["seconds"] > 0
    assert 0 <= full["accuracy"]["running"]["test_pgd"] <= history["epochs"][-1]["accuracy"]["running"]["test_clean"]


def test_tracking_every_k_steps(tmp_path, digits):
    history = _run(tmp_path, digits, epochs=1, every=3)
    assert [k["step"] for k in history["kernels"]] == [0, 3, 4]  # and the trained net's, off the grid
    assert [k["epoch"] for k in history["kernels"]] == pytest.approx([0, 0.75, 1.0])


def test_resume_after_an_interruption_reproduces_the_run(tmp_path, digits):
    reference = _run(tmp_path / "whole", digits, epochs=3, every=3)
    _run(tmp_path / "cut", digits, epochs=3, every=3, interrupt_at=2)
    stored = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [r["epoch"] for r in stored["epochs"]] == [0, 1]  # the epoch in flight is lost, no more
    assert (tmp_path / "cut" / "kernels" / "step_0000006.npz").exists()  # tracked before the cut
    resumed = _run(tmp_path / "cut", digits, epochs=3, every=3, resume=True)
    assert _without_times(resumed) == _without_times(reference)
    for name in sorted(p.name for p in (tmp_path / "whole" / "kernels").iterdir()):
        with (
            np.load(tmp_path / "whole" / "kernels" / name) as a,
            np.load(tmp_path / "cut" / "kernels" / name) as b,
        ):
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "epoch_003.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "epoch_003.pt", weights_only=True)
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, cut["state_dict"][key])


def test_a_resumed_te_run_continues_its_moving_averages(tmp_path, digits):
    reference = _run(tmp_path / "whole", digits, epochs=3, probe=0, mode="te")
    _run(tmp_path / "cut", digits, epochs=3, probe=0, mode="te", interrupt_at=3)
    resumed = _run(tmp_path / "cut", digits, epochs=3, probe=0, mode="te", resume=True)
    assert _without_times(resumed) == _without_times(reference)
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "epoch_003.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "epoch_003.pt", weights_only=True)
    assert torch.equal(whole["te_averages"], cut["te_averages"]) and float(whole["te_averages"].sum()) > 0


def test_resume_refuses_another_configuration(tmp_path, digits):
    _run(tmp_path, digits, epochs=1, probe=0)
    with pytest.raises(RunFolderError, match=re.escape("different configuration: tracking.probe was 0, now 16")):
        _run(tmp_path, digits, epochs=1, resume=True)


def test_resume_on_another_memory_budget_continues(tmp_path, digits):
    """The budget sets how a kernel's sums are chunked, not what they are: a run moved to a
    machine with less memory resumes, its kernels the same up to rounding."""
    reference = _run(tmp_path / "whole", digits, epochs=2, every=3)
    _run(tmp_path / "cut", digits, epochs=1, every=3)
    _run(tmp_path / "cut", digits, epochs=2, every=3, resume=True, budget=40_000)
    last = sorted((tmp_path / "whole" / "kernels").glob("step_*.npz"))[-1].name
    with np.load(tmp_path / "whole" / "kernels" / last) as a, np.load(tmp_path / "cut" / "kernels" / last) as b:
        np.testing.assert_allclose(b["clean"], a["clean"], rtol=1e-5, atol=1e-5 * np.abs(a["clean"]).max())
    stored = json.loads((tmp_path / "cut" / "config.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert stored["tracking"]["memory_budget"] == 40_000
    # the first run's last step (4, off the grid of 3) stays tracked beside the reference's
    assert [k["step"] for k in resumed["kernels"]] == [0, 3, 4, 6, 8]
    assert [k["step"] for k in reference["kernels"]] == [0, 3, 6, 8]


def test_resume_with_more_epochs_continues(tmp_path, digits):
    _run(tmp_path, digits, epochs=1, probe=0)
    history = _run(tmp_path, digits, epochs=2, probe=0, resume=True)
    assert [r["epoch"] for r in history["epochs"]] == [0, 1, 2]


def test_run_with_batchnorm_evaluated_both_ways(tmp_path, digits):
    config = model_config("resnet18", digits.image_shape, len(digits.classes), width=2, seed=0)
    model = build_model(config)
    train = TrainConfig(mode="fgsm", epochs=1, lr=0.05, batch_size=50, eps=0.1)
    tracking = TrackingConfig(eps=0.1, step=0.03, steps=2, probe=10, eval_n=20, batchnorm=("running", "batch"))
    history = run_training(
        tmp_path, model, config, digits, train, tracking, config={}, label="bn", device=torch.device("cpu")
    )
    assert [set(record["accuracy"]) for record in history["epochs"]] == [{"running", "batch"}] * 2
    # the kernels are taken both ways too (RAT figs. 2-4 from one run)
    record = history["kernels"][-1]
    assert record["batch_statistics"]["clean"]["frobenius_norm"] != record["clean"]["frobenius_norm"]
    with np.load(tmp_path / record["file"]) as arrays:
        assert {"clean", "clean_batch", "adversarial_batch", "x_adversarial_batch"} <= set(arrays.files)
    # at initialisation the running statistics are the defaults (mean 0, variance 1), far from the
    # batches' own, so the two evaluations of the same net see different inputs to every layer
    assert history["epochs"][0]["accuracy"]["running"] != history["epochs"][0]["accuracy"]["batch"]


def test_the_evaluation_set_starts_with_the_probe_and_the_kernels_reuse_its_attack(tmp_path, digits):
    from ntkrobust.bridge.experiment import _evaluation_subset

    probe = np.array([3, 10, 40, 41])
    subset = _evaluation_subset(digits.y_train, digits.classes, 24, 0, probe)
    assert subset[:4].tolist() == probe.tolist() and len(set(subset.tolist())) == 24
    assert _evaluation_subset(digits.y_train, digits.classes, 3, 0, probe).tolist() == probe.tolist()
    assert len(_evaluation_subset(digits.y_train, digits.classes, None, 0, probe)) == digits.y_train.shape[0]

    from ntkrobust.bridge.tracking import KernelTracker, pgd_accuracy

    x, y = _tensors(digits)
    model, _ = _fc2(digits, width=16)
    tracker = KernelTracker(x=x[:8], targets=y[:8], num_classes=10, eps=0.1, step=0.03, steps=2)
    accuracy, x_adv = pgd_accuracy(model, x[:8], y[:8], AttackSpec("pgd", 0.1, step=0.03, steps=2, seed=5))
    arrays, record = tracker.track(model, x_adv=x_adv)
    np.testing.assert_array_equal(arrays["x_adversarial"], x_adv.numpy())
    assert record["probe_accuracy"]["pgd"] == accuracy
    assert "clean_full" not in arrays  # the class blocks alone by default


def test_track_full_stores_the_full_kernels_whose_trace_the_files_hold(digits):
    from ntkrobust.bridge.tracking import KernelTracker
    from ntkrobust.kernels.metrics import trace_kernel

    x, y = _tensors(digits)
    model, _ = _fc2(digits, width=16)
    tracker = KernelTracker(x=x[:6], targets=y[:6], num_classes=10, eps=0.1, step=0.03, steps=2, kind="full")
    arrays, _ = tracker.track(model)
    for kind in ("clean", "adversarial"):
        assert arrays[f"{kind}_full"].shape == (6, 6, 10, 10)
        np.testing.assert_allclose(trace_kernel(arrays[f"{kind}_full"]), arrays[kind], rtol=1e-12)
    blocks = KernelTracker(x=x[:6], targets=y[:6], num_classes=10, eps=0.1, step=0.03, steps=2)
    np.testing.assert_allclose(blocks.track(model)[0]["clean"], arrays["clean"], rtol=1e-5, atol=1e-6)
