"""Specifications for bakery.evidence.freshness: when an image of unchanged inputs is no longer
fresh, against a fake Debian archive served on 127.0.0.1 (InRelease and Packages files as a
mirror lays them out)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bakery.evidence.apt import AptSource, parse_sources
from bakery.evidence.freshness import Archive, ArchiveError, available_updates, judge


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    arch: str = "amd64"


class FakeArchive:
    """A Debian mirror's layout on 127.0.0.1: dists/SUITE/InRelease naming each Packages.gz by sha256."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        archive = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                archive.requests.append(self.path)
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.uri = f"http://127.0.0.1:{self.server.server_port}/debian"

    def publish(self, suite: str, packages: dict[str, str], component: str = "main", corrupt: bool = False,
                root: str = "debian") -> None:
        dists = self.root / root / "dists" / suite
        index = f"{component}/binary-amd64/Packages.gz"
        body = "".join(f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n\n"
                       for name, version in packages.items())
        data = gzip.compress(body.encode(), mtime=0)
        (dists / index).parent.mkdir(parents=True, exist_ok=True)
        (dists / index).write_bytes(data)
        listed = hashlib.sha256(b"not this" if corrupt else data).hexdigest()
        (dists / "InRelease").write_text(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
            f"Origin: Debian\nSuite: {suite}\nCodename: {suite}\nArchitectures: amd64\nComponents: {component}\n"
            f"SHA256:\n {listed} {len(data)} {index}\n"
            "-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEE\n-----END PGP SIGNATURE-----\n")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def archive(tmp_path):
    fake = FakeArchive(tmp_path / "mirror")
    yield fake
    fake.close()


NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
INSTALLED = [Pkg("nginx", "1.22.1-9"), Pkg("openssl", "3.0.15-1~deb12u1"), Pkg("tzdata", "2024a-0+deb12u1"),
             Pkg("base-files", "12.4+deb12u8")]


def test_apt_sources_are_read_in_both_forms():
    deb822 = ("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
              "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
              "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
              "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n"
              "Types: deb\nURIs: http://example.com/off\nSuites: x\nComponents: main\nEnabled: no\n")
    assert parse_sources(deb822) == [
        AptSource("http://deb.debian.org/debian", "bookworm", ("main",)),
        AptSource("http://deb.debian.org/debian", "bookworm-updates", ("main",)),
        AptSource("http://deb.debian.org/debian-security", "bookworm-security", ("main",))]
    one_line = ("# a comment\ndeb [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian bookworm main contrib\n"
                "deb-src http://deb.debian.org/debian bookworm main\ndeb http://security.debian.org bookworm-security main\n")
    sources = parse_sources(one_line)
    assert sources == [AptSource("http://deb.debian.org/debian", "bookworm", ("main", "contrib")),
                       AptSource("http://security.debian.org", "bookworm-security", ("main",))]
    assert [s.security for s in sources] == [False, True]


def test_an_archive_offering_a_newer_version_of_an_installed_package_names_it(archive, tmp_path):
    archive.publish("bookworm", {"nginx": "1.22.1-9+deb12u1", "openssl": "3.0.15-1~deb12u1", "tzdata": "2024a-0+deb12u1",
                                 "base-files": "12.4+deb12u8", "not-installed": "9.9"})
    found, warnings = available_updates(INSTALLED, [AptSource(archive.uri, "bookworm", ("main",))],
                                        Archive(tmp_path / "cache"))
    assert [u.line() for u in found] == ["nginx 1.22.1-9 -> 1.22.1-9+deb12u1"] and warnings == []


def test_debian_version_order_decides_not_the_text(archive, tmp_path):
    """`1:1.0-1` (an epoch) is newer than `2.0-1`; `2.0~rc1-1` (a tilde) is older than `2.0-1`: a
    text comparison gets both wrong."""
    archive.publish("bookworm", {"epoch": "2.0-1", "tilde": "2.0-1"})
    installed = [Pkg("epoch", "1:1.0-1"), Pkg("tilde", "2.0~rc1-1")]
    found, _ = available_updates(installed, [AptSource(archive.uri, "bookworm", ("main",))], Archive(tmp_path / "c"))
    assert [u.line() for u in found] == ["tilde 2.0~rc1-1 -> 2.0-1"]


def test_indexes_are_cached_by_the_inrelease_digest(archive, tmp_path):
    archive.publish("bookworm", {"nginx": "1.22.1-9"})
    source, cache = AptSource(archive.uri, "bookworm", ("main",)), Archive(tmp_path / "cache")
    assert cache.offers(source, "amd64") == {"nginx": "1.22.1-9"}
    assert cache.offers(source, "amd64") == {"nginx": "1.22.1-9"}
    assert [r.rsplit("/", 1)[-1] for r in archive.requests] == ["InRelease", "Packages.gz", "InRelease"]
    archive.publish("bookworm", {"nginx": "1.22.1-9+deb12u1"})  # the mirror moved on: a new InRelease
    assert cache.offers(source, "amd64") == {"nginx": "1.22.1-9+deb12u1"}


def test_an_index_whose_digest_does_not_match_inrelease_is_refused(archive, tmp_path):
    archive.publish("bookworm", {"nginx": "1.22.1-9+deb12u1"}, corrupt=True)
    with pytest.raises(ArchiveError, match="Packages.gz: its sha256 is not the one InRelease lists"):
        Archive(tmp_path / "cache").offers(AptSource(archive.uri, "bookworm", ("main",)), "amd64")


def test_security_only_looks_at_the_security_archive(archive, tmp_path):
    archive.publish("bookworm", {"tzdata": "2025b-0+deb12u1"})
    archive.publish("bookworm-security", {"openssl": "3.0.17-1~deb12u2"})
    sources = [AptSource(archive.uri, "bookworm", ("main",)), AptSource(archive.uri, "bookworm-security", ("main",))]
    everything, _ = available_updates(INSTALLED, sources, Archive(tmp_path / "a"))
    security, _ = available_updates(INSTALLED, sources, Archive(tmp_path / "b"), security_only=True)
    assert [u.name for u in everything] == ["openssl", "tzdata"] and [u.name for u in security] == ["openssl"]


@pytest.mark.parametrize("age_days, offered, expected", [
    (7, {}, "stale: 7 days old (freshness.max_age_days: 6)"),
    (1, {"nginx": "1.22.1-9+deb12u1"}, "updates: nginx 1.22.1-9 -> 1.22.1-9+deb12u1"),
    (1, {}, None),
    (5, {"nginx": "1.22.1-9"}, None),
], ids=["older-than-the-maximum-age", "an-update-available", "fresh-nothing-offered", "fresh-same-versions"])
def test_the_rebake_verdict(archive, tmp_path, age_days, offered, expected):
    archive.publish("bookworm", offered)
    verdict = judge(NOW - timedelta(days=age_days), NOW, 6, "all", INSTALLED,
                    [AptSource(archive.uri, "bookworm", ("main",))], Archive(tmp_path / "cache"))
    assert verdict.reason == expected and verdict.warnings == []


def test_an_unreachable_archive_is_a_warning_and_age_still_decides(tmp_path):
    gone = AptSource("http://127.0.0.1:1/debian", "bookworm", ("main",))
    fresh = judge(NOW - timedelta(days=1), NOW, 6, "all", INSTALLED, [gone], Archive(tmp_path / "cache"))
    assert fresh.reason is None and len(fresh.warnings) == 1
    assert fresh.warnings[0].startswith("http://127.0.0.1:1/debian bookworm: cannot read the archive (")
    stale = judge(NOW - timedelta(days=9), NOW, 6, "all", INSTALLED, [gone], Archive(tmp_path / "cache"))
    assert stale.reason == "stale: 9 days old (freshness.max_age_days: 6)"


def test_without_an_sbom_or_with_updates_off_only_age_decides(archive, tmp_path):
    archive.publish("bookworm", {"nginx": "1.22.1-9+deb12u1"})
    source = [AptSource(archive.uri, "bookworm", ("main",))]
    off = judge(NOW - timedelta(days=1), NOW, 6, "none", INSTALLED, source, Archive(tmp_path / "c"))
    no_sbom = judge(NOW - timedelta(days=1), NOW, 6, "all", None, source, Archive(tmp_path / "c"))
    assert off.reason is None and off.warnings == [] and archive.requests == []
    assert no_sbom.reason is None and no_sbom.warnings == ["no SBOM for the newest image: available updates not checked"]


def test_the_freshness_policy_is_not_an_input_of_the_image(tmp_path):
    """A policy about when to bake again changes no image: adding one must not rebake everything."""
    from bakery.bake.inputs import Inputs
    from bakery.config.recipe import load_recipe

    (tmp_path / "web.yaml").write_text("source: {ami: ami-12345678}\nsteps: [{name: hi, shell: echo hi}]\n")
    plain = Inputs.of(load_recipe(tmp_path, "web"))
    (tmp_path / "web.yaml").write_text("source: {ami: ami-12345678}\nsteps: [{name: hi, shell: echo hi}]\n"
                                       "freshness: {max_age_days: 2, updates: security}\n")
    policed = load_recipe(tmp_path, "web")
    assert policed.freshness.max_age_days == 2 and policed.freshness.updates == "security"
    assert Inputs.of(policed).body == plain.body
