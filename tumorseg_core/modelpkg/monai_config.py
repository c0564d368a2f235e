"""MONAI's bundle config syntax, read as data: references, macros and components, never code.

MONAI's ``ConfigParser`` resolves ``@id`` references and ``%file#id`` macros, evaluates
``$`` expressions as Python and instantiates ``_target_`` components by import.
:class:`BundleConfig` does the first two as look-ups in the parsed JSON/YAML (ids ``#`` or
``::`` separated, relative ``@#id`` / ``@##id`` as MONAI resolves them, macros only from files
inside the bundle), refuses every ``$`` expression it is asked to resolve, and returns a
component's ``_target_`` and raw arguments for the caller to check against its allowlist
(:mod:`tumorseg_core.modelpkg.monai_bundle`). Files are read with ``json`` or
``yaml.safe_load``, at most :data:`MAX_CONFIG_BYTES`. Every refusal is one
:class:`~tumorseg_core.errors.ModelPackageError` line (:func:`refuse`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from tumorseg_core.errors import ModelPackageError

MAX_CONFIG_BYTES = 16 * 1024 * 1024
NON_ARG_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
SEP = "::"


def refuse(what: str, hint: str = "") -> ModelPackageError:
    """The one-line error that stops a bundle's import: what is refused, and what to do."""
    text = f"refusing bundle: {what}" + (f"; {hint}" if hint else "")
    return ModelPackageError(" ".join(text.split()))


def short(value: Any, limit: int = 90) -> str:
    """``repr(value)`` cut to ``limit`` characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def where(id_: str) -> str:
    """A config id as MONAI writes it (``#``-separated), or "the config" for the root."""
    return id_.replace(SEP, "#") if id_ else "the config"




class BundleConfig:
    """One parsed config, with MONAI's reference and macro syntax resolved as look-ups."""

    def __init__(self, root: Path, data: Dict[str, Any], file_name: str) -> None:
        self.root, self.data, self.file_name = root, data, file_name

    @staticmethod
    def norm(id_: str) -> str:
        return str(id_).replace("#", SEP)

    def raw(self, id_: str, data: Any = None, via: str = "") -> Any:
        node = self.data if data is None else data
        if id_ == "":
            return node
        for part in self.norm(id_).split(SEP):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise refuse(f"{via or 'a reference'} names {where(self.norm(id_))!r}, which "
                              f"{self.file_name} does not define")
        return node

    def set(self, id_: str, value: Any) -> None:
        parts = self.norm(id_).split(SEP)
        parent = self.raw(SEP.join(parts[:-1]), via=f"override {id_!r}") if len(parts) > 1 else self.data
        if isinstance(parent, dict):
            parent[parts[-1]] = value
        elif isinstance(parent, list) and parts[-1].isdigit() and int(parts[-1]) < len(parent):
            parent[int(parts[-1])] = value
        else:
            raise refuse(f"override {id_!r} names nothing in {self.file_name}")

    @staticmethod
    def absolute(text: str, id_: str) -> str:
        """MONAI's relative ids: ``@#A`` is A beside ``id_``, ``@##A`` one level up."""
        text = BundleConfig.norm(text)
        sym, rest = text[0], text[1:]
        if not rest.startswith(SEP):
            return text
        n = 0
        while rest.startswith(SEP):
            rest, n = rest[len(SEP):], n + 1
        current = id_.split(SEP) if id_ else []
        if n > len(current):
            raise refuse(f"the relative reference {text!r} at {where(id_)} points above the config")
        base = current[:-n] if n else current
        return sym + (SEP.join(base) + SEP if base else "") + rest

    def macro(self, text: str, id_: str) -> Any:
        """``%file::id`` or ``%id``: a copy of that raw value (files inside the bundle only)."""
        body = self.absolute(text, id_)[1:]
        found = re.match(r"^(.*?\.(?:json|yaml|yml))(?:::(.*))?$", body, re.IGNORECASE)
        if not found:
            return copy.deepcopy(self.raw(body, via=f"macro {text!r} at {where(id_)}"))
        rel, inner = found.group(1), found.group(2) or ""
        path = (self.root / rel).resolve()
        root = self.root.resolve()
        if Path(rel).is_absolute() or (path != root and root not in path.parents):
            raise refuse(f"macro {text!r} at {where(id_)} reads a file outside the bundle")
        other = load_config_file(path)
        return copy.deepcopy(self.raw(inner, data=other, via=f"macro {text!r} at {where(id_)}"))

    def follow(self, value: Any, id_: str) -> Tuple[Any, str]:
        """Follow ``@id`` and ``%macro`` strings until a value that is neither; refuse ``$``."""
        seen: List[str] = []
        while isinstance(value, str) and value[:1] in ("@", "%", "$"):
            if value.startswith("$"):
                raise refuse(
                    f"{where(id_)} in {self.file_name} is the expression {short(value)}, which TumorSeg does "
                    "not evaluate", "replace it with a literal value (or pass it as an override)")
            if value.startswith("%"):
                value = self.macro(value, id_)
                continue
            target = self.absolute(value, id_)[1:]
            if target in seen or len(seen) > 64:
                raise refuse(f"the reference {value!r} at {where(id_)} is circular")
            seen.append(target)
            value, id_ = self.raw(target, via=f"the reference {value!r} at {where(id_)}"), target
        return value, id_

    def resolve(self, value: Any, id_: str, depth: int = 0) -> Any:
        """The value with every reference and macro inside it resolved; refuses any ``$``."""
        if depth > 64:
            raise refuse(f"{where(id_)} nests too deeply")
        value, id_ = self.follow(value, id_)
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{id_}{SEP}{k}" if id_ else str(k), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{id_}{SEP}{i}" if id_ else str(i), depth + 1) for i, v in enumerate(value)]
        return value

    def component(self, value: Any, id_: str, section: str) -> Optional[Tuple[str, Dict[str, Any], str]]:
        """``(target, raw args, id)`` of a ``_target_`` dict; None when ``_disabled_``."""
        value, id_ = self.follow(value, id_)
        if not isinstance(value, dict) or "_target_" not in value:
            raise refuse(f"{where(id_)} in {section} is {short(value)}, not a component with a _target_")
        disabled = self.resolve(value.get("_disabled_", False), f"{id_}{SEP}_disabled_")
        if isinstance(disabled, str):
            disabled = disabled.strip().lower() == "true"
        if disabled:
            return None
        target = self.resolve(value["_target_"], f"{id_}{SEP}_target_")
        if not isinstance(target, str):
            raise refuse(f"{where(id_)} in {section} has _target_ {short(target)}, not a name")
        if value.get("_mode_", "default") != "default":
            raise refuse(f"{target} in {section} has _mode_ {short(value['_mode_'])}; only the default is supported")
        if "_requires_" in value:
            raise refuse(f"{target} in {section} has _requires_, which is not supported")
        args = {k: v for k, v in value.items() if k not in NON_ARG_KEYS}
        return target, args, id_


def load_config_file(path: Path) -> Dict[str, Any]:
    """A bundle's JSON or YAML config file as a dict (``json`` / ``yaml.safe_load``; size-limited)."""
    if not path.is_file():
        raise refuse(f"{path.name} does not exist in the bundle")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise refuse(f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise refuse(f"{path.name} is YAML and PyYAML is not installed",
                          "install it (pip install pyyaml) or use the bundle's JSON config") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise refuse(f"{path.name} is not valid YAML ({' '.join(str(exc).split())[:150]})") from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise refuse(f"{path.name} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise refuse(f"{path.name} does not hold a JSON object")
    return data
