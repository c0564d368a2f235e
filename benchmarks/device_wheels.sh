#!/usr/bin/env bash
# Here (not on the device): what a lent GPU's image lacks, for the one-call device scripts.
#
#   bash benchmarks/device_wheels.sh train    # .whl/simpleitk + .whl/train (MONAI) + .real_anatomy (train sources)
#   bash benchmarks/device_wheels.sh nnunet   # .whl/simpleitk + .whl/nnunet (nnunetv2 and its needs)
#
# The image (Python 3.12, torch, numpy, scipy, scikit-image, pandas, ...: .library/device/KINDS.md)
# has neither SimpleITK nor MONAI nor nnU-Net. A device call carries at most 64 MiB with the
# working tree (~12 MB) and SimpleITK alone is 53 MB, so everything comes in two calls in a row
# on the warm machine (it is given back after ~30 s idle: send the second at once):
#
#   call 1, carry [".whl/simpleitk"]:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/simpleitk/*.whl
#   call 2, carry [".whl/train", ".real_anatomy"] (or [".whl/nnunet"]):
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/train/*.whl \
#       && PYTHONPATH=/tmp/site:$PWD DATA=real REAL_CACHE=$PWD/.real_anatomy bash configs/gpu_finetune_default.sh
#     (nnunet: ... .whl/nnunet/*.whl && PYTHONPATH=/tmp/site:$PWD bash benchmarks/gpu_nnunet_cuda.sh)
#
# The nnU-Net flow was checked here with only the image's packages and these importable (an
# import blocker; tifffile's imagecodecs and pydicom's pyjpegls are optional and left out).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:?usage: device_wheels.sh train|nnunet}
if [ -z "${PYTHON:-}" ]; then PYTHON=python3; [ -x .venv/bin/python ] && PYTHON=.venv/bin/python; fi
PIP=("$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p .whl/simpleitk
"${PIP[@]}" -d .whl/simpleitk simpleitk==2.5.7
case "$what" in
    train)
        mkdir -p .whl/train
        "${PIP[@]}" -d .whl/train monai==1.6.1
        # the training split's real sources only (ICBM152 and the head CT, with their tissue maps)
        "$PYTHON" -c 'import sys; sys.path.insert(0, "."); from pathlib import Path
from benchmarks.real_anatomy.sources import export_sources
print(len(export_sources("train", Path(".real_anatomy"))), "files in .real_anatomy")'
        ;;
    nnunet)
        mkdir -p .whl/nnunet
        for spec in nnunetv2==2.8.1 dynamic_network_architectures==0.4.4 batchgenerators==0.25.5 \
                    batchgeneratorsv2==0.3.6 blosc2==4.15.0 ndindex==1.10.1 connected-components-3d==4.1.1 \
                    nibabel==5.4.2 pydicom==3.0.2; do
            "${PIP[@]}" -d .whl/nnunet "$spec"
        done
        "$PYTHON" -m pip wheel -q --no-deps acvl_utils==0.2.6 -w .whl/nnunet  # pure Python, an sdist only
        ;;
    *) echo "usage: device_wheels.sh train|nnunet" >&2; exit 2 ;;
esac
du -sh .whl/* .real_anatomy 2>/dev/null || true
