"""How fast can an imported nnU-Net model run on this CPU at all? A compute bound for issue #19's speed line.

TumorSeg reproduces nnUNetPredictor's result with nnU-Net's own float32 arithmetic, so both
spend almost all their time in the same convolutions. This script measures, in one run:

- ``flops_per_window``: floating-point operations of one forward pass on one patch
  (``torch.utils.flop_counter``: convolutions and transposed convolutions, 2 per
  multiply-add; normalizations and activations are not counted, so this is a lower bound);
- ``windows``: nnU-Net's sliding-window tiles for the case (TumorSeg's nnU-Net preprocessing:
  crop to non-zero, resample to the plan's spacing; step ``tile_step_size``), times the
  mirroring passes when ``--mirror``;
- the CPU's practical float32 peak: the best of a large single-precision matrix product
  (``torch.mm``, 4096²) and the fastest convolution layer of the network itself, both with
  every configured thread;
- the network's own rate: one forward pass, as TumorSeg runs it on the CPU
  (``SlabUNet``: slab-wise) and as the plain module.

From these: ``forward_floor_s`` = windows × flops / peak, the time the forward passes alone
need even at the CPU's best rate, and ``max_speedup_vs(T)`` = T / floor for a measured
nnUNetPredictor time T (``--nnunet-seconds``): no implementation of the same arithmetic on
this CPU can beat that ratio::

    python benchmarks/nnunet_compute_bound.py --package /work/nnb/pkg_folds0 \\
        --case /work/nnb/case_256x256x160_0.9x0.9x1.1_0000.nii.gz --nnunet-seconds 109.2 --json out.json
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

logger = logging.getLogger("nnunet_compute_bound")


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


def case_windows(package, case: Path, mirror: bool) -> tuple[list[int], int, int]:
    """``(preprocessed shape (z, y, x), windows, forward passes)`` of nnU-Net's sliding window for the case."""
    import SimpleITK as sitk

    from tumorseg_core.imaging import nnunet_preprocess
    from tumorseg_core.inference import nnunet_windows
    from tumorseg_core.inference.nnunet_pipeline import case_arrays

    section = package.manifest.nnunet
    arrays, spacing = case_arrays([sitk.ReadImage(str(case))])
    data, _ = nnunet_preprocess.preprocess(arrays, spacing, section)
    padded_shape = [max(s, p) for s, p in zip(data.shape[1:], section["patch_size"])]
    windows = len(nnunet_windows.window_slicers(padded_shape, section["patch_size"], section["tile_step_size"]))
    passes = 2 ** len(section["mirror_axes"] or []) if mirror else 1
    return list(data.shape[1:]), windows, windows * passes


def measure(package_path: str, case: Path, mirror: bool, nnunet_seconds: float | None, repeats: int) -> dict:
    from tumorseg_core.inference.devices import configured_threads, import_torch
    from tumorseg_core.inference.slab_forward import SlabUNet
    from tumorseg_core.modelpkg.package import open_package

    torch = import_torch()
    package = open_package(package_path)
    section = package.manifest.nnunet
    shape = (1, package.manifest.num_inputs, *section["patch_size"])
    plain = package.load_networks(torch.device("cpu"))[0].eval()
    as_run = SlabUNet(plain)  # what the Segmenter runs on the CPU
    flops, per_op = window_flops(torch, plain, shape)
    x = torch.randn(shape)

    def forward(net):
        with torch.inference_mode():
            net(x)

    seconds_as_run = _best_seconds(lambda: forward(as_run), repeats)
    seconds_plain = _best_seconds(lambda: forward(plain), repeats)
    mm = matmul_gflops(torch)
    conv, conv_name = best_conv_gflops(torch, plain, shape)
    peak = max(mm, conv)
    preprocessed, windows, passes = case_windows(package, case, mirror)
    floor = passes * flops / (peak * 1e9)
    result = {
        "package": str(package_path), "case": case.name, "mirror": mirror, "threads": configured_threads(),
        "patch_zyx": list(section["patch_size"]), "flops_per_window": flops, "gflop_per_window": round(flops / 1e9, 1),
        "gflop_by_operator": {k: round(v / 1e9, 1) for k, v in per_op},
        "window_s_tumorseg": round(seconds_as_run, 2), "window_s_plain_module": round(seconds_plain, 2),
        "gflops_tumorseg_window": round(flops / seconds_as_run / 1e9, 1),
        "gflops_matmul_4096": round(mm, 1), "gflops_best_conv_layer": round(conv, 1), "best_conv_layer": conv_name,
        "efficiency_vs_peak": round(flops / seconds_as_run / 1e9 / peak, 3),
        "preprocessed_zyx": preprocessed, "windows": windows, "forward_passes": passes,
        "forward_floor_s": round(floor, 3), "forward_at_measured_rate_s": round(passes * seconds_as_run, 1),
    }
    if nnunet_seconds:
        result["nnunet_seconds"] = nnunet_seconds
        result["max_speedup_vs_nnunet"] = round(nnunet_seconds / floor, 3)
        result["seconds_needed_for_3x"] = round(nnunet_seconds / 3, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="a package written by 'tumorseg import NNUNET_FOLDER'")
    parser.add_argument("--case", type=Path, required=True, help="the benchmark case (one image)")
    parser.add_argument("--mirror", action="store_true", help="count nnU-Net's mirroring passes too")
    parser.add_argument("--nnunet-seconds", type=float, help="nnUNetPredictor's measured time for the case")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    result = measure(args.package, args.case, args.mirror, args.nnunet_seconds, max(1, args.repeats))
    text = json.dumps(result, indent=2)
    logger.info("%s", text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
