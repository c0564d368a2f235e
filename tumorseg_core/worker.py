"""Background segmentation worker: ``python -m tumorseg_core.worker [--idle-timeout S]``.

The Slicer Logic (and any other client) starts this process once and keeps it warm:
the first request pays for importing torch/MONAI and loading the model; later requests
with the same model and device reuse the cached :class:`~tumorseg_core.inference.segmenter.Segmenter`.

Protocol (docs/core_interfaces.md): JSON objects, one per line. stdout carries *only* protocol lines;
all logging and any stray output goes to stderr.

Requests on stdin::

    {"id": 1, "cmd": "segment", "images": ["t1.nrrd"], "output": "labels.nrrd",
     "model": "default", "device": "auto", "options": {"overlap": 0.5}}
    {"id": 2, "cmd": "ping"}
    {"id": 3, "cmd": "devices"}
    {"id": 4, "cmd": "import", "source": "/downloads/model.zip", "overwrite": false}
    {"id": 5, "cmd": "slice", "images": ["t1.mha"], "model": "live25d", "device": "cpu",
     "axis": "axial", "index": 12, "options": {"backend": "auto"}}
    {"id": 6, "cmd": "click", "inputs": "eJzt...", "shape": [5, 40, 40, 40], "network": "/path/to/clicknet"}
    {"cmd": "shutdown"}

``options`` are :class:`~tumorseg_core.options.SegmentOptions` fields (validated there).
A ``segment`` request may add ``"uncertainty": true`` (a request for a second output, not
an option of the computation): the worker then also writes the voxel-wise uncertainty
(float32, in [0, 1], on the label map's grid) as ``uncertainty.nrrd`` in the folder of
``output`` and names it in ``done`` as ``"uncertainty": "<folder>/uncertainty.nrrd"``.

Events on stdout::

    {"event": "ready", "pid": 1234, "protocol": 1}
    {"event": "progress", "id": 1, "fraction": 0.4, "message": "window 12/30"}
    {"event": "done", "id": 1, "output": "labels.nrrd", "seconds": 2.1, "warm": false, "labels": [...]}
    {"event": "done", ..., "uncertainty": "/tmp/x/uncertainty.nrrd"}   (only when asked)
    {"event": "error", "id": 1, "message": "one line"}
    {"event": "pong", "id": 2, "pid": 1234}
    {"event": "devices", "id": 3, "report": {"cuda_available": false, "gpus": [], ...}}
    {"event": "imported", "id": 4, "name": "my-model", "path": "/home/me/.tumorseg/models/my-model"}
    {"event": "slice", "id": 5, "axis": "axial", "index": 12, "shape": [256, 256], "encoding": "zlib+base64",
     "data": "eJzt...", "seconds": 0.04, "warm": true, "cached": true, "labels": [...]}
    {"event": "slice", "id": 5, "superseded": true}
    {"event": "click", "id": 6, "shape": [40, 40, 40], "encoding": "zlib+base64", "dtype": "float32",
     "probability": "eJzt...", "seconds": 0.2, "warm": true}
    {"event": "error", "id": 4, "message": "...", "kind": "ModelAlreadyInstalledError"}

``slice`` runs a 2.5D model (architecture ``unet25d``) on one slice of the image's own grid
(:class:`~tumorseg_core.inference.slice_mode.SliceSegmenter`; ``axis`` axial/coronal/sagittal
fixes numpy axis 0/1/2 of the (z, y, x) array). The image is read and normalized once and
kept warm per (model, image file: path, size, mtime), so scrolling costs one network call.
Of the ``options`` only ``backend`` matters (all are validated). The answer is the slice's
labels as ``data``: the uint8 (P, Q) array in C order, zlib-compressed, then base64 (one
small JSON line, no temporary file to write, read and clean up per slice; a 512 x 512 slice
of mostly background is about 1 KB). A ``slice`` request still waiting when a newer
``slice`` request has arrived is *superseded*: it is answered with ``"superseded": true``
and not run, so a client that scrolls faster than the model runs only pays for the latest.

``click`` runs the click network (:class:`~tumorseg_core.clicknet.predict.ClickNet`) on one cube's
inputs, which the client builds itself (:func:`tumorseg_core.clicknet.cube.cube_inputs`, no torch):
``inputs`` is the float32 (CHANNELS, SIZE, SIZE, SIZE) array in C order, zlib-compressed, then base64
(:func:`pack_array`); ``shape`` must be exactly that shape. ``network`` is the click network's folder
(default: the shipped one, ``tumorseg_core/data/clicknet``); it is verified (sha256 of every file) and
loaded once, and again only when its files change on disk. The answer's ``probability`` is P(lesion)
on the cube, float32 (SIZE, SIZE, SIZE), encoded the same way. A wrong shape, undecodable ``inputs``
or a missing or modified network folder is answered with an ``error`` event.

``import`` installs a TumorSeg model package (folder or .zip) or imports a foreign model
(``tumorseg_core.import_model``) into the user model folder. Error events carry ``kind``,
the TumorSegError subclass's name, so a client can react to the type, never to the text.

The worker exits cleanly on ``shutdown``, when stdin closes (the parent died) or after
``--idle-timeout`` seconds without a request. Cancelling is done by the parent killing
the process tree; nothing here needs to cooperate.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import queue
import sys
import threading
import time
import traceback
import zlib
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Deque, Dict, Optional, TextIO, Tuple

from tumorseg_core.errors import TumorSegError

logger = logging.getLogger("tumorseg_core.worker")

PROTOCOL_VERSION = 1
#: Segmenters kept warm at once; each holds a model's networks in (GPU) memory.
MAX_CACHED_SEGMENTERS = 2
#: Progress lines are rate-limited so a model with thousands of windows cannot flood the pipe.
_PROGRESS_INTERVAL_S = 0.1
#: How a ``slice`` answer encodes its labels, and ``click`` its arrays (see the module docstring).
SLICE_ENCODING = "zlib+base64"


def pack_array(array: Any) -> str:
    """A numpy array's bytes in C order, zlib-compressed, then base64 (the protocol's ``zlib+base64``)."""
    import numpy as np

    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 1)).decode("ascii")


def unpack_array(text: Any, shape: Any, dtype: str) -> Any:
    """The array :func:`pack_array` wrote, of exactly ``shape`` and ``dtype``; TumorSegError when it is not one."""
    import numpy as np

    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise TumorSegError(f"array shape must be a list of positive integers, got {shape!r}")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.b64decode(str(text), validate=True), expected + 1)  # never more than needed
    except (ValueError, zlib.error) as exc:
        raise TumorSegError(f"array data is not zlib+base64 ({_one_line(exc)})") from exc
    if len(raw) != expected or not inflate.eof:
        raise TumorSegError(f"array data does not hold a {dtype} array of shape {list(shape)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


class Protocol:
    """Writes protocol events as JSON lines to a private copy of the real stdout."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        """Write one ``{"event": event, ...}`` line and flush it."""
        line = json.dumps({"event": event, **fields}, ensure_ascii=True, default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def take_over_stdout() -> TextIO:
    """Reserve the real stdout for protocol lines and send everything else to stderr.

    The real stdout file descriptor is duplicated for the protocol; fd 1 is then pointed
    at stderr, so a ``print`` in some library, or output written by C code (ITK, torch),
    can never corrupt the JSON stream.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "w", encoding="utf-8", buffering=1, newline="\n")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def model_fingerprint(model: str) -> Tuple[Any, ...]:
    """A cheap stamp of a model package on disk (file names, sizes, mtimes).

    Part of the cache key, so a package replaced or edited on disk between two requests
    is opened (and its hashes verified) again instead of served from memory. Installed
    model names that are not paths give an empty stamp.
    """
    path = Path(model).expanduser()
    try:
        if path.is_file():
            st = path.stat()
            return ((path.name, st.st_size, st.st_mtime_ns),)
        if path.is_dir():
            return tuple(
                sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
            )
    except OSError:
        pass
    return ()


def _model_key(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


class Worker:
    """Executes requests; keeps up to :data:`MAX_CACHED_SEGMENTERS` segmenters warm."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self._segmenters: "OrderedDict[Tuple[Any, ...], Any]" = OrderedDict()
        #: Warm SliceSegmenters (each holds one normalized image), keyed like the segmenters.
        self._slicers: Dict[Tuple[Any, ...], Any] = {}
        #: The warm click network: (resolved folder, its files' fingerprint), ClickNet.
        self._clicknet: Optional[Tuple[Tuple[Any, ...], Any]] = None

    # ------------------------------------------------------------------ requests

    def handle(self, request: Any) -> bool:
        """Execute one request; returns False when the worker should exit."""
        if not isinstance(request, dict):
            self.protocol.send("error", id=None, message="a request must be a JSON object")
            return True
        rid = request.get("id")
        cmd = request.get("cmd")
        if cmd == "shutdown":
            logger.info("shutdown requested")
            return False
        if cmd == "ping":
            self.protocol.send("pong", id=rid, pid=os.getpid())
            return True
        if cmd not in ("segment", "devices", "import", "slice", "click"):
            self.protocol.send("error", id=rid, message=f"unknown command {cmd!r}; "
                                                        "use segment, slice, click, devices, import, ping or shutdown")
            return True
        try:
            if cmd == "devices":
                from tumorseg_core.inference.devices import device_report

                self.protocol.send("devices", id=rid, report=device_report())
            elif cmd == "import":
                self._import(rid, request)
            elif cmd == "slice":
                self._slice(rid, request)
            elif cmd == "click":
                self._click(rid, request)
            else:
                self._segment(rid, request)
        except TumorSegError as exc:
            logger.info("request %s failed: %s", rid, exc)
            details = {key: str(getattr(exc, key)) for key in ("name", "folder") if hasattr(exc, key)}
            self.protocol.send("error", id=rid, message=_one_line(exc), kind=type(exc).__name__, **details)
        except ImportError as exc:
            logger.error("request %s: missing dependency\n%s", rid, traceback.format_exc())
            self.protocol.send("error", id=rid, message=f"a required package is missing ({_one_line(exc)}); "
                                                        "install TumorSeg's dependencies (torch, MONAI) and retry")
        except MemoryError:
            logger.error("request %s ran out of memory\n%s", rid, traceback.format_exc())
            self.protocol.send("error", id=rid, message="out of memory; close other programs or use a smaller image")
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the warm worker; it is reported
            logger.error("request %s failed with an unexpected error\n%s", rid, traceback.format_exc())
            self.protocol.send(
                "error", id=rid,
                message=f"unexpected error {type(exc).__name__}: {_one_line(exc)} (details in the worker log)",
            )
        return True

    def _import(self, rid: Any, request: Dict[str, Any]) -> None:
        """Install a model package, or import a foreign model, into the user model folder."""
        source, overwrite = request.get("source"), request.get("overwrite", False)
        if not isinstance(source, str) or not source or not isinstance(overwrite, bool):
            raise TumorSegError("request 'source' must be a path and 'overwrite' true or false")
        from tumorseg_core.modelpkg.convert import import_model

        path = Path(source).expanduser()
        self.protocol.send("progress", id=rid, fraction=0.0, message=f"reading {path.name}")
        installed = import_model(path, install=True, overwrite=overwrite)  # a package is installed as it is
        self.protocol.send("progress", id=rid, fraction=1.0, message=f"installed {installed.name}")
        self.protocol.send("imported", id=rid, name=installed.name, path=str(installed))

    def _segmenter(self, model: str, device: str) -> Tuple[Tuple[Any, ...], Any, bool]:
        """``(cache key, Segmenter, warm)`` for a model on a device: the cached one, or a new one."""
        from tumorseg_core.inference.segmenter import Segmenter

        key = (_model_key(model), device, model_fingerprint(model))
        segmenter = self._segmenters.get(key)
        warm = segmenter is not None
        if warm:
            self._segmenters.move_to_end(key)
        else:
            # Drop stale entries for the same model (edited on disk) before loading anew.
            for old in [k for k in self._segmenters if k[:2] == key[:2]]:
                del self._segmenters[old]
            if not self._segmenters:
                from tumorseg_core.inference.devices import configure_threads

                configure_threads()  # all usable cores, once, before the first model runs
            segmenter = Segmenter(model, device)
            self._segmenters[key] = segmenter
            while len(self._segmenters) > MAX_CACHED_SEGMENTERS:
                self._segmenters.popitem(last=False)
        self._slicers = {k: v for k, v in self._slicers.items() if k in self._segmenters}
        return key, segmenter, warm

    def _slice(self, rid: Any, request: Dict[str, Any]) -> None:
        """One slice of a 2.5D model: labels of ``images``' slice ``index`` along ``axis`` (module docstring)."""
        started = time.perf_counter()
        images, model, options = _run_request(request)
        axis, index = request.get("axis", "axial"), request.get("index")
        import numpy as np

        from tumorseg_core.inference.slice_mode import AXES, SliceSegmenter, axis_index

        axis_name = next(name for name, number in AXES.items() if number == axis_index(axis))
        key, segmenter, warm = self._segmenter(model, options.device)
        slicer = self._slicers.get(key)
        if slicer is None or (slicer.backend, slicer.precision) != (options.backend, options.precision):
            # Checks the architecture first: a 3D model is refused here, with a one-line message.
            slicer = SliceSegmenter(segmenter.package, backend=options.backend, device=segmenter.device,
                                    precision=options.precision)
            self._slicers[key] = slicer
        misses = slicer.cache_misses
        try:
            labels = slicer.segment_slice(images, index, axis_name)
        except TumorSegError:
            raise
        except Exception:
            self._slicers.pop(key, None)  # possibly in a bad state: rebuild next time
            raise
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        data = pack_array(labels)
        seconds = time.perf_counter() - started
        logger.debug("slice request %s (%s %s) done in %.3f s", rid, axis_name, index, seconds)
        self.protocol.send("slice", id=rid, axis=axis_name, index=int(index), shape=list(labels.shape),
                           encoding=SLICE_ENCODING, data=data, seconds=round(seconds, 4), warm=warm,
                           cached=slicer.cache_misses == misses,
                           labels=[s.to_dict() for s in segmenter.manifest.segments])

    def _click(self, rid: Any, request: Dict[str, Any]) -> None:
        """The click network's P(lesion) on one cube from its inputs (module docstring)."""
        started = time.perf_counter()
        from tumorseg_core.clicknet.grid import SIZE
        from tumorseg_core.clicknet.inputs import CHANNELS

        shape = request.get("shape")
        if shape != [CHANNELS, SIZE, SIZE, SIZE]:
            raise TumorSegError(f"click request 'shape' must be {[CHANNELS, SIZE, SIZE, SIZE]}, got {shape!r}")
        inputs = unpack_array(request.get("inputs"), shape, "float32")
        network = request.get("network")
        if network is not None and (not isinstance(network, str) or not network):
            raise TumorSegError("click request 'network' must be the click network's folder")
        from tumorseg_core.clicknet.predict import ClickNet, shipped_folder

        folder = Path(network).expanduser().resolve() if network else shipped_folder()
        key = (str(folder), model_fingerprint(str(folder)))
        warm = self._clicknet is not None and self._clicknet[0] == key
        if not warm:
            self._clicknet = None  # a changed or other folder is verified and loaded anew
            self._clicknet = (key, ClickNet(folder))
        assert self._clicknet is not None
        prob = self._clicknet[1].forward(inputs).astype("float32")
        seconds = time.perf_counter() - started
        self.protocol.send("click", id=rid, shape=list(prob.shape), encoding=SLICE_ENCODING, dtype="float32",
                           probability=pack_array(prob), seconds=round(seconds, 4), warm=warm)

    def _segment(self, rid: Any, request: Dict[str, Any]) -> None:
        started = time.perf_counter()
        output = request.get("output")
        uncertainty = request.get("uncertainty", False)
        if not isinstance(uncertainty, bool):
            raise TumorSegError("request 'uncertainty' must be true or false")
        images, model, options = _run_request(request)
        if not isinstance(output, str) or not output:
            raise TumorSegError("request 'output' must be a file path")
        device = options.device
        key, segmenter, warm = self._segmenter(model, device)

        last_sent = [0.0]

        def progress(fraction: float, message: str) -> None:
            now = time.perf_counter()
            if fraction >= 1.0 or now - last_sent[0] >= _PROGRESS_INTERVAL_S:
                last_sent[0] = now
                self.protocol.send("progress", id=rid, fraction=round(float(fraction), 4), message=str(message))

        overrides = {k: v for k, v in options.to_dict().items() if k != "device"}
        uncertainty_path = None
        if uncertainty:
            from tumorseg_core.inference.uncertainty import WORKER_FILE_NAME

            uncertainty_path = str(Path(output).parent / WORKER_FILE_NAME)
        try:
            segmenter.segment_to_file(images, output, progress=progress, uncertainty_path=uncertainty_path,
                                      **overrides)
        except TumorSegError:
            raise
        except Exception:
            # A segmenter that failed in an unexpected way may be in a bad state: reload next time.
            self._segmenters.pop(key, None)
            raise
        segments = [s.to_dict() for s in segmenter.manifest.segments]
        seconds = time.perf_counter() - started
        logger.info("request %s done in %.2f s (%s)", rid, seconds, "warm" if warm else "cold")
        extra = {} if uncertainty_path is None else {"uncertainty": uncertainty_path}
        self.protocol.send("done", id=rid, output=output, seconds=round(seconds, 3), warm=warm, labels=segments,
                           **extra)


def _read_stdin(lines: "queue.Queue[Optional[str]]") -> None:
    """Reader thread: stdin lines onto ``lines``; ``None`` at end of file (parent gone)."""
    try:
        for raw in sys.stdin.buffer:
            lines.put(raw.decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        pass
    lines.put(None)


def _run_request(request: Dict[str, Any]) -> Tuple[list, str, Any]:
    """``(images, model, SegmentOptions)`` of a ``segment`` or ``slice`` request, every value checked."""
    images = request.get("images")
    model = request.get("model", "default")
    device = request.get("device", "auto")
    options = request.get("options") or {}
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        raise TumorSegError("request 'images' must be a non-empty list of file paths")
    if not isinstance(model, str) or not isinstance(device, str) or not isinstance(options, dict):
        raise TumorSegError("request 'model' and 'device' must be strings and 'options' an object")
    from tumorseg_core.options import SegmentOptions

    return images, model, SegmentOptions.from_mapping({**options, "device": device})  # every value checked here


def _is_slice_request(line: Optional[str]) -> bool:
    """True if a raw request line is a ``slice`` request (cheap text test first)."""
    if line is None or '"slice"' not in line:
        return False
    try:
        request = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(request, dict) and request.get("cmd") == "slice"


def serve(protocol: Protocol, idle_timeout: Optional[float]) -> int:
    """Announce readiness, then execute requests until shutdown, end of input or idleness."""
    worker = Worker(protocol)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    # A thread (not select) so the idle timeout also works on Windows pipes.
    threading.Thread(target=_read_stdin, args=(lines,), name="stdin-reader", daemon=True).start()
    protocol.send("ready", pid=os.getpid(), protocol=PROTOCOL_VERSION)
    backlog: Deque[Optional[str]] = deque()  # lines received and not yet handled, in order
    while True:
        if not backlog:
            try:
                backlog.append(lines.get(timeout=idle_timeout if idle_timeout and idle_timeout > 0 else None))
            except queue.Empty:
                logger.info("idle for %.0f s; exiting", idle_timeout)
                return 0
        while True:  # everything already received, so a newer slice request can supersede older ones
            try:
                backlog.append(lines.get_nowait())
            except queue.Empty:
                break
        line = backlog.popleft()
        if line is None:
            logger.info("stdin closed; exiting")
            return 0
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            protocol.send("error", id=None, message=f"request is not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if isinstance(request, dict) and request.get("cmd") == "slice" and any(map(_is_slice_request, backlog)):
            logger.debug("slice request %s superseded by a newer one", request.get("id"))
            protocol.send("slice", id=request.get("id"), superseded=True)
            continue
        if not worker.handle(request):
            return 0


def main(argv: Optional[list] = None) -> int:
    """Entry point of ``python -m tumorseg_core.worker``."""
    parser = argparse.ArgumentParser(prog="python -m tumorseg_core.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--idle-timeout", type=float, default=0.0,
                        help="exit after this many seconds without a request (0: never)")
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    protocol = Protocol(take_over_stdout())
    try:
        return serve(protocol, args.idle_timeout)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    exit_code = main()
    logging.shutdown()
    sys.stderr.flush()
    # os._exit, not sys.exit: after an idle timeout the stdin reader thread still blocks
    # inside stdin's buffer lock, and interpreter shutdown would abort on that lock.
    # Every protocol line has already been flushed.
    os._exit(exit_code)
