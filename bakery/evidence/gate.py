"""The vulnerability gate: an image's installed packages against an OSV feed, judged by the
recipe's policy (bakery/config/vulnerabilities.py).

Each finding is one OSV record affecting one installed binary package. Its severity is the
record's own (bakery/evidence/osv.py: the package entry's rating, e.g. Debian's urgency, else
the record's, else its newest CVSS vector); a record stating none counts as the policy's
`unknown_as`, and says so. A finding fails the gate when it is not waived and its severity is at
or above `fail_on`.

A waiver waives a record whose id or one of its aliases it names, or, for a record about several
upstream vulnerabilities (a DSA fixing five CVEs), when every one of them is waived: waiving one
CVE does not waive an advisory that also fixes four others. A waiver holds through its `expires`
day; after it, the finding counts again and is reported with the expired waiver beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Iterable

from bakery.config.vulnerabilities import SEVERITIES, VulnerabilityPolicy, Waiver, rank
from bakery.errors import StepFailed
from bakery.evidence.osv import Advisory, Feed, InstalledPackage, Match, affected_packages, debian_release

#: rows of the job summary's table, failing findings first (the manifest's JSON has them all): a
#: real image against Debian's feed has hundreds of unfixed low findings, and GitHub takes 1 MiB of
#: summary per step
SUMMARY_FAILING_ROWS = 100
SUMMARY_OTHER_ROWS = 50


@dataclass(frozen=True)
class Finding:
    id: str                         # the OSV record's id
    aliases: tuple[str, ...]        # its aliases and the upstream ids it is about
    package: str                    # the installed binary package
    source: str                     # its source package (what the record names)
    installed: str                  # the binary package's exact version
    compared: str                   # the version compared with the record (the source version)
    fixed: str | None               # the version that fixes it; None: no fix known
    severity: str                   # low, medium, high or critical (unknown_as when the record gives none)
    severity_source: str            # where the severity came from
    summary: str
    record: str                     # the feed file it came from
    waived_by: tuple[Waiver, ...] = ()
    expired_waivers: tuple[Waiver, ...] = ()
    fails: bool = False

    def to_json(self) -> dict:
        return {"id": self.id, "aliases": list(self.aliases), "package": self.package, "source": self.source,
                "installed": self.installed, "compared": self.compared, "fixed": self.fixed,
                "severity": self.severity, "severity_source": self.severity_source, "summary": self.summary,
                "record": self.record, "waived_by": [_waiver_json(w) for w in self.waived_by],
                "expired_waivers": [_waiver_json(w) for w in self.expired_waivers], "fails": self.fails}


def _waiver_json(waiver: Waiver) -> dict:
    return {"id": waiver.id, "reason": waiver.reason, "expires": waiver.expires.isoformat()}


@dataclass(frozen=True)
class GateResult:
    release: str                    # the Debian release judged ("12")
    feed: str                       # the feed's directory or zip
    records: int                    # OSV records in it
    today: date
    policy: VulnerabilityPolicy
    findings: tuple[Finding, ...]   # failing first, then by severity
    unused_waivers: tuple[Waiver, ...] = field(default=())   # in force, yet matching no finding

    @property
    def failing(self) -> list[Finding]:
        return [f for f in self.findings if f.fails]

    @property
    def failed(self) -> bool:
        return bool(self.failing)

    @property
    def expired_waivers(self) -> list[Waiver]:
        seen: dict[str, Waiver] = {}
        for finding in self.findings:
            for waiver in finding.expired_waivers:
                seen.setdefault(waiver.id, waiver)
        return list(seen.values())

    def counts(self) -> dict[str, int]:
        out = {s: sum(1 for f in self.findings if f.severity == s and not f.waived_by) for s in SEVERITIES}
        out.update(waived=sum(1 for f in self.findings if f.waived_by), failing=len(self.failing))
        return out

    def reason(self) -> str:
        """One line: why the gate failed (or that it passed)."""
        if not self.failed:
            return f"vulnerability gate passed: no finding at or above {self.policy.fail_on} that is not waived"
        shown = [f"{f.id} in {f.package} {f.installed} ({f.severity}; "
                 + (f"fixed in {f.fixed}" if f.fixed else "no fix yet") + ")" for f in self.failing[:3]]
        more = len(self.failing) - len(shown)
        return (f"vulnerability gate failed: {len(self.failing)} finding{'s' if len(self.failing) != 1 else ''} "
                f"at or above {self.policy.fail_on} not waived: {', '.join(shown)}"
                + (f" and {more} more" if more else ""))

    def to_json(self) -> dict:
        """For the manifest."""
        return {"release": self.release, "feed": self.feed, "records": self.records, "date": self.today.isoformat(),
                "policy": self.policy.model_dump(mode="json"), "failed": self.failed, "counts": self.counts(),
                "findings": [f.to_json() for f in self.findings],
                "expired_waivers": [_waiver_json(w) for w in self.expired_waivers],
                "unused_waivers": [_waiver_json(w) for w in self.unused_waivers]}

    def summary_markdown(self) -> str:
        """For the job summary ($GITHUB_STEP_SUMMARY)."""
        return summary_markdown(self.to_json())


class GateFailed(StepFailed):
    """The gate refused the image. Carries the findings (GateResult.to_json()): the rebake's job
    summary shows them for a recipe whose bake ended here, with no manifest to read them from."""

    def __init__(self, message: str, findings: dict):
        super().__init__(message)
        self.findings = findings


def summary_markdown(result: dict, title: str = "Vulnerabilities") -> str:
    """The gate's result (GateResult.to_json(), as the manifest keeps it) for a job summary:
    the verdict, the counts, failing findings first, the waivers that expired or match nothing."""
    counts, policy, findings = result["counts"], result["policy"], result["findings"]
    verdict = (f"**failed**: {counts['failing']} at or above {policy['fail_on']}, not waived" if result["failed"]
               else "passed")
    lines = [f"### {title}: {verdict}", "",
             f"Debian {result['release']}, {result['records']} OSV records (`{_cell(result['feed'])}`), "
             f"{result['date']}; fails on {policy['fail_on']}, a finding of unknown severity counts as "
             f"{policy['unknown_as']}.",
             "", " · ".join(f"{s}: {counts[s]}" for s in reversed(SEVERITIES)) + f" · waived: {counts['waived']}",
             ""]
    if findings:
        failing = [f for f in findings if f["fails"]]
        lines += ["| id | package | installed | fixed in | severity | status |", "|---|---|---|---|---|---|"]
        shown = failing[:SUMMARY_FAILING_ROWS] + [f for f in findings if not f["fails"]][:SUMMARY_OTHER_ROWS]
        for f in shown:
            ids = f["id"] + (f" ({', '.join(f['aliases'][:3])})" if f["aliases"] else "")
            pkg = f["package"] if f["package"] == f["source"] else f"{f['package']} ({f['source']})"
            lines.append("| " + " | ".join(_cell(c) for c in (
                ids, pkg, f["installed"], f["fixed"] or "no fix yet", f"{f['severity']} ({f['severity_source']})",
                _status(f))) + " |")
        if len(shown) < len(findings):
            hidden = len(findings) - len(shown)
            more_failing = max(0, len(failing) - SUMMARY_FAILING_ROWS)
            lines.append(f"\nThe manifest lists {hidden} more ({more_failing} of them failing).")
    else:
        lines.append("No installed package is affected by a record in the feed.")
    for waiver in result["expired_waivers"]:
        lines.append(f"\n- waiver of {waiver['id']} expired on {waiver['expires']}: {_cell(waiver['reason'])}")
    for waiver in result["unused_waivers"]:
        lines.append(f"\n- waiver of {waiver['id']} (until {waiver['expires']}) matches no finding: remove it?")
    return "\n".join(lines) + "\n"


def _status(f: dict) -> str:
    if f["waived_by"]:
        return "waived until " + min(w["expires"] for w in f["waived_by"]) + ": " + \
            "; ".join(w["reason"] for w in f["waived_by"])
    expired = f" (waiver expired {f['expired_waivers'][0]['expires']})" if f["expired_waivers"] else ""
    return ("**fails**" if f["fails"] else "reported") + expired


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: one line, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _covering(advisory: Advisory, by_id: dict[str, Waiver]) -> list[Waiver]:
    direct = [by_id[i] for i in sorted(advisory.ids()) if i in by_id]
    if direct:
        return direct[:1]
    upstream = sorted({u.upper() for u in advisory.upstream})
    if upstream and all(u in by_id for u in upstream):
        return [by_id[u] for u in upstream]
    return []


def gate(packages: Iterable[InstalledPackage], feed: Feed, policy: VulnerabilityPolicy | None, today: date, *,
         release: str) -> GateResult:
    """Judge the installed packages of a Debian `release` image ("12", "bookworm") against the feed."""
    policy = policy or VulnerabilityPolicy()
    release = debian_release(release)
    everyone = {w.id.upper(): w for w in policy.waive}
    in_force = {k: w for k, w in everyone.items() if not w.expired(today)}
    matched_ids: set[str] = set()

    # one finding per record and binary package: a record may name the package for "Debian" and
    # for "Debian:12"; the release's own entry speaks for it
    best: dict[tuple[str, str], Match] = {}
    for match in affected_packages(packages, feed, release):
        key = (match.entry.advisory.id, match.package.name)
        if key not in best or (best[key].entry.release is None and match.entry.release is not None):
            best[key] = match

    findings = []
    for match in best.values():
        advisory = match.entry.advisory
        matched_ids |= advisory.ids() | {u.upper() for u in advisory.upstream}
        rated = match.severity
        severity, source = rated if rated else (policy.unknown_as, f"unknown, counted as {policy.unknown_as}")
        waived = _covering(advisory, in_force)
        expired = [w for w in _covering(advisory, everyone) if w.expired(today)] if not waived else []
        findings.append(Finding(
            id=advisory.id, aliases=tuple(dict.fromkeys(a for a in (*advisory.aliases, *advisory.upstream)
                                                        if a != advisory.id)),
            package=match.package.name, source=match.package.source or match.package.name,
            installed=match.package.version, compared=match.compared, fixed=match.fixed, severity=severity,
            severity_source=source, summary=advisory.summary, record=advisory.where, waived_by=tuple(waived),
            expired_waivers=tuple(expired), fails=not waived and rank(severity) >= rank(policy.fail_on)))
    findings.sort(key=lambda f: (not f.fails, -rank(f.severity), f.id, f.package))
    unused = tuple(w for k, w in in_force.items() if k not in matched_ids)
    return GateResult(release=release, feed=feed.source, records=feed.records, today=today, policy=policy,
                      findings=tuple(findings), unused_waivers=unused)
