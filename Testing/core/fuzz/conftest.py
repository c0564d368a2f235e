"""Fuzz suite plumbing: a session-wide count of the cases tried, printed as ``fuzz: N cases``.

Every fuzz test (hypothesis examples and the named adversarial corpus) calls
``fuzz_cases.add(area)`` once per case; the terminal summary reports the total and the
split by area, so CI logs show how much was tried.
"""

from __future__ import annotations

import collections

import pytest

_COUNTS: collections.Counter = collections.Counter()


class _Counter:
    def add(self, area: str) -> None:
        _COUNTS[area] += 1


@pytest.fixture(scope="session")
def fuzz_cases() -> _Counter:
    """``fuzz_cases.add(area)``: count one case tried (session-scoped, so hypothesis may use it)."""
    return _Counter()


def pytest_terminal_summary(terminalreporter) -> None:
    if _COUNTS:
        detail = ", ".join(f"{area} {n}" for area, n in sorted(_COUNTS.items()))
        terminalreporter.write_line(f"fuzz: {sum(_COUNTS.values())} cases ({detail})")
