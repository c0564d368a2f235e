"""Write a real-anatomy evaluation or training set (real head MRI/CT with simulated lesions) for ``tumorseg evaluate``.

::

    python benchmarks/make_real_anatomy_set.py --split eval -n 24 --seed 0 -o /work/realanat/eval
    python benchmarks/make_real_anatomy_set.py --split train -n 40 --seed 0 -o /work/realanat/train
    python -m tumorseg_core evaluate --model default --data /work/realanat/eval

The evaluation split uses Colin27 (MRI) and the left half of the InVesalius head CT; the
training split the ICBM152 average (MRI) and the CT's right half (``benchmarks/real_anatomy/
sources.py``). The sources are fetched on first use into ``~/.cache/tumorseg/real_anatomy``
(``$TUMORSEG_REAL_ANATOMY_CACHE``) with ``apt-get download`` and ``pip download``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.real_anatomy.cases import write_set
    from benchmarks.real_anatomy.fetch_sources import FetchError, ensure_sources
    from benchmarks.real_anatomy.sources import sources_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("eval", "train"), required=True)
    parser.add_argument("-n", type=int, default=24, help="number of cases (default 24; one in six is lesion-free)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for images/, labels/, cases.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.n < 1:
        parser.error("-n must be at least 1")
    try:
        ensure_sources(names=[source.name for source in sources_for(args.split)])
    except FetchError as exc:
        print(f"error: {exc}; run it on a Debian machine with apt-get and pip reaching their registries",
              file=sys.stderr)
        return 2
    write_set(args.output, args.split, args.n, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
