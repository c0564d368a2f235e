"""One definition of every segmentation option, offered the same by every door (issue 18).

The CLI (``tumorseg segment``/``demo``/``evaluate``), the Python API (``segment``,
``Segmenter``), the background worker and the Slicer module all take
:class:`tumorseg_core.options.SegmentOptions`; these tests compare what each door offers
with that one definition, so a new option or choice cannot reach one door and not another.
"""

from __future__ import annotations

import argparse
import json

import pytest

from tumorseg_core import options as opts
from tumorseg_core.cli import build_parser
from tumorseg_core.commands.segment_options import FLAG_FIELDS
from tumorseg_core.errors import TumorSegError
from tumorseg_core.options import SegmentOptions


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _dests(parser: argparse.ArgumentParser) -> dict:
    return {a.dest: a for a in parser._actions}


@pytest.mark.parametrize("command", ["segment", "demo", "evaluate"])
def test_cli_commands_offer_every_option_with_the_engines_choices(command):
    actions = _dests(_subparser(command))
    seeds = {"seed": "seeds_lps", "background": "background_lps"} if command == "segment" else {}
    offered = {FLAG_FIELDS[d] for d in actions if d in FLAG_FIELDS} | {seeds[d] for d in actions if d in seeds}
    expected = set(SegmentOptions.names()) - ({"seeds_lps", "background_lps"} if not seeds else set())
    assert offered == expected
    assert tuple(actions["backend"].choices) == opts.BACKENDS
    assert tuple(actions["quality"].choices) == opts.QUALITIES
    assert actions["device"].type("CUDA:1") == "cuda:1"
    for device in opts.DEVICES:
        assert actions["device"].type(device) == device
    with pytest.raises(argparse.ArgumentTypeError, match="unknown device"):
        actions["device"].type("tpu")


def test_cli_defaults_are_the_options_defaults():
    args = build_parser().parse_args(["segment", "x.nii.gz", "-o", "y.nii.gz"])
    from tumorseg_core.commands.segment_options import segment_options

    assert segment_options(args) == SegmentOptions()


def test_options_validate_once_with_one_line_errors():
    assert SegmentOptions(device="CUDA:0", backend="OpenVINO").device == "cuda:0"
    bad = [dict(device="tpu"), dict(backend="tensorrt"), dict(quality="best"), dict(overlap=1.0), dict(overlap=-0.1),
           dict(overlap=True), dict(window_batch=0), dict(window_batch=2.5), dict(tta="yes"), dict(cascade=1),
           dict(postprocess=None), dict(seeds_lps=[(1, 2)]), dict(seeds_lps=[(1, 2, float("nan"))]), dict(seeds_lps="1,2,3")]
    for values in bad:
        with pytest.raises(TumorSegError) as info:
            SegmentOptions.from_mapping(values)
        assert "\n" not in str(info.value), values
    with pytest.raises(TumorSegError, match="unknown segment option.*known: device, backend, quality"):
        SegmentOptions.from_mapping({"overlapp": 0.5})


def test_quality_presets_and_explicit_values():
    assert SegmentOptions().window_overlap is None and SegmentOptions().use_tta is False  # the model's own
    assert SegmentOptions(quality="fast").window_overlap == 0.0
    assert SegmentOptions(quality="tta").use_tta is True and SegmentOptions(quality="tta").window_overlap is None
    assert SegmentOptions(quality="fast", overlap=0.5).window_overlap == 0.5  # explicit wins
    assert SegmentOptions(quality="tta", tta=False).use_tta is False
    assert set(opts.QUALITY_LABELS) == set(opts.QUALITIES)


def test_options_round_trip_through_json_as_the_worker_receives_them():
    options = SegmentOptions(device="cpu", quality="fast", overlap=0.3, tta=True, window_batch=4, postprocess=False,
                             cascade=False, seeds_lps=[(1, -2.5, 3)], background_lps=[[0, 0, 0]])
    assert SegmentOptions.from_mapping(json.loads(json.dumps(options.to_dict()))) == options
    assert options.replace(overlap=None).window_overlap == 0.0


def test_worker_and_api_take_the_same_options(tmp_path):
    from tumorseg_core import segment
    from tumorseg_core.worker import Worker

    events = []

    class Sink:
        def send(self, event, **fields):
            events.append({"event": event, **fields})

    worker = Worker(Sink())
    worker.handle({"id": 1, "cmd": "segment", "images": ["x.nii.gz"], "output": str(tmp_path / "o.nrrd"),
                   "options": {"overlapp": 0.5}})
    assert events[-1]["event"] == "error" and "known: " + ", ".join(SegmentOptions.names()) in events[-1]["message"]
    worker.handle({"id": 2, "cmd": "segment", "images": ["x.nii.gz"], "output": str(tmp_path / "o.nrrd"),
                   "device": "tpu"})
    assert events[-1]["event"] == "error" and "unknown device" in events[-1]["message"]
    with pytest.raises(TumorSegError, match="known: " + ", ".join(SegmentOptions.names())):
        segment(["x.nii.gz"], overlapp=0.5)
    with pytest.raises(TumorSegError, match="unknown backend"):
        segment(["x.nii.gz"], backend="tensorrt")
