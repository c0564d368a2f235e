#!/usr/bin/env bash
# Here (not on the device): the wheels benchmarks/gpu_nnunet_cuda.sh needs on a lent GPU, whose
# image (Python 3.12, torch, numpy, scipy, scikit-image, pandas, ...: .library/device/KINDS.md)
# lacks nnU-Net, SimpleITK and a few of their needs. A device call carries at most 64 MiB with
# the working tree (~12 MB), so they come in two parts, installed by two calls in a row on the
# warm machine (it is given back after ~30 s idle: send the second call at once):
#
#   .whl/nnunet-a  SimpleITK alone (~53 MB)
#   .whl/nnunet-b  nnunetv2, dynamic_network_architectures, acvl_utils (built here: sdist only),
#                  batchgenerators(v2), blosc2, ndindex, connected-components-3d, nibabel, pydicom (~18 MB)
#
#   call 1, carry [".whl/nnunet-a"]:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/nnunet-a/*.whl
#   call 2, carry [".whl/nnunet-b"]:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/nnunet-b/*.whl \
#       && PYTHONPATH=/tmp/site:$PWD bash benchmarks/gpu_nnunet_cuda.sh
#
# The flow was checked here with only the device image's packages and these importable
# (tifffile's imagecodecs and pydicom's pyjpegls are optional and left out).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PIP=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p .whl/nnunet-a .whl/nnunet-b
"${PIP[@]}" -d .whl/nnunet-a simpleitk==2.5.7
for spec in nnunetv2==2.8.1 dynamic_network_architectures==0.4.4 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 \
            blosc2==4.15.0 ndindex==1.10.1 connected-components-3d==4.1.1 nibabel==5.4.2 pydicom==3.0.2; do
    "${PIP[@]}" -d .whl/nnunet-b "$spec"
done
python3 -m pip wheel -q --no-deps acvl_utils==0.2.6 -w .whl/nnunet-b  # pure Python, published as an sdist only
du -sh .whl/nnunet-a .whl/nnunet-b
