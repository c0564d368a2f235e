"""The SUV body-weight factor of a PET series, from its DICOM headers (pydicom).

``SUV = activity concentration (Bq/mL) × factor`` with::

    factor = weight_g / (dose_Bq × 2^(-(scan_start - injection) / half_life))

(the injected dose decayed to the scan start, to which a ``DecayCorrection`` of ``START``
corrects the voxels; with ``ADMIN`` the voxels are corrected to the injection time and
the dose is not decayed). Tags read: ``Units`` (must be ``BQML``), ``DecayCorrection``,
``PatientWeight`` (kg), ``RadiopharmaceuticalInformationSequence[0]`` with
``RadionuclideTotalDose`` (Bq), ``RadionuclideHalfLife`` (s) and
``RadiopharmaceuticalStartDateTime`` (or ``RadiopharmaceuticalStartTime`` on the series
date). The scan start is ``SeriesDate``/``SeriesTime``, or the earliest
``AcquisitionDate``/``AcquisitionTime`` of the series when that is earlier (some scanners
rewrite the series time after post-processing) or the series time is missing. Voxel
values are read with their ``RescaleSlope`` applied by the image reader.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from tumorseg_core.errors import InputError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
_HINT = "pass the factor with --suv-factor F (suv_factor=F in Python)"


def _missing(tag: str, where: str) -> InputError:
    return InputError(f"the PET DICOM header has no {tag} ({where}); {_HINT}")


def _read_header(path: Path) -> Optional[Any]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def series_headers(source: PathLike) -> list[Any]:
    """The headers (pydicom datasets, no pixels) of the PET series at ``source``.

    ``source`` is a DICOM file (its series is read from the files beside it) or a folder
    (searched recursively; with several series, the one with the most files, as
    ``imaging.io.read_image`` reads it). Raises InputError when there is no DICOM file.
    """
    path = Path(source)
    if path.is_file():
        first = _read_header(path)
        if first is None:
            raise InputError(f"{path} is not a DICOM file; give the PET DICOM folder, or an image with --suv-factor F")
        uid = str(first.get("SeriesInstanceUID", ""))
        siblings = [_read_header(p) for p in sorted(path.parent.iterdir()) if p.is_file() and p != path]
        return [first] + [h for h in siblings if h is not None and str(h.get("SeriesInstanceUID", "")) == uid]
    if not path.is_dir():
        raise InputError(f"{path} does not exist; check the PET path")
    groups: dict[str, list[Any]] = defaultdict(list)
    for root, _dirs, files in os.walk(path):
        for name in sorted(files):
            header = _read_header(Path(root) / name)
            if header is not None:
                groups[str(header.get("SeriesInstanceUID", ""))].append(header)
    if not groups:
        raise InputError(f"{path} holds no DICOM file; give the PET DICOM folder, or an image with --suv-factor F")
    return max(groups.values(), key=len)


def _datetime(date: str, time: str) -> datetime.datetime:
    """A DICOM DA + TM pair (``YYYYMMDD``, ``HHMMSS.ffffff`` with optional parts) as a datetime."""
    return _parse_dt(f"{date.strip()}{time.strip()}")


def _parse_dt(text: str) -> datetime.datetime:
    """A DICOM DT value (``YYYYMMDDHHMMSS.ffffff``, a UTC offset is ignored) as a naive datetime."""
    text = text.strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[:8] + text[8:].split(sign)[0]
    main, _dot, frac = text.partition(".")
    try:
        value = datetime.datetime.strptime((main + "000000")[:14], "%Y%m%d%H%M%S")
        if frac:
            value += datetime.timedelta(microseconds=int((frac + "000000")[:6]))
    except ValueError as exc:
        raise InputError(f"the PET DICOM header has a date/time {text!r} that is not valid; {_HINT}") from exc
    return value


def _get(header: Any, keyword: str) -> Optional[str]:
    value = header.get(keyword, None)
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip()


def _scan_start(headers: Sequence[Any]) -> datetime.datetime:
    first = headers[0]
    series = None
    if _get(first, "SeriesDate") and _get(first, "SeriesTime"):
        series = _datetime(_get(first, "SeriesDate"), _get(first, "SeriesTime"))  # type: ignore[arg-type]
    acquisitions = []
    for header in headers:
        date = _get(header, "AcquisitionDate") or _get(header, "SeriesDate")
        time = _get(header, "AcquisitionTime")
        if date and time:
            acquisitions.append(_datetime(date, time))
    earliest = min(acquisitions) if acquisitions else None
    if series is None and earliest is None:
        raise _missing("SeriesTime", "nor AcquisitionTime: the scan start is unknown")
    if series is None or (earliest is not None and earliest < series):
        return earliest  # type: ignore[return-value]
    return series


def _injection(info: Any, headers: Sequence[Any]) -> datetime.datetime:
    text = _get(info, "RadiopharmaceuticalStartDateTime")
    if text:
        return _parse_dt(text)
    time = _get(info, "RadiopharmaceuticalStartTime")
    if not time:
        raise _missing("RadiopharmaceuticalStartDateTime", "nor RadiopharmaceuticalStartTime: injection time unknown")
    date = _get(headers[0], "SeriesDate") or _get(headers[0], "AcquisitionDate") or _get(headers[0], "StudyDate")
    if not date:
        raise _missing("SeriesDate", "needed with RadiopharmaceuticalStartTime")
    return _datetime(date, time)


def _number(value: Optional[str], tag: str, where: str) -> float:
    if value is None:
        raise _missing(tag, where)
    try:
        number = float(value)
    except ValueError as exc:
        raise InputError(f"the PET DICOM header's {tag} is {value!r}, not a number; {_HINT}") from exc
    if not number > 0:
        raise InputError(f"the PET DICOM header's {tag} is {number:g}; it must be > 0; {_HINT}")
    return number


def suv_factor_from_headers(headers: Sequence[Any]) -> float:
    """The SUV body-weight factor (g/mL per Bq/mL) from a PET series' headers; see the module docstring."""
    if not headers:
        raise InputError(f"no PET DICOM header was found; {_HINT}")
    first = headers[0]
    modality = _get(first, "Modality")
    if modality and modality != "PT":
        raise InputError(f"the PET series has Modality {modality}, not PT; give the PET series or {_HINT}")
    units = (_get(first, "Units") or "").upper()
    if not units:
        raise _missing("Units", "(0054,1001)")
    if units == "CNTS":
        raise InputError("the PET voxels are in CNTS (scanner counts), not BQML; convert the series to Bq/mL "
                         f"(e.g. with the vendor's SUV scale factor) or {_HINT}")
    if units == "GML":
        raise InputError("the PET voxels are already SUV body weight (Units GML); pass --suv-factor 1")
    if units != "BQML":
        raise InputError(f"the PET voxels are in {units}; only BQML can be converted to SUV, so {_HINT}")
    decay = (_get(first, "DecayCorrection") or "").upper()
    if not decay:
        raise _missing("DecayCorrection", "(0054,1102)")
    if decay not in ("START", "ADMIN"):
        raise InputError(f"the PET DecayCorrection is {decay}; only START or ADMIN can be converted, so {_HINT}")
    weight_kg = _number(_get(first, "PatientWeight"), "PatientWeight", "(0010,1030)")
    sequence = first.get("RadiopharmaceuticalInformationSequence", None)
    if not sequence:
        raise _missing("RadiopharmaceuticalInformationSequence", "(0054,0016)")
    info = sequence[0]
    dose = _number(_get(info, "RadionuclideTotalDose"), "RadionuclideTotalDose", "(0018,1074)")
    if decay == "ADMIN":
        return weight_kg * 1000.0 / dose
    half_life = _number(_get(info, "RadionuclideHalfLife"), "RadionuclideHalfLife", "(0018,1075)")
    elapsed = (_scan_start(headers) - _injection(info, headers)).total_seconds()
    if elapsed < 0:
        raise InputError(f"the PET scan starts {-elapsed:.0f} s before the injection per its headers; {_HINT}")
    return weight_kg * 1000.0 / (dose * 2.0 ** (-elapsed / half_life))


def pet_suv_factor_from_dicom(source: PathLike) -> float:
    """The SUV body-weight factor of the PET DICOM series at ``source`` (a folder or one of its files).

    Multiply the PET image's voxels (Bq/mL) by it to get SUV (g/mL). Raises InputError
    naming the missing or unusable tag (and suggesting ``--suv-factor F``).
    """
    factor = suv_factor_from_headers(series_headers(source))
    logger.info("SUV factor from the DICOM headers of %s: %.6g", source, factor)
    return factor
