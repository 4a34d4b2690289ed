"""A recipe's vulnerability gate policy (its `vulnerabilities:` section): which severity fails
the bake, how a finding whose record states no severity counts, and which ids are waived, why,
and until when.

```yaml
vulnerabilities:
  fail_on: high            # a finding at or above this severity (low < medium < high < critical) fails
  unknown_as: medium       # the severity of a finding whose record gives none (most Debian records)
  waive:
    - id: CVE-2024-1234
      reason: "the vulnerable code path (the X daemon) is not installed"
      expires: 2027-01-31  # waives through this day; from the next day it is reported as expired and fails again
```

The gate itself (matching an OSV feed, evaluating this policy) is bakery/evidence/gate.py.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from bakery.config.models import Strict
from bakery.config.yamlfile import FieldError

Severity = Literal["low", "medium", "high", "critical"]
#: lowest first: a severity's index is its rank
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")

# The ids a waiver may name: the upstream CVE, Debian's own advisories (DSA, DLA, DTSA) and the
# OSV Debian export's per-CVE records (DEBIAN-CVE-...), GitHub's (GHSA) and OSV's own. Anything
# else is a typo that would otherwise waive nothing and be noticed only when the bake fails.
WAIVER_ID = re.compile(
    r"(DEBIAN-)?CVE-\d{4}-\d{4,}"
    r"|D[LS]A-\d{3,}(-\d+)?|DTSA-\d+(-\d+)?"
    r"|GHSA(-[23456789cfghjmpqrvwx]{4}){3}"
    r"|OSV-\d{4}-\d+",
    re.IGNORECASE)


def _waiver_id(value: str) -> str:
    if not WAIVER_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a vulnerability id (CVE-YYYY-NNNN, DEBIAN-CVE-YYYY-NNNN, DSA-NNNN-N, "
                         "DLA-NNNN-N, GHSA-xxxx-xxxx-xxxx or OSV-YYYY-NNN)")
    return value.upper() if not value.upper().startswith("GHSA") else "GHSA" + value[4:].lower()


def _reason(value: str) -> str:
    if not value.strip():
        raise ValueError("a waiver needs a reason: say why this vulnerability does not matter here")
    return value.strip()


class Waiver(Strict):
    """One waived id. A reason is required (an audit asks why) and so is an expiry (a waiver that
    never lapses is never reviewed again)."""

    id: Annotated[str, AfterValidator(_waiver_id)]
    reason: Annotated[str, AfterValidator(_reason)]
    expires: date = Field(description="the last day the waiver holds")

    def expired(self, today: date) -> bool:
        return today > self.expires


class VulnerabilityPolicy(Strict):
    fail_on: Severity = "high"
    # Debian's OSV records mostly carry neither a CVSS vector nor an urgency: an unknown severity
    # must count as something, and `medium` under the default `fail_on: high` reports without failing.
    unknown_as: Severity = "medium"
    waive: list[Waiver] = []

    @field_validator("waive")
    @classmethod
    def _unique(cls, waivers: list[Waiver]) -> list[Waiver]:
        seen: set[str] = set()
        for index, waiver in enumerate(waivers):
            if waiver.id in seen:  # two reasons and two expiries for one id: which one holds?
                raise FieldError((index, "id"), f"{waiver.id} is waived twice")
            seen.add(waiver.id)
        return waivers


def rank(severity: str) -> int:
    return SEVERITIES.index(severity)
