"""Issue #20's model numbers for a real-anatomy set, from ``tumorseg evaluate --csv`` rows and ``cases.json``.

::

    python -m tumorseg_core evaluate --model default --data DIR --csv DIR.csv
    python -m benchmarks.real_anatomy.score DIR.csv DIR/cases.json

Prints, over the lesion cases: median (and mean, min) Dice, lesion recall (truth lesions
found / all), false-positive lesions per case (all cases); over the lesion-free cases: how
many have no predicted voxel; and the same split by modality. Label 1 (tumor) only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any


def score(rows: list[dict[str, str]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary numbers of CSV ``rows`` (label 1) for the cases of ``records`` (``cases.json``'s ``cases``)."""
    by_case = {r["case"]: r for r in rows if int(r["label"]) == 1}
    missing = sorted({rec["case"] for rec in records} - set(by_case))
    if missing:
        raise ValueError(f"{len(missing)} case(s) of cases.json have no CSV row, e.g. {missing[0]}")
    lesion = [rec for rec in records if not rec["lesion_free"]]
    free = [rec for rec in records if rec["lesion_free"]]
    dice = sorted(float(by_case[rec["case"]]["dice"]) for rec in lesion)
    truth = sum(int(float(by_case[rec["case"]]["lesions_truth"])) for rec in lesion)
    found = sum(int(float(by_case[rec["case"]]["lesions_found"])) for rec in lesion)
    fps = [int(float(by_case[rec["case"]]["lesions_fp"])) for rec in records]
    clean = [float(by_case[rec["case"]]["volume_pred_mm3"]) == 0.0 for rec in free]

    def median(values: list[float]) -> float:
        if not values:
            return math.nan
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0

    return {
        "cases": len(records), "lesion_cases": len(lesion), "lesion_free_cases": len(free),
        "median_dice": median(dice), "mean_dice": sum(dice) / len(dice) if dice else math.nan,
        "min_dice": dice[0] if dice else math.nan,
        "lesions_truth": truth, "lesions_found": found, "lesion_recall": found / truth if truth else math.nan,
        "fp_per_case": sum(fps) / len(fps) if fps else math.nan, "max_fp": max(fps) if fps else 0,
        "lesion_free_clean": sum(clean),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="CSV written by tumorseg evaluate --csv")
    parser.add_argument("cases", type=Path, help="the set's cases.json")
    args = parser.parse_args(argv)
    with open(args.csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    records = json.loads(args.cases.read_text(encoding="utf-8"))["cases"]
    groups = {"all": records}
    for modality in sorted({r["modality"] for r in records}):
        groups[modality] = [r for r in records if r["modality"] == modality]
    print("| cases | median Dice (lesion cases) | mean / min Dice | lesion recall | FP lesions per case (max) "
          "| lesion-free cases clean |")
    print("|---|---|---|---|---|---|")
    for name, group in groups.items():
        s = score(rows, group)
        print(f"| {name} ({s['lesion_cases']} + {s['lesion_free_cases']} free) | {s['median_dice']:.3f} | "
              f"{s['mean_dice']:.3f} / {s['min_dice']:.3f} | {s['lesion_recall']:.2f} "
              f"({s['lesions_found']}/{s['lesions_truth']}) | {s['fp_per_case']:.2f} ({s['max_fp']}) | "
              f"{s['lesion_free_clean']}/{s['lesion_free_cases']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
