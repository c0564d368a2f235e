"""How fast can a model run on this CPU at all? A FLOP-count bound for the speed targets of issues #19 and #23.

TumorSeg and the baselines it is measured against (nnUNetPredictor, MONAI's
``sliding_window_inference``) run the same network's convolutions in float32, so on a CPU
they spend almost all their time in the same arithmetic. This script measures, in one run:

- ``flops_per_window``: floating-point operations of one forward pass on one patch
  (``torch.utils.flop_counter``: convolutions and transposed convolutions, 2 per
  multiply-add; normalizations and activations are not counted, so this is a lower bound);
- ``windows``: the sliding-window tiles of the case, for one fold (``forward_passes`` counts
  every fold of the package's ensemble; TumorSeg's test-time flips are not counted). An imported nnU-Net model: nnU-Net's
  (TumorSeg's nnU-Net preprocessing: crop to non-zero, resample to the plan's spacing; step
  ``tile_step_size``), times the mirroring passes with ``--mirror``. TumorSeg's own model:
  its grid on the model-grid volume (``Segmenter.prepare``; the manifest's overlap, every
  window: no skipping);
- the CPU's practical float32 peak: the best of a large single-precision matrix product
  (``torch.mm``, 4096²) and the fastest convolution layer of the network itself, both with
  every configured thread;
- the network's own rate on one window as TumorSeg runs it on the CPU (nnU-Net: torch,
  slab-wise, ``SlabUNet``; TumorSeg's models: the ``auto`` exported backend, OpenVINO here)
  and as the plain torch module.

From these: ``forward_floor_s`` = passes × flops / peak, the time the forward passes alone
need even at the CPU's best float32 rate, and ``max_speedup_vs_baseline`` = T / floor for
the baseline's measured time T (``--baseline-seconds``, e.g. nnUNetPredictor's or MONAI's on
the same case and machine): no float32 implementation of the same direct convolutions on
this CPU can beat that ratio::

    python benchmarks/compute_bound.py --package /work/nnb/pkg_folds0 \
        --case /work/nnb/case_256x256x160_0.9x0.9x1.1_0000.nii.gz --baseline-seconds 109.2 --json out.json
    python benchmarks/compute_bound.py --package default --case /work/rt3d/mri256.nii.gz --baseline-seconds 12.17
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("compute_bound")


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(torch, n: int = 4096, repeats: int = 3) -> float:
    """Best float32 GFLOP/s of an n x n x n matrix product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2.0 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def window_flops(torch, network, shape) -> tuple[int, list[tuple[str, int]]]:
    """``(total FLOPs, per-operator FLOPs)`` of one forward pass on a zero tensor of ``shape``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(torch.zeros(shape))
    per_op = sorted(((str(k), int(v)) for k, v in counter.get_flop_counts()["Global"].items()), key=lambda kv: -kv[1])
    return int(counter.get_total_flops()), per_op


def best_conv_gflops(torch, network, shape, repeats: int = 2, limit: int = 6) -> tuple[float, str]:
    """The best GFLOP/s among the network's ``limit`` most expensive convolution layers, each timed alone
    on its own input shape (recorded by a forward hook on the plain module)."""
    from torch import nn

    shapes: dict = {}

    def record(name: str):
        def hook(mod, inp, out) -> None:  # returns None: the output is left alone
            shapes.setdefault(name, (mod, inp[0].shape))
        return hook

    hooks = [m.register_forward_hook(record(name))
             for name, m in network.named_modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    with torch.inference_mode():
        network(torch.zeros(shape))
    for hook in hooks:
        hook.remove()

    def flops(mod, in_shape) -> float:
        k = 1
        for s in mod.kernel_size:
            k *= s
        with torch.inference_mode():
            out = mod(torch.zeros(in_shape))
        spatial = out.shape[2:].numel() if isinstance(mod, nn.Conv3d) else torch.Size(in_shape[2:]).numel()
        return 2.0 * mod.in_channels * mod.out_channels * k * spatial / mod.groups

    ranked = sorted(((flops(mod, s), name, mod, s) for name, (mod, s) in shapes.items()), key=lambda t: -t[0])
    best, best_name = 0.0, ""
    for f, name, mod, s in ranked[:limit]:
        x = torch.randn(s)
        with torch.inference_mode():
            rate = f / _best_seconds(lambda mod=mod, x=x: mod(x), repeats) / 1e9
        if rate > best:
            best, best_name = rate, name
    return best, best_name


def nnunet_windows(package, case: Path, mirror: bool) -> tuple[list[int], int, int]:
    """``(preprocessed shape (z, y, x), windows, forward passes)`` of nnU-Net's sliding window for the case."""
    import SimpleITK as sitk

    from tumorseg_core.imaging import nnunet_preprocess
    from tumorseg_core.inference import nnunet_windows as windows_module
    from tumorseg_core.inference.nnunet_pipeline import case_arrays

    section = package.manifest.nnunet
    arrays, spacing = case_arrays([sitk.ReadImage(str(case))])
    data, _ = nnunet_preprocess.preprocess(arrays, spacing, section)
    padded_shape = [max(s, p) for s, p in zip(data.shape[1:], section["patch_size"])]
    windows = len(windows_module.window_slicers(padded_shape, section["patch_size"], section["tile_step_size"]))
    passes = 2 ** len(section["mirror_axes"] or []) if mirror else 1
    return list(data.shape[1:]), windows, windows * passes


def tumorseg_windows(package, case: Path) -> tuple[list[int], int, int]:
    """``(model-grid shape (z, y, x), windows, forward passes)`` of TumorSeg's sliding window (no skipping)."""
    from tumorseg_core.inference.roi_windows import windows_to_run
    from tumorseg_core.inference.segmenter import Segmenter
    from tumorseg_core.inference.sliding_window import pad_to_window

    manifest = package.manifest
    volume = Segmenter(package, "cpu").prepare(str(case))[0]
    padded, _ = pad_to_window(volume, manifest.patch_size_zyx)
    windows = len(windows_to_run(padded.shape[1:], manifest.patch_size_zyx,
                                 float(manifest.inference.get("overlap", 0.5))))
    return list(volume.shape[1:]), windows, windows


def as_run(package, plain):
    """``(name, callable on a (1, C, z, y, x) float32 tensor)``: the window as TumorSeg runs it on the CPU."""
    if package.manifest.nnunet is not None:
        from tumorseg_core.inference.slab_forward import SlabUNet

        return "torch, slab-wise", SlabUNet(plain)
    from tumorseg_core.inference.backends import LazyNetworks, prepare_backend

    manifest = package.manifest
    used, runners = prepare_backend(LazyNetworks.of([plain]), "auto", "cpu", manifest.patch_size_zyx,
                                    manifest.num_inputs, [f"{package.sha256}:{package.weight_files[0].name}"])
    runner = runners[0]
    if used == "torch":
        return used, runner
    return used, lambda x: runner(x.numpy())


def measure(package_path: str, case: Path, mirror: bool, baseline_seconds: float | None, repeats: int,
            baseline: str = "baseline") -> dict:
    """The bound's numbers for one package and case (see the module docstring)."""
    from tumorseg_core.errors import InputError
    from tumorseg_core.inference.devices import configured_threads, import_torch
    from tumorseg_core.modelpkg.package import open_package

    torch = import_torch()
    package = open_package(package_path)
    manifest = package.manifest
    if manifest.monai is not None or manifest.architecture == "onnx":
        raise InputError("compute_bound.py takes TumorSeg's own packages and imported nnU-Net models")
    patch = list(manifest.nnunet["patch_size"]) if manifest.nnunet is not None else list(manifest.patch_size_zyx)
    shape = (1, manifest.num_inputs, *patch)
    plain = package.load_networks(torch.device("cpu"))[0].eval()
    flops, per_op = window_flops(torch, plain, shape)
    run_name, run = as_run(package, plain)
    x = torch.randn(shape)

    def forward(net):
        with torch.inference_mode():
            net(x)

    seconds_as_run = _best_seconds(lambda: forward(run), repeats)
    seconds_plain = _best_seconds(lambda: forward(plain), repeats)
    mm = matmul_gflops(torch)
    conv, conv_name = best_conv_gflops(torch, plain, shape)
    peak = max(mm, conv)
    if manifest.nnunet is not None:
        grid, windows, passes = nnunet_windows(package, case, mirror)
    else:
        grid, windows, passes = tumorseg_windows(package, case)
    passes *= len(package.weight_files)  # every fold runs every window
    floor = passes * flops / (peak * 1e9)
    result = {
        "package": str(package_path), "case": case.name, "mirror": mirror and manifest.nnunet is not None,
        "threads": configured_threads(), "patch_zyx": patch, "flops_per_window": flops,
        "gflop_per_window": round(flops / 1e9, 2),
        "gflop_by_operator": {k: round(v / 1e9, 2) for k, v in per_op},
        "as_run": run_name, "window_s_as_run": round(seconds_as_run, 3), "window_s_plain_module": round(seconds_plain, 3),
        "gflops_as_run": round(flops / seconds_as_run / 1e9, 1),
        "gflops_matmul_4096": round(mm, 1), "gflops_best_conv_layer": round(conv, 1), "best_conv_layer": conv_name,
        "efficiency_vs_peak": round(flops / seconds_as_run / 1e9 / peak, 3),
        "grid_zyx": grid, "windows": windows, "forward_passes": passes,
        "forward_floor_s": round(floor, 3), "forward_at_measured_rate_s": round(passes * seconds_as_run, 2),
    }
    if baseline_seconds:
        result.update({"baseline": baseline, "baseline_seconds": baseline_seconds,
                       "max_speedup_vs_baseline": round(baseline_seconds / floor, 3),
                       "seconds_needed_for_3x": round(baseline_seconds / 3, 2)})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True,
                        help="a TumorSeg package (name or folder) or one written by 'tumorseg import NNUNET_FOLDER'")
    parser.add_argument("--case", type=Path, required=True, help="the benchmark case (one image)")
    parser.add_argument("--mirror", action="store_true", help="count nnU-Net's mirroring passes too")
    parser.add_argument("--baseline-seconds", type=float, help="the baseline's measured time for the case")
    parser.add_argument("--baseline", default="baseline", help="its name (e.g. nnUNetPredictor, MONAI)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    result = measure(args.package, args.case, args.mirror, args.baseline_seconds, max(1, args.repeats), args.baseline)
    text = json.dumps(result, indent=2)
    logger.info("%s", text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
