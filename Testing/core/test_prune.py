"""Structured channel pruning (``tumorseg prune``, tumorseg_core/training/prune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from directions import rotation_direction  # noqa: E402
from model_factory import make_tiny_package  # noqa: E402
from test_train import _make_volumes  # noqa: E402

from tumorseg_core import cli  # noqa: E402
from tumorseg_core.errors import InputError  # noqa: E402
from tumorseg_core.inference.segmenter import Segmenter  # noqa: E402
from tumorseg_core.modelpkg.package import open_package  # noqa: E402
from tumorseg_core.models.registry import build_network  # noqa: E402
from tumorseg_core.training.distill import distill_fine_tune, distillation_loss  # noqa: E402
from tumorseg_core.training.prune import (  # noqa: E402
    count_parameters,
    prune_network,
    prune_package,
    taylor_importance,
    top_l1_channels,
    tumour_voting_channels,
)

KWARGS = {"in_channels": 2, "out_channels": 3, "features": [4, 8, 12]}


def _random_net(norm: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network("unet3d", dict(KWARGS, norm=norm))
    with torch.no_grad():  # non-trivial norm parameters and running statistics
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point() and (".block.1." in name or ".block.5." in name):
                tensor.copy_(torch.rand_like(tensor) + (0.5 if name.endswith(("weight", "var")) else -0.5))
    return net.eval()


def _pruned_net(result) -> torch.nn.Module:
    net = build_network(result.architecture, result.kwargs)
    net.load_state_dict(result.state_dict, strict=True)
    return net.eval()


def _masked_parent(net: torch.nn.Module, kept: dict) -> torch.nn.Module:
    """The parent with every pruned channel zeroed (conv filter, bias, norm affine, running mean):
    such a channel is 0 after its ReLU, so the parent then computes what the pruned net does."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for prefix, keep_idx in kept.items():
        n_out = state[f"{prefix}.weight"].shape[1 if prefix.startswith("ups.") else 0]
        drop = torch.tensor(sorted(set(range(n_out)) - set(keep_idx)), dtype=torch.long)
        if drop.numel() == 0:
            continue
        dim = 1 if prefix.startswith("ups.") else 0
        state[f"{prefix}.weight"].index_fill_(dim, drop, 0.0)
        norm = prefix[:-1] + ("1" if prefix.endswith("block.0") else "5") if ".block." in prefix else None
        for key in [f"{prefix}.bias"] + ([f"{norm}.weight", f"{norm}.bias", f"{norm}.running_mean"] if norm else []):
            if key in state:
                state[key].index_fill_(0, drop, 0.0)
    masked = build_network("unet3d", net_kwargs(net))
    masked.load_state_dict(state, strict=True)
    return masked.eval()


def net_kwargs(net: torch.nn.Module) -> dict:
    norm = net.encoders[0].block[1]
    kind = "instance" if isinstance(norm, torch.nn.InstanceNorm3d) else (
        "batch" if isinstance(norm, torch.nn.BatchNorm3d) else "none")
    return dict(KWARGS, norm=kind)


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_pruned_network_has_the_stated_channels_fewer_parameters_and_consistent_skips(norm):
    parent = _random_net(norm)
    result = prune_network("unet3d", dict(KWARGS, norm=norm), parent.state_dict(), 0.5)
    assert result.kwargs == dict(KWARGS, norm=norm, features=[2, 4, 6])
    pruned = _pruned_net(result)
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs[:6]] == [2, 2, 4, 4, 6, 6]  # encoders
    assert [c.in_channels for c in convs[:6]] == [2, 2, 2, 4, 4, 6]
    assert [u.out_channels for u in pruned.ups] == [4, 2]
    assert [d.block[0].in_channels for d in pruned.decoders] == [8, 4]  # skip + up
    assert (pruned.head.in_channels, pruned.head.out_channels) == (2, 3)
    n_parent = sum(p.numel() for p in parent.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    assert n_pruned == count_parameters("unet3d", result.kwargs) < n_parent / 3
    # The pruned network computes exactly what the parent computes with the other channels zeroed:
    # every kept filter, its input channels, norm parameters and skip connection are the right ones.
    x = torch.randn(2, 2, 8, 12, 8)
    with torch.no_grad():
        expected = _masked_parent(parent, result.kept)(x)
        got = pruned(x)
    assert got.shape == (2, 3, 8, 12, 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_keep_one_reproduces_the_parent_exactly(norm):
    parent = _random_net(norm, seed=3)
    result = prune_network("unet3d", dict(KWARGS, norm=norm), parent.state_dict(), 1.0)
    assert result.kwargs["features"] == KWARGS["features"]
    x = torch.randn(1, 2, 8, 8, 16)
    with torch.no_grad():
        assert torch.equal(_pruned_net(result)(x), parent(x))


def test_the_highest_l1_filters_are_kept_on_a_known_case():
    parent = _random_net("instance", seed=1)
    state = parent.state_dict()
    conv = state["encoders.1.block.0.weight"]  # (8, 4, 3, 3, 3)
    scales = torch.tensor([0.1, 5.0, 0.2, 3.0, 0.3, 4.0, 0.4, 2.0])  # largest L1: filters 1, 5, 3, 7
    conv.copy_(torch.ones_like(conv) * scales.view(8, 1, 1, 1, 1) * torch.where(torch.rand_like(conv) < 0.5, -1, 1))
    up = state["ups.1.weight"]  # ConvTranspose3d (8, 4, 2, 2, 2): filters along dim 1
    up.copy_(torch.ones_like(up) * torch.tensor([1.0, -9.0, 2.0, 0.5]).view(1, 4, 1, 1, 1))
    result = prune_network("unet3d", dict(KWARGS, norm="instance"), state, 0.5)
    assert result.kept["encoders.1.block.0"] == [1, 3, 5, 7]
    assert result.kept["ups.1"] == [1, 2]
    kept_in = torch.tensor(result.kept["encoders.0.block.4"])
    torch.testing.assert_close(result.state_dict["encoders.1.block.0.weight"],
                               conv[[1, 3, 5, 7]][:, kept_in], rtol=0, atol=0)
    torch.testing.assert_close(result.state_dict["encoders.1.block.1.weight"],
                               state["encoders.1.block.1.weight"][[1, 3, 5, 7]], rtol=0, atol=0)
    # The same ranking as torch.nn.utils.prune.ln_structured (n=1) on every convolution.
    from torch.nn.utils import prune as torch_prune

    random_net = _random_net("none", seed=2)
    result = prune_network("unet3d", dict(KWARGS, norm="none"), random_net.state_dict(), 0.5)
    for name, module in random_net.named_modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and name != "head":
            dim = 1 if isinstance(module, torch.nn.ConvTranspose3d) else 0
            n = module.weight.shape[dim]
            torch_prune.ln_structured(module, "weight", amount=n - len(result.kept[name]), n=1, dim=dim)
            mask = module.weight_mask.sum(dim=[a for a in range(5) if a != dim])
            assert result.kept[name] == torch.nonzero(mask).flatten().tolist(), name
    assert top_l1_channels(torch.tensor([[1.0], [1.0], [1.0]]), 2).tolist() == [0, 1]  # ties: lower index


def test_pruned_package_verifies_and_segments_on_the_input_grid(tmp_path, make_sphere_image):
    parent = make_tiny_package(tmp_path / "parent", seed=4)
    out = prune_package(str(parent), tmp_path / "pruned", 0.5, fine_tune_iterations=0, criterion="l1")
    package = open_package(out)  # every sha256 verified
    manifest = package.manifest.to_dict()
    assert manifest["kwargs"]["features"] == [1, 2] and manifest["architecture"] == "unet3d"
    assert manifest["metrics"]["pruning"]["keep"] == 0.5
    assert manifest["metrics"]["pruning"]["parent"] == "tiny-test-model"
    readme = (Path(out) / "README.md").read_text(encoding="utf-8")
    assert "Keep ratio: 0.5" in readme and "Parent model: tiny-test-model 0.0.1" in readme
    assert (Path(out) / "fold0.safetensors").stat().st_size < (parent / "fold0.safetensors").stat().st_size
    image, _ = make_sphere_image(radius_mm=6, size_xyz=(20, 17, 9), spacing=(1.2, 0.9, 3.1),
                                 origin=(12.0, -40.0, 7.5), direction=rotation_direction("z", 30)[:6]
                                 + (0.0, 0.0, -1.0), noise=5)
    labels = Segmenter(str(out), device="cpu").segment(image)
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing() and labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1}


def test_fine_tune_starts_from_the_pruned_weights(tmp_path):
    parent = make_tiny_package(tmp_path / "parent", seed=5)
    data = _make_volumes(tmp_path / "data", n=2)
    overrides = {"device": "cpu", "val_data": None, "val_fraction": 0.5, "lr": 1e-7, "weight_decay": 0.0,
                 "batch_size": 1}
    out = prune_package(str(parent), tmp_path / "tuned", 0.5, fine_tune_iterations=1, data=str(data),
                        criterion="l1", workdir=tmp_path / "work", config_overrides=overrides)
    tuned = open_package(out)
    manifest = tuned.manifest.to_dict()
    assert manifest["kwargs"]["features"] == [1, 2]
    assert manifest["metrics"]["pruning"]["fine_tune_iterations"] == 1
    assert "validation" in manifest["metrics"]
    assert json.loads((Path(out) / "training_config.json").read_text())["iterations_per_epoch"] == 1
    source = open_package(parent).load_networks()[0].state_dict()
    pruned = prune_network("unet3d", open_package(parent).manifest.kwargs, source, 0.5).state_dict
    after = tuned.load_networks()[0].state_dict()
    assert set(after) == set(pruned)
    for key, value in pruned.items():  # one step at lr 1e-7 moves no weight further than ~1e-6
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-5)
    assert not (tmp_path / "work" / "fine_tuned").exists()


@pytest.mark.parametrize("args, words", [
    (["--keep", "0"], "--keep must be in (0, 1]"),
    (["--keep", "1.5"], "--keep must be in (0, 1]"),
    (["--keep", "0.5", "--fine-tune-iterations", "-1"], "--fine-tune-iterations must be 0 or more"),
    (["--keep", "0.5", "--data", "synthetic:x"], "synthetic:N"),
    (["--keep", "0.5", "--data", "no/such/folder"], "not found"),
    (["--keep", "0.5", "--patch-size", "0", "16", "16"], "--patch-size must be positive"),
    (["--keep", "0.5", "--patch-size", "15", "16", "16"], "must be positive multiples of 2 2 2"),
    (["--keep", "0.5", "--importance-windows", "0"], "--importance-windows must be at least 1"),
    (["--keep", "0.5", "--distill-weight", "-1"], "--distill-weight must be 0 or more"),
    (["--keep", "0.5", "--distill-temperature", "0"], "--distill-temperature must be positive"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, words):
    parent = make_tiny_package(tmp_path / "parent")
    code = cli.main(["prune", str(parent), "-o", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_missing_package_an_existing_output_and_other_architectures(tmp_path, capsys):
    assert cli.main(["prune", str(tmp_path / "nothing"), "-o", str(tmp_path / "out"), "--keep", "0.5"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    parent = make_tiny_package(tmp_path / "parent")
    (tmp_path / "taken").mkdir()
    assert cli.main(["prune", str(parent), "-o", str(tmp_path / "taken"), "--keep", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    with pytest.raises(InputError, match="supports unet3d"):
        prune_network("unet2d", {}, {}, 0.5)


def test_cli_writes_a_package_and_prints_its_path(tmp_path, capsys):
    parent = make_tiny_package(tmp_path / "parent")
    code = cli.main(["prune", str(parent), "-o", str(tmp_path / "out"), "--keep", "0.75",
                     "--fine-tune-iterations", "0", "--criterion", "l1"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "out").resolve())
    assert open_package(tmp_path / "out").manifest.kwargs["features"] == [2, 3]


def test_every_prune_option_shows_its_default():
    from test_cli_words import test_every_option_has_help_that_shows_its_default

    test_every_option_has_help_that_shows_its_default("prune")


def test_tradeoff_benchmark_measures_a_package(tmp_path, make_sphere_image):
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "prune_tradeoff.py"
    spec = importlib.util.spec_from_file_location("bench_prune_tradeoff", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    image, _ = make_sphere_image(radius_mm=6, size_xyz=(24, 20, 12), spacing=(1.5, 1.5, 2.5), noise=3)
    truth = sitk.Cast(image > 50, sitk.sitkUInt8)
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    sitk.WriteImage(truth, str(tmp_path / "truth.nii.gz"))
    parent = make_tiny_package(tmp_path / "parent")
    row = bench.measure(parent, [(tmp_path / "case.nii.gz", tmp_path / "truth.nii.gz")])
    assert row["parameters"] == count_parameters("unet3d", open_package(parent).manifest.kwargs)
    assert row["lesions_truth"] == 1 and 0.0 <= row["dice_median"] <= 1.0 and row["seconds_per_case"] > 0
    again = bench.retime({"parent": parent}, [(tmp_path / "case.nii.gz", tmp_path / "truth.nii.gz")])
    assert again["parent"]["seconds_per_case"] > 0 and again["parent"]["cpu_seconds_per_case"] > 0
    text = bench.table({"parent": dict(row, retime=again["parent"]), "keep0.5": dict(row, keep=0.5, fine_tune="none")})
    assert text.count("\n") == 3 and "| keep0.5 | 0.5 |" in text


def test_fine_tune_config_takes_the_parents_grid_and_labels_but_mines_no_hard_negatives(tmp_path):
    from model_factory import tiny_manifest

    from tumorseg_core.modelpkg.package import write_package
    from tumorseg_core.training.prune import fine_tune_config

    manifest = tiny_manifest(spacing=(1.5, 1.5, 3.0), patch=(16, 16, 8))
    stored = {"hard_negatives": {"fraction": 0.3}, "lr": 3e-4, "batch_size": 4, "time_limit_minutes": 75.0,
              "data": "synthetic:160", "augment": {"flip_prob": 0.25}}
    net = build_network("unet3d", manifest["kwargs"])
    parent = open_package(write_package(tmp_path / "p", manifest, [net.state_dict()],
                                        extra_files={"training_config.json": json.dumps(stored).encode()}))
    config = fine_tune_config(parent, tmp_path / "pruned", {**manifest["kwargs"], "features": [1, 2]}, 7,
                              "synthetic:3", {"patch_size": [8, 8, 8], "val_data": None})
    assert config["hard_negatives"] is None and config["time_limit_minutes"] is None
    assert config["init_weights"] == str(tmp_path / "pruned") and config["init_weights_sha256"] is None
    assert (config["epochs"], config["iterations_per_epoch"], config["data"]) == (1, 7, "synthetic:3")
    assert (config["lr"], config["batch_size"], config["augment"]) == (3e-4, 4, {"flip_prob": 0.25})
    assert config["kwargs"] == {"features": [1, 2], "norm": "none"} and config["spacing"] == [1.5, 1.5, 3.0]
    assert config["patch_size"] == [8, 8, 8] and config["val_data"] is None
    assert config["output"]["labels"] == manifest["output"]["labels"]
    with pytest.raises(InputError, match="unknown training config key"):
        fine_tune_config(parent, tmp_path / "pruned", manifest["kwargs"], 1, "synthetic:1", {"epochz": 2})


def _sphere_window(size: int = 16, radius: float = 4.0, seed: int = 0):
    """(image (1, 1, s, s, s) float32: a bright noisy sphere; labels (1, 1, s, s, s): the sphere)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size]
    c = rng.uniform(size / 2 - 2, size / 2 + 2, 3)
    inside = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < radius ** 2
    image = (inside * 2.0 + 0.3 * rng.standard_normal(inside.shape)).astype(np.float32)
    return torch.from_numpy(image)[None, None], torch.from_numpy(inside.astype(np.float32))[None, None]


def _head_needs_one_channel(channel: int) -> torch.nn.Module:
    """A 2-level instance-norm unet3d whose head reads only ``channel`` of the last decoder convolution,
    and that channel's filter has the smallest L1 norm there (InstanceNorm divides the scale out again)."""
    torch.manual_seed(7)
    net = build_network("unet3d", {"in_channels": 1, "out_channels": 2, "features": [4, 8], "norm": "instance"})
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.weight[1, channel] = 3.0
        net.head.weight[0, channel] = -3.0
        net.decoders[0].block[4].weight[channel] *= 1e-3
    return net.eval()


def test_taylor_criterion_keeps_the_channel_the_head_needs_where_l1_drops_it():
    channel = 2
    net = _head_needs_one_channel(channel)
    last = "decoders.0.block.4"
    assert tumour_voting_channels(net) == {last: [channel]}
    windows = [_sphere_window(seed=s) for s in range(3)] + [(torch.zeros(1, 1, 16, 16, 16),) * 2]  # no lesion
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = taylor_importance(net, windows, max_windows=8)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # weights untouched
    assert set(scores) == {"encoders.0.block.0", "encoders.0.block.4", "encoders.1.block.0", "encoders.1.block.4",
                           "ups.0", "decoders.0.block.0", last}
    assert scores[last].shape == (4,) and scores["ups.0"].shape == (4,)
    # The head ignores the other channels: zero gradient, zero importance; the one it reads matters.
    others = [i for i in range(4) if i != channel]
    assert scores[last][channel] > 0 and torch.all(scores[last][others] == 0)
    # The first-order estimate of zeroing that channel: how much the objective would fall.
    state = net.state_dict()
    l1 = prune_network("unet3d", net_kwargs_of(net), state, 0.5)
    assert channel not in l1.kept[last]  # the smallest filter: L1 pruning removes what the head needs
    taylor = prune_network("unet3d", net_kwargs_of(net), state, 0.5, importance=scores)
    assert channel in taylor.kept[last]
    protected = prune_network("unet3d", net_kwargs_of(net), state, 0.25, protected=tumour_voting_channels(net))
    assert protected.kept[last] == [channel]  # keep 1 of 4: the protected one, though L1 ranks it last
    image, labels = _sphere_window(seed=1)
    with torch.no_grad():
        kept_net = _pruned_net(taylor)
        dropped_net = _pruned_net(l1)
        margin_kept = kept_net(image)[:, 1] - kept_net(image)[:, 0]
        margin_dropped = dropped_net(image)[:, 1] - dropped_net(image)[:, 0]
    inside = labels[:, 0] > 0
    assert float(margin_kept[inside].mean() - margin_kept[~inside].mean()) > 0.5
    assert float(margin_dropped.max() - margin_dropped.min()) < 1e-5  # the head reads nothing: one value everywhere
    with pytest.raises(InputError, match="no importance window"):
        taylor_importance(net, [(torch.zeros(1, 1, 16, 16, 16),) * 2])


def net_kwargs_of(net: torch.nn.Module) -> dict:
    return {"in_channels": 1, "out_channels": 2, "features": [4, 8], "norm": "instance"}


def test_distillation_loss_is_the_kl_divergence_and_zero_only_for_equal_probabilities():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 4, 5, 6)
    student = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    for t in (1.0, 2.0):
        loss = distillation_loss(student, teacher, t)
        assert loss.shape == () and float(loss.detach()) > 0
        log_s = torch.log_softmax(student / t, 1)
        log_t = torch.log_softmax(teacher / t, 1)
        reference = torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="none").sum(1).mean()
        torch.testing.assert_close(loss, reference * t * t)
    assert float(distillation_loss(teacher + 5.0, teacher)) == pytest.approx(0.0, abs=1e-6)  # same softmax
    # No gradient reaches the teacher; a gradient step moves the student towards it.
    teacher_param = teacher.clone().requires_grad_(True)
    loss = distillation_loss(student, teacher_param)
    loss.backward()
    assert teacher_param.grad is None and student.grad is not None
    with torch.no_grad():
        assert float(distillation_loss(student - 0.5 * student.grad / student.grad.abs().max(), teacher)) < float(loss)
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(student, teacher[:, :2])


def test_distilled_fine_tune_moves_the_pruned_student_towards_the_parent():
    from types import SimpleNamespace

    from tumorseg_core.training.config import merge_config

    torch.set_num_threads(1)  # as conftest sets it; an earlier CLI test may have set every core
    parent = _random_net("instance", seed=11)
    kwargs = dict(KWARGS, norm="instance")
    student = _pruned_net(prune_network("unet3d", kwargs, parent.state_dict(), 0.5))
    torch.manual_seed(1)
    image = torch.randn(1, 2, 8, 8, 8)
    label = (torch.rand(1, 1, 8, 8, 8) < 0.3).float() * 2  # labels 0 and 2 of out_channels 3

    class Patches(torch.utils.data.Dataset):
        def set_epoch(self, epoch):
            pass

        def __len__(self):
            return 30

        def __getitem__(self, i):
            return {"image": image[0], "label": label[0]}

    config = merge_config({}, {})
    config.update(iterations_per_epoch=30, epochs=1, batch_size=1, lr=1e-2, grad_clip=None,
                  output={"type": "softmax", "labels": [{"value": 1}, {"value": 2}]})
    run = SimpleNamespace(config=config, patches=Patches(), val_cases=[], patch_zyx=(8, 8, 8))
    with torch.no_grad():
        gap_before = float(distillation_loss(student(image), parent(image)))
    result = distill_fine_tune(student, parent, run, weight=20.0, temperature=1.0)
    with torch.no_grad():
        gap_after = float(distillation_loss(student(image), parent(image)))
    assert len(result["losses"]) == 30 and result["validation"] is None
    assert gap_after < 0.5 * gap_before
    assert not student.training


def test_taylor_pruned_and_distilled_package_records_its_criterion(tmp_path):
    parent = make_tiny_package(tmp_path / "parent", seed=5)
    data = _make_volumes(tmp_path / "data", n=2)
    overrides = {"device": "cpu", "val_data": None, "val_fraction": 0.5, "batch_size": 1}
    out = prune_package(str(parent), tmp_path / "tuned", 0.5, fine_tune_iterations=2, data=str(data),
                        criterion="taylor", importance_windows=2, workdir=tmp_path / "work",
                        config_overrides=overrides)
    pruning = open_package(out).manifest.to_dict()["metrics"]["pruning"]
    assert (pruning["criterion"], pruning["importance_windows"], pruning["distill_weight"]) == ("taylor", 2, 1.0)
    assert list(pruning["protected_channels"]) == ["decoders.0.block.4"]
    readme = (Path(out) / "README.md").read_text(encoding="utf-8")
    assert "Taylor importance on 2 windows" in readme and "KL to the parent's softmax" in readme
    with pytest.raises(InputError, match="--criterion must be one of"):
        prune_package(str(parent), tmp_path / "x", 0.5, criterion="random")
    assert not (tmp_path / "x").exists()
