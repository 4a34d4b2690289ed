"""The vulnerability gate as a specification: which installed Debian packages an OSV feed says are
affected (dpkg's version order, source packages, releases), how the recipe's policy judges them
(severity, unknown severity, waivers and their expiry), and every way a feed or a policy is refused
in one line.

The feed is tests/fixtures/osv/: records in the shape of OSV's Debian export, read as a directory
and as a zip built from it.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import date
from pathlib import Path

import pytest

from bakery.bake.inputs import Inputs, inputs_hash
from bakery.config.recipe import load_recipe
from bakery.config.vulnerabilities import VulnerabilityPolicy
from bakery.errors import ConfigError
from bakery.evidence.gate import gate
from bakery.evidence.osv import DebPackage, affected_packages, debian_release, load_feed
from tests.support import write_recipe

FIXTURE = Path(__file__).parent / "fixtures" / "osv"
TODAY = date(2026, 3, 1)

# A bookworm image: some packages the fixture feed knows about, at vulnerable and fixed versions.
IMAGE = [
    DebPackage("libssl3", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2"),      # DEBIAN-CVE-2025-1006, high
    DebPackage("openssl", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2"),
    DebPackage("curl", "7.88.1-10+deb12u5", "curl", "7.88.1-10+deb12u5"),          # DSA-5999-1, CVSS 7.5
    DebPackage("libcurl4", "7.88.1-10+deb12u5", "curl", "7.88.1-10+deb12u5"),
    DebPackage("bash", "5.2.15-2+b2", "bash", "5.2.15-2"),                         # unimportant, no fix
    DebPackage("libtilde1", "2.0~rc1-1", "libtilde", "2.0~rc1-1"),                 # unknown severity
    DebPackage("libepoch1", "1:1.10-1", "libepoch", "1:1.10-1"),                   # fixed (1:1.3-1)
    DebPackage("liblast", "1.4-2+deb12u1"),                                        # after last_affected
    DebPackage("liboldrel1", "1.0-1", "liboldrel", "1.0-1"),                       # a bullseye-only record
    DebPackage("python3-requests", "2.28.1+dfsg-1", "requests", "2.28.1+dfsg-1"),  # PyPI range must not apply
    DebPackage("libwithdrawn", "1.0-1"),                                           # a withdrawn record
]


@pytest.fixture(scope="module")
def feed():
    return load_feed(FIXTURE)


def zipped(tmp_path: Path, members: dict[str, bytes] | None = None, name: str = "all.zip") -> Path:
    """The fixture feed as OSV publishes it (one zip of JSON records), plus or instead of `members`."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if members is None:
            for record in sorted(FIXTURE.glob("*.json")):
                archive.write(record, record.name)
        else:
            for member, data in members.items():
                archive.writestr(member, data)
    return path


def test_a_zip_feed_read_again_comes_from_its_index_and_judges_the_same(feed, tmp_path, monkeypatch):
    from bakery.evidence import osv

    archive, cache = zipped(tmp_path), tmp_path / "cache"
    first = gate(IMAGE, load_feed(archive, cache), None, TODAY, release="12").to_json()
    (index,) = cache.glob("osv-*.index")

    def unread(path):
        raise AssertionError("the zip was read again")
    monkeypatch.setattr(osv, "_zip", unread)
    again = load_feed(archive, cache)
    assert (again.records, again.withdrawn) == (11, 1)
    assert gate(IMAGE, again, None, TODAY, release="12").to_json() == first and first["findings"]

    index.write_bytes(b"not an index")  # damaged: read the zip again, and mend the index
    monkeypatch.undo()
    assert gate(IMAGE, load_feed(archive, cache), None, TODAY, release="12").to_json() == first
    assert index.read_bytes() != b"not an index"


def test_a_new_download_of_the_feed_is_read_whole(feed, tmp_path):
    cache = tmp_path / "cache"
    load_feed(zipped(tmp_path), cache)
    record = {**json.loads((FIXTURE / "DSA-5999-1.json").read_text()), "id": "DSA-6000-1"}
    (tmp_path / "new").mkdir()
    newer = zipped(tmp_path / "new", {**{r.name: r.read_bytes() for r in FIXTURE.glob("*.json")},
                                      "DSA-6000-1.json": json.dumps(record)})
    assert load_feed(newer, cache).records == 12 and len(list(cache.glob("osv-*.index"))) == 2


def findings(result) -> dict[tuple[str, str], object]:
    return {(f.id, f.package): f for f in result.findings}


# ---- which packages are affected -----------------------------------------------------------------

def test_the_feed_reads_the_same_as_a_directory_and_as_a_zip(feed, tmp_path):
    from_zip = load_feed(zipped(tmp_path))
    assert from_zip.records == feed.records == 11 and feed.withdrawn == 1
    as_dir = gate(IMAGE, feed, None, TODAY, release="12").to_json()
    as_zip = gate(IMAGE, from_zip, None, TODAY, release="12").to_json()
    strip = lambda doc: [{k: v for k, v in f.items() if k != "record"} for f in doc["findings"]]  # noqa: E731
    assert strip(as_dir) == strip(as_zip) and as_zip["findings"]
    assert {f["record"] for f in as_zip["findings"]} >= {f"{tmp_path / 'all.zip'}:DSA-5999-1.json"}


def test_a_bookworm_image_is_affected_exactly_where_the_feed_says(feed):
    result = gate(IMAGE, feed, None, TODAY, release="12")
    assert sorted(findings(result)) == [
        ("DEBIAN-CVE-2025-1002", "libtilde1"),
        ("DEBIAN-CVE-2025-1006", "libssl3"), ("DEBIAN-CVE-2025-1006", "openssl"),
        ("DEBIAN-CVE-2025-1010", "bash"),
        ("DSA-5999-1", "curl"), ("DSA-5999-1", "libcurl4"),
    ]
    ssl = findings(result)["DEBIAN-CVE-2025-1006", "libssl3"]
    assert (ssl.source, ssl.installed, ssl.fixed, ssl.severity) == ("openssl", "3.0.11-1~deb12u2", "3.0.15-1~deb12u1",
                                                                     "high")
    assert findings(result)["DEBIAN-CVE-2025-1010", "bash"].fixed is None  # no fix yet


@pytest.mark.parametrize("source, installed, affected, fixed", [
    # epochs: 1:anything is newer than every version without one
    ("libepoch", "9.0-1", True, "1:1.3-1"),        # string order: "9.0-1" > "1:1.3-1", so "fixed"; dpkg: epoch 0 < 1
    ("libepoch", "1:1.2-1", True, "1:1.3-1"),
    ("libepoch", "1:1.3-1", False, None),
    ("libepoch", "1:1.10-1", False, None),          # string order: "1:1.10-1" < "1:1.3-1"; dpkg: 10 > 3
    ("libolder", "1:1.2-1", False, None),           # fixed in 1.3-1, before the epoch: 1:1.2-1 is newer
    ("libolder", "1.2-1", True, "1.3-1"),
    # tildes sort before everything, even the end of the string
    ("libtilde", "2.0~rc1-1", True, "2.0-1"),       # string order: "~" > "-", so "fixed"; dpkg: 2.0~rc1 < 2.0
    ("libtilde", "2.0-1", False, None),
    ("libtilde", "2.0-1+deb12u1", False, None),
    ("libtilde", "1.9-10", True, "2.0-1"),          # revisions compare as numbers too
    # last_affected: through that version, not after it
    ("liblast", "1.0~beta-1", False, None),         # before introduced 1.0-1
    ("liblast", "1.0-1", True, None),
    ("liblast", "1.4-2", True, None),
    ("liblast", "1.4-2+deb12u1", False, None),
    ("liblast", "1.5-1", False, None),
    # an explicit versions[] list and nothing else
    ("libversions", "3.1-2", True, None),
    ("libversions", "0:3.1-1", True, None),         # epoch 0 is no epoch
    ("libversions", "3.1-3", False, None),
])
def test_versions_compare_in_dpkg_order_never_as_strings(feed, source, installed, affected, fixed):
    matches = affected_packages([DebPackage(f"{source}-bin", installed, source, installed)], feed, "12")
    assert bool(matches) is affected
    if affected:
        assert [m.fixed for m in matches] == [fixed] and matches[0].compared == installed


def test_the_cases_above_are_ones_string_comparison_gets_wrong():
    """The parametrized epoch and tilde cases are not decided the same by comparing strings."""
    assert not "9.0-1" < "1:1.3-1" and not "2.0~rc1-1" < "2.0-1" and "1:1.10-1" < "1:1.3-1"


def test_records_match_the_source_package_and_its_version(feed):
    # the binary's own version (a binNMU, +b1) is compared only when the source version is unknown
    by_source = affected_packages([DebPackage("libtilde-tools", "2.0~rc1-1+b1", "libtilde", "2.0~rc1-1")], feed, "12")
    assert [m.compared for m in by_source] == ["2.0~rc1-1"]
    fallback = affected_packages([DebPackage("libtilde-tools", "2.0~rc1-1+b1", "libtilde", None)], feed, "12")
    assert [m.compared for m in fallback] == ["2.0~rc1-1+b1"]
    # a binary named like a source package but built from another is not that source's
    assert not affected_packages([DebPackage("curl", "7.0-1", "not-curl", "7.0-1")], feed, "12")


def test_a_record_for_another_release_does_not_match(feed):
    old = DebPackage("liboldrel1", "1.0-1", "liboldrel", "1.0-1")
    assert not affected_packages([old], feed, "12")
    assert [m.entry.advisory.id for m in affected_packages([old], feed, "bullseye")] == ["DEBIAN-CVE-2025-1004"]
    # one record, two releases: each release's own range decides
    ssl11 = affected_packages([DebPackage("libssl1.1", "1.1.1w-0+deb11u1", "openssl", "1.1.1w-0+deb11u1")], feed, "11")
    assert [m.fixed for m in ssl11] == ["1.1.1w-0+deb11u2"]


def test_withdrawn_records_and_other_ecosystems_never_match(feed):
    assert not affected_packages([DebPackage("libwithdrawn", "1.0-1")], feed, "12")
    # PyPI's range (fixed in 2.32.0) would call 2.28.1 vulnerable; Debian's (plain "Debian": any release) does not
    assert not affected_packages([DebPackage("python3-requests", "2.28.1+dfsg-1", "requests", None)], feed, "12")
    hit = affected_packages([DebPackage("python3-requests", "2.25.1+dfsg-2", "requests", None)], feed, "12")
    assert [(m.entry.release, m.fixed) for m in hit] == [(None, "2.28.1+dfsg-1")]


@pytest.mark.parametrize("given, release", [("12", "12"), ("12.5", "12"), ("bookworm", "12"), ("debian-12", "12"),
                                            ("Debian:11", "11"), ("trixie", "13")])
def test_the_release_is_taken_as_os_release_or_a_purl_write_it(given, release):
    assert debian_release(given) == release


def test_an_unknown_release_or_a_bad_installed_version_is_refused(feed):
    with pytest.raises(ConfigError, match="Debian release 'sid' is not one"):
        debian_release("sid")
    with pytest.raises(ConfigError, match="installed package curl: version '7.0 beta' is not a Debian version"):
        affected_packages([DebPackage("curl", "7.0 beta")], feed, "12")


# ---- severity and policy ----------------------------------------------------------------------------

def test_severity_comes_from_the_record_and_an_unknown_one_counts_as_the_policy_says(feed):
    result = gate(IMAGE, feed, None, TODAY, release="12")
    by = findings(result)
    assert (by["DEBIAN-CVE-2025-1006", "libssl3"].severity_source) == "affected[0].ecosystem_specific.urgency high"
    assert (by["DSA-5999-1", "curl"].severity, by["DSA-5999-1", "curl"].severity_source) == \
        ("high", "CVSS_V3 CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H")
    assert by["DEBIAN-CVE-2025-1010", "bash"].severity == "low"  # urgency "unimportant"
    tilde = by["DEBIAN-CVE-2025-1002", "libtilde1"]             # urgency "not yet assigned"
    assert (tilde.severity, tilde.severity_source, tilde.fails) == ("medium", "unknown, counted as medium", False)

    strict = gate(IMAGE, feed, VulnerabilityPolicy(fail_on="high", unknown_as="high"), TODAY, release="12")
    assert findings(strict)["DEBIAN-CVE-2025-1002", "libtilde1"].fails


def test_a_finding_at_or_above_fail_on_fails_the_gate(feed):
    result = gate(IMAGE, feed, VulnerabilityPolicy(fail_on="high"), TODAY, release="12")
    assert result.failed
    assert sorted((f.id, f.package) for f in result.failing) == [
        ("DEBIAN-CVE-2025-1006", "libssl3"), ("DEBIAN-CVE-2025-1006", "openssl"),
        ("DSA-5999-1", "curl"), ("DSA-5999-1", "libcurl4")]
    assert result.reason().startswith("vulnerability gate failed: 4 findings at or above high not waived: "
                                      "DEBIAN-CVE-2025-1006 in libssl3 3.0.11-1~deb12u2 (high; fixed in 3.0.15-1~deb12u1)")
    assert "\n" not in result.reason()
    assert not gate(IMAGE, feed, VulnerabilityPolicy(fail_on="critical"), TODAY, release="12").failed
    low = gate(IMAGE, feed, VulnerabilityPolicy(fail_on="low"), TODAY, release="12")
    assert len(low.failing) == len(low.findings) == 6


def policy(*waivers: dict, **kw) -> VulnerabilityPolicy:
    return VulnerabilityPolicy.model_validate({"fail_on": "high", "waive": list(waivers), **kw})


def test_a_waiver_passes_the_gate_until_it_expires_then_the_gate_fails_again(feed):
    image = [p for p in IMAGE if p.source == "openssl"]
    waived = policy({"id": "CVE-2025-1006", "reason": "no untrusted certificates are verified", "expires": "2026-03-31"})

    before = gate(image, feed, waived, date(2026, 3, 31), release="12")   # the expiry day itself still holds
    assert not before.failed
    assert {f.waived_by[0].id for f in before.findings} == {"CVE-2025-1006"}
    assert "waived until 2026-03-31: no untrusted certificates are verified" in before.summary_markdown()

    after = gate(image, feed, waived, date(2026, 4, 1), release="12")
    assert after.failed and all(not f.waived_by for f in after.findings)
    assert [w.id for w in after.expired_waivers] == ["CVE-2025-1006"]
    assert "waiver of CVE-2025-1006 expired on 2026-03-31" in after.summary_markdown()
    assert after.to_json()["expired_waivers"] == [{"id": "CVE-2025-1006", "reason": "no untrusted certificates are "
                                                   "verified", "expires": "2026-03-31"}]


def test_an_advisory_about_several_cves_is_waived_only_when_all_of_them_are(feed):
    image = [p for p in IMAGE if p.source == "curl"]
    one = policy({"id": "CVE-2025-2001", "reason": "r", "expires": "2027-01-31"})
    assert gate(image, feed, one, TODAY, release="12").failed
    both = policy({"id": "CVE-2025-2001", "reason": "r", "expires": "2027-01-31"},
                  {"id": "CVE-2025-2002", "reason": "r", "expires": "2027-01-31"})
    assert not gate(image, feed, both, TODAY, release="12").failed
    by_id = policy({"id": "dsa-5999-1", "reason": "r", "expires": "2027-01-31"})  # ids compare case-insensitively
    assert not gate(image, feed, by_id, TODAY, release="12").failed


def test_a_waiver_that_matches_nothing_is_reported(feed):
    result = gate(IMAGE, feed, policy({"id": "CVE-1999-0001", "reason": "long gone", "expires": "2027-01-31"}), TODAY,
                  release="12")
    assert [w.id for w in result.unused_waivers] == ["CVE-1999-0001"]
    assert "waiver of CVE-1999-0001 (until 2027-01-31) matches no finding" in result.summary_markdown()


def test_the_summary_and_the_manifest_form(feed):
    result = gate(IMAGE, feed, policy({"id": "CVE-2025-1010", "reason": "local only | not exposed",
                                       "expires": "2027-01-31"}), TODAY, release="12")
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["failed"] is True and doc["release"] == "12" and doc["records"] == 11
    assert doc["counts"] == {"low": 0, "medium": 1, "high": 4, "critical": 0, "waived": 1, "failing": 4}
    assert doc["policy"]["waive"][0]["expires"] == "2027-01-31"
    first = doc["findings"][0]
    assert first["fails"] and set(first) >= {"id", "package", "installed", "fixed", "severity", "waived_by"}

    md = result.summary_markdown()
    assert md.startswith("### Vulnerabilities: **failed**: 4 at or above high, not waived\n")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6 and all(row.count(" | ") == 5 for row in rows)  # a | in a reason does not add a column
    assert "| DSA-5999-1 (CVE-2025-2001, CVE-2025-2002) | libcurl4 (curl) | 7.88.1-10+deb12u5 | 7.88.1-10+deb12u9 |" in md
    assert "local only \\| not exposed" in md


def test_the_summary_table_is_bounded_and_says_what_it_left_out(feed, monkeypatch):
    import bakery.evidence.gate as gate_module

    monkeypatch.setattr(gate_module, "SUMMARY_FAILING_ROWS", 2)
    monkeypatch.setattr(gate_module, "SUMMARY_OTHER_ROWS", 1)
    md = gate(IMAGE, feed, None, TODAY, release="12").summary_markdown()  # 4 failing, 2 others
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.endswith("| **fails** |") for r in rows] == [True, True, False]
    assert "The manifest lists 3 more (2 of them failing)." in md


def test_a_clean_image_passes_and_says_so(feed):
    result = gate([DebPackage("libepoch1", "1:1.10-1", "libepoch")], feed, None, TODAY, release="12")
    assert not result.failed and not result.findings
    assert "No installed package is affected" in result.summary_markdown()
    assert result.reason().startswith("vulnerability gate passed")


# ---- a feed that cannot be read ------------------------------------------------------------------------

def feed_dir(tmp_path: Path, **files: str | bytes) -> Path:
    path = tmp_path / "feed"
    shutil.copytree(FIXTURE, path)
    for name, content in files.items():
        target = path / name
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


RECORD = {"id": "DEBIAN-CVE-2025-9", "modified": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("content, problem", [
    ('{"id": "DEBIAN-CVE-2025-9", ', r"corrupt JSON: Expecting property name enclosed in double quotes at line 1"),
    (b"\xff\xfe{}", r"not UTF-8 \(byte 0\), so not an OSV record"),
    ('[{"id": "x"}]', "not an OSV record: the document is a list, not an object"),
    ('{"name": "a package.json, not a record"}', "not an OSV record: id: missing"),
    (json.dumps({"id": "x"}), "not an OSV record: modified: missing"),
    (json.dumps({**RECORD, "schema_version": "2.0.0"}), r"not an OSV record: schema_version: '2.0.0': this reader knows OSV 1.x"),
    (json.dumps({**RECORD, "affected": {"package": "curl"}}), "not an OSV record: affected: is an object, expected a list"),
    (json.dumps({**RECORD, "affected": [{"package": {"name": "curl"}}]}),
     r"not an OSV record: affected\[0\].package.ecosystem: missing"),
    (json.dumps({**RECORD, "affected": [{"package": {"name": "curl", "ecosystem": "Debian:12"},
                                         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0", "fixed": "1"}]}]}]}),
     r"not an OSV record: affected\[0\].ranges\[0\].events\[0\]: an event is one of introduced, fixed, last_affected, limit"),
    (json.dumps({**RECORD, "affected": [{"package": {"name": "curl", "ecosystem": "Debian:12"},
                                         "ranges": [{"type": "ECOSYSTEM", "events": [{"fixed": 7}]}]}]}),
     r"not an OSV record: affected\[0\].ranges\[0\].events\[0\].fixed: is int, expected a version"),
    (json.dumps({**RECORD, "severity": [{"type": "CVSS_V3"}]}), r"not an OSV record: severity\[0\]: expected an object with a type and a score"),
])
def test_a_broken_record_is_refused_naming_its_file_and_what_is_wrong(tmp_path, content, problem):
    path = feed_dir(tmp_path, **{"DEBIAN-CVE-2025-9.json": content})
    with pytest.raises(ConfigError, match=f"^{path}/DEBIAN-CVE-2025-9.json: {problem}") as exc:
        load_feed(path)
    assert "\n" not in exc.value.message
    # the same record inside a zip is named as all.zip:MEMBER
    data = content if isinstance(content, bytes) else content.encode()
    archive = zipped(tmp_path, {"DSA-5999-1.json": (FIXTURE / "DSA-5999-1.json").read_bytes(),
                                "DEBIAN-CVE-2025-9.json": data})
    with pytest.raises(ConfigError, match=f"^{archive}:DEBIAN-CVE-2025-9.json: {problem}"):
        load_feed(archive)


def test_a_feed_that_is_missing_unreadable_empty_or_not_a_zip_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path}/nowhere: vulnerability feed not found"):
        load_feed(tmp_path / "nowhere")
    (tmp_path / "all.zip").write_text("<html>503 Service Unavailable</html>")  # a download that failed
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/all.zip: not a zip file \(File is not a zip file\)"):
        load_feed(tmp_path / "all.zip")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("not a record")
    with pytest.raises(ConfigError, match=f"^{tmp_path}/empty: no OSV records"):
        load_feed(tmp_path / "empty")
    broken = feed_dir(tmp_path)
    (broken / "DSA-1-1.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(ConfigError, match=f"^{broken}/DSA-1-1.json: cannot read: No such file or directory"):
        load_feed(broken)
    (broken / "DSA-1-1.json").unlink()
    (broken / "DSA-2-1.json").mkdir()
    with pytest.raises(ConfigError, match=f"^{broken}/DSA-2-1.json: cannot read: Is a directory"):
        load_feed(broken)


def test_a_damaged_zip_member_is_refused_naming_it(tmp_path):
    archive = zipped(tmp_path, {"DSA-5999-1.json": (FIXTURE / "DSA-5999-1.json").read_bytes() * 4})
    data = bytearray(archive.read_bytes())
    start = data.index(b"DSA-5999-1.json") + len("DSA-5999-1.json") + 10  # into the compressed stream
    data[start:start + 8] = b"\x00" * 8
    archive.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"^{archive}:DSA-5999-1.json: damaged in the zip: "):
        load_feed(archive)


def test_a_version_the_feed_cannot_state_is_refused_when_it_would_decide_a_match(tmp_path):
    bad = {**RECORD, "affected": [{"package": {"name": "curl", "ecosystem": "Debian:12"},
                                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"},
                                                                                {"fixed": "7.88 .1"}]}]}]}
    path = feed_dir(tmp_path, **{"DEBIAN-CVE-2025-9.json": json.dumps(bad)})
    feed = load_feed(path)  # loads: no installed package has been compared yet
    assert not gate([DebPackage("zlib1g", "1:1.2.13.dfsg-1", "zlib")], feed, None, TODAY, release="12").findings
    with pytest.raises(ConfigError, match=rf"^{path}/DEBIAN-CVE-2025-9.json: affected\[0\].ranges\[0\].events\[1\]"
                                          r".fixed: '7.88 .1' is not a Debian version$"):
        gate([DebPackage("curl", "7.88.1-10")], feed, None, TODAY, release="12")


# ---- the policy in a recipe ------------------------------------------------------------------------------

SOURCE = "source: {ami: ami-12345678}\n"


def load(tmp_path: Path, body: str, name: str = "r"):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, name, body)
    return load_recipe(recipes, name)


def test_a_recipe_states_its_gate_policy(tmp_path):
    recipe = load(tmp_path, SOURCE + """\
vulnerabilities:
  fail_on: critical
  unknown_as: high
  waive:
    - id: cve-2025-1006
      reason: "  no untrusted certificates are verified  "
      expires: 2027-01-31
    - {id: GHSA-9WX4-H78V-VM56, reason: not reachable, expires: "2026-12-31"}
""")
    gate_policy = recipe.vulnerabilities
    assert (gate_policy.fail_on, gate_policy.unknown_as) == ("critical", "high")
    assert [(w.id, w.reason, w.expires) for w in gate_policy.waive] == [
        ("CVE-2025-1006", "no untrusted certificates are verified", date(2027, 1, 31)),
        ("GHSA-9wx4-h78v-vm56", "not reachable", date(2026, 12, 31))]
    default = load(tmp_path, SOURCE).vulnerabilities  # no section: the gate's defaults
    assert (default.fail_on, default.unknown_as, default.waive) == ("high", "medium", [])


def test_a_child_recipe_replaces_its_parents_policy_and_the_policy_is_not_in_the_inputs_hash(tmp_path):
    load(tmp_path, SOURCE + "vulnerabilities: {fail_on: low}\n", name="parent")
    assert load(tmp_path, "extends: parent\n").vulnerabilities.fail_on == "low"
    assert load(tmp_path, "extends: parent\nvulnerabilities: {fail_on: critical}\n").vulnerabilities.fail_on == "critical"
    # renewing a waiver, or tightening fail_on, judges the next bake; it does not make the image differ
    plain = inputs_hash(Inputs.of(load(tmp_path, SOURCE)), {}, "ami-1")
    gated = load(tmp_path, SOURCE + "vulnerabilities:\n  waive: [{id: CVE-2025-1234, reason: r, expires: 2027-01-31}]\n")
    assert inputs_hash(Inputs.of(gated), {}, "ami-1") == plain


@pytest.mark.parametrize("section, message", [
    ("  waive:\n    - {id: CVE-2025-1006, expires: 2027-01-31}\n",
     r"r.yaml:4: vulnerabilities.waive\[0\].reason: required field is missing"),
    ("  waive:\n    - id: CVE-2025-1006\n      reason: '   '\n      expires: 2027-01-31\n",
     r"r.yaml:5: vulnerabilities.waive\[0\].reason: a waiver needs a reason"),
    ("  waive:\n    - {id: CVE-2025-1006, reason: accepted}\n",
     r"r.yaml:4: vulnerabilities.waive\[0\].expires: required field is missing"),
    ("  waive:\n    - id: CVE-2025-1006\n      reason: accepted\n      expires: next year\n",
     r"r.yaml:6: vulnerabilities.waive\[0\].expires: Input should be a valid date"),
    ("  waive:\n    - id: CVE-2025-1006\n      reason: accepted\n      expires: 2027-02-30\n",
     r"r.yaml:6: '2027-02-30' is not a valid date: day is out of range for month$"),
    ("  waive:\n    - id: openssl-bug\n      reason: accepted\n      expires: 2027-01-31\n",
     r"r.yaml:4: vulnerabilities.waive\[0\].id: 'openssl-bug' is not a vulnerability id \(CVE-YYYY-NNNN"),
    ("  waive:\n    - {id: CVE-25-1, reason: typo, expires: 2027-01-31}\n",
     r"r.yaml:4: vulnerabilities.waive\[0\].id: 'CVE-25-1' is not a vulnerability id"),
    ("  waive:\n    - {id: CVE-2025-1006, reason: a, expires: 2027-01-31}\n"
     "    - {id: cve-2025-1006, reason: b, expires: 2028-01-31}\n",
     r"r.yaml:5: vulnerabilities.waive\[1\].id: CVE-2025-1006 is waived twice"),
    ("  waive:\n    - {id: CVE-2025-1006, reason: a, expires: 2027-01-31, until: forever}\n",
     r"r.yaml:4: vulnerabilities.waive\[0\].until: unknown key"),
    ("  fail_on: severe\n", r"r.yaml:3: vulnerabilities.fail_on: Input should be 'low', 'medium', 'high' or 'critical'"),
    ("  unknown_as: 7\n", r"r.yaml:3: vulnerabilities.unknown_as: Input should be 'low', 'medium', 'high' or 'critical'"),
    ("  waive: CVE-2025-1006\n", r"r.yaml:3: vulnerabilities.waive: Input should be a valid list"),
])
def test_a_malformed_policy_is_refused_by_the_recipe_loader_naming_file_line_and_field(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load(tmp_path, SOURCE + "vulnerabilities:\n" + section)
    assert "\n" not in exc.value.message and exc.value.exit_code == 2
