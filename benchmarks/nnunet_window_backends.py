"""One window of an imported nnU-Net model: torch eager vs the exported CPU backends.

The nnU-Net import reproduces nnUNetPredictor exactly by running its networks in torch
eager (``inference/nnunet_pipeline.py``); about 85-90 % of a case's time is those forward
passes (benchmarks/README.md). This measures what the exported backends TumorSeg already
has for its own models (OpenVINO, ONNX Runtime; ``inference/backends``) would buy per
window on this CPU, and how far their logits are from torch's::

    python benchmarks/nnunet_window_backends.py --package PKG [--repeats 3] [--backends torch openvino onnxruntime]

PKG is a package written by ``tumorseg import NNUNET_FOLDER``. Runs are interleaved; the
median wall time per window and the ratio to torch are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="an imported nnU-Net package folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from tumorseg_core.inference.backends import LazyNetworks, prepare_backend
    from tumorseg_core.inference.devices import configure_threads, import_torch
    from tumorseg_core.modelpkg.package import open_package

    configure_threads(args.threads)
    package = open_package(args.package)
    settings = package.manifest.predictor_settings()
    patch = tuple(settings["patch_size_zyx"])
    channels = int(settings["in_channels"])
    first = package.weight_files[0]

    def load() -> list:
        return [package.load_networks(import_torch().device("cpu"))[0]]

    runners = {}
    for name in args.backends:
        started = time.perf_counter()
        used, nets = prepare_backend(LazyNetworks(load, 1), name, "cpu", patch, channels,
                                     [f"{package.sha256}:{first.name}"])
        runners[name] = (used, nets[0], time.perf_counter() - started)
    rng = np.random.default_rng(0)
    window = rng.standard_normal((1, channels, *patch)).astype(np.float32)
    torch = import_torch()
    times: dict = {name: [] for name in runners}
    outputs: dict = {}
    for _ in range(args.repeats):
        for name, (used, runner, _) in runners.items():
            started = time.perf_counter()
            if used == "torch":
                with torch.no_grad():
                    out = runner(torch.from_numpy(window)).numpy()
            else:
                out = np.asarray(runner(window))
            times[name].append(time.perf_counter() - started)
            outputs[name] = out
    base = statistics.median(times[args.backends[0]])
    report = {
        "package": package.manifest.name, "patch_zyx": patch, "threads": torch.get_num_threads(),
        "rows": [{
            "backend": name, "used": runners[name][0], "prepare_s": round(runners[name][2], 2),
            "median_s": round(statistics.median(times[name]), 3), "speedup_vs_first": round(base / statistics.median(times[name]), 2),
            "max_abs_logit_diff_vs_first": float(np.max(np.abs(outputs[name] - outputs[args.backends[0]]))),
        } for name in runners],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
