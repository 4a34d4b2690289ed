"""The image's SBOM (bakery/evidence/sbom.py): its model, the CycloneDX 1.5 document it becomes and
is read back from, the purls in it, and how the builder's answer to the collection command becomes
the model. The command itself runs on a real builder in tests/test_bake_steps.py (CollectSbom) and
in a local-cloud sandbox in tests/local/test_sbom_local.py."""

from __future__ import annotations

import json
import platform
import re
import subprocess

import pytest

from bakery.errors import ConfigError, RemoteError
from bakery.evidence.sbom import (
    Image, Package, PythonPackage, Sbom, UploadedFile, collection_script, digest, parse_collection, read_sbom,
    sbom_path, uploaded_paths,
)

IMAGE = Image(recipe="web", build_id="b-20260101000000-0a1b2c", inputs_hash="sha256:" + "1" * 64,
              source_ami="ami-0123456789abcdef0", os_id="debian", os_version="12", os_codename="bookworm",
              os_name="Debian GNU/Linux 12 (bookworm)", arch="amd64")
ATTR = Package("libattr1", "1:2.5.1-4+b1", "amd64", "attr", "1:2.5.1-4")
SAMPLE = Sbom(
    IMAGE,
    packages=[ATTR, Package("nginx", "1.22.1-9+deb12u1", "amd64", "nginx", "1.22.1-9+deb12u1"),
              Package("tzdata", "2025b-0+deb12u1", "all", "tzdata", "2025b-0+deb12u1")],
    python=[PythonPackage("PyYAML", "6.0.1", "/usr/lib/python3/dist-packages"),
            PythonPackage("requests", "2.31.0", "/opt/app/venv/lib/python3.11/site-packages", "/opt/app/venv")],
    files=[UploadedFile("/var/www/html/index.html", "a" * 64, "0644", "root:root"),
           UploadedFile("/var/www/html/css/site.css", "b" * 64, None, None)])


def document(sbom: Sbom = SAMPLE) -> dict:
    return json.loads(sbom.to_cyclonedx())


def components(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["components"]}


# ---- the model and its purls -------------------------------------------------------------------

def test_a_deb_purl_carries_the_exact_version_its_architecture_and_the_distro_from_os_release():
    # purl-spec's deb type: the version encoded (+ as %2B, the epoch's colon kept), arch and distro qualifiers
    assert ATTR.purl(IMAGE) == "pkg:deb/debian/libattr1@1:2.5.1-4%2Bb1?arch=amd64&distro=debian-12"
    assert ATTR.source_purl(IMAGE) == "pkg:deb/debian/attr@1:2.5.1-4?arch=source&distro=debian-12"


def test_the_distro_qualifier_is_id_and_version_id_or_the_codename_where_there_is_no_version_id():
    testing = Image(**{**IMAGE.__dict__, "os_version": "", "os_codename": "trixie"})
    ubuntu = Image(**{**IMAGE.__dict__, "os_id": "ubuntu", "os_version": "22.04", "os_codename": "jammy"})
    assert (IMAGE.distro, testing.distro, ubuntu.distro) == ("debian-12", "debian-trixie", "ubuntu-22.04")
    assert Package("curl", "7.88.1-10", "amd64", "curl", "7.88.1-10").purl(ubuntu).startswith("pkg:deb/ubuntu/curl@")


def test_a_python_purl_is_pypi_with_the_name_as_pypi_normalises_it():
    assert PythonPackage("PyYAML", "6.0.1", "/x/site-packages").purl == "pkg:pypi/pyyaml@6.0.1"
    assert PythonPackage("Foo_Bar.baz", "1.0", "/x").key == PythonPackage("foo-bar-baz", "1.0", "/y").key


# ---- CycloneDX 1.5 -----------------------------------------------------------------------------

def test_the_document_is_cyclonedx_1_5_describing_the_image_by_recipe_build_and_os():
    doc = document()
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.5")
    root = doc["metadata"]["component"]
    assert (root["type"], root["name"], root["version"], root["description"]) == (
        "operating-system", "web", IMAGE.build_id, "Debian GNU/Linux 12 (bookworm)")
    props = {p["name"]: p["value"] for p in root["properties"]}
    assert props == {"bakery.recipe": "web", "bakery.build-id": IMAGE.build_id, "bakery.inputs-hash": IMAGE.inputs_hash,
                     "bakery.source-ami": IMAGE.source_ami, "bakery.os.id": "debian", "bakery.os.version-id": "12",
                     "bakery.os.codename": "bookworm", "bakery.architecture": "amd64"}
    assert [t["name"] for t in doc["metadata"]["tools"]["components"]] == ["bakery"]
    # the image holds every component: the dependency graph is complete
    held = next(d for d in doc["dependencies"] if d["ref"] == "image")["dependsOn"]
    assert len(held) == len(doc["components"]) == 7


def test_a_deb_component_has_its_purl_and_its_source_package_as_pedigree():
    attr = components(document())["libattr1"]
    assert (attr["type"], attr["version"], attr["purl"]) == ("library", "1:2.5.1-4+b1", ATTR.purl(IMAGE))
    (source,) = attr["pedigree"]["ancestors"]
    assert (source["name"], source["version"], source["purl"]) == ("attr", "1:2.5.1-4", ATTR.source_purl(IMAGE))


def test_a_python_component_says_where_it_is_installed_and_in_which_virtualenv():
    requests = components(document())["requests"]
    assert requests["purl"] == "pkg:pypi/requests@2.31.0"
    assert requests["evidence"]["occurrences"] == [{"location": "/opt/app/venv/lib/python3.11/site-packages"}]
    assert requests["properties"] == [{"name": "bakery.python.environment", "value": "/opt/app/venv"}]


def test_an_uploaded_file_is_a_file_component_with_its_sha256_mode_and_owner():
    index = components(document())["/var/www/html/index.html"]
    assert index["type"] == "file" and index["hashes"] == [{"alg": "SHA-256", "content": "a" * 64}]
    assert {p["name"]: p["value"] for p in index["properties"]} == {"bakery.file.mode": "0644",
                                                                    "bakery.file.owner": "root:root"}
    assert "properties" not in components(document())["/var/www/html/css/site.css"]  # none known: none written


def test_write_then_read_gives_back_the_same_sbom_and_the_digest_is_the_files(tmp_path):
    path = sbom_path(tmp_path / "manifests", "web", IMAGE.build_id)
    assert path == tmp_path / "manifests" / f"web-{IMAGE.build_id}.sbom.cdx.json"
    written = SAMPLE.write(path)
    assert written == digest(path.read_bytes()) and written.startswith("sha256:")
    back = read_sbom(path)
    assert back.image == SAMPLE.image
    assert back.packages == sorted(SAMPLE.packages, key=lambda p: (p.name, p.arch))
    assert back.python == SAMPLE.python and back.files == sorted(SAMPLE.files, key=lambda f: f.path)


def test_an_empty_sbom_is_a_valid_document_too(tmp_path):
    path = tmp_path / "empty.cdx.json"
    Sbom(IMAGE).write(path)
    assert read_sbom(path) == Sbom(IMAGE)


def test_an_sbom_that_would_not_validate_is_a_bug_and_is_never_written(tmp_path):
    broken = Sbom(IMAGE, files=[UploadedFile("/etc/motd", "not a sha256")])  # the schema wants 64 hex digits
    with pytest.raises(RuntimeError, match=r"bakery wrote an invalid CycloneDX 1.5 SBOM: "
                                           r"components\[0\]\.hashes\[0\]\.content: 'not a sha256' does not match"):
        broken.write(tmp_path / "bad.cdx.json")
    assert list(tmp_path.iterdir()) == []


def library_verdict(doc: dict):
    """What cyclonedx-python-lib's own strict validator says of a document (None: valid)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    return JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(doc))


BREAKAGES = {
    "unknown-type": lambda doc: doc["components"][0].update(type="gadget"),
    "unknown-field": lambda doc: doc["components"][1].update(colour="teal"),
    "bad-digest": lambda doc: doc["components"][-1]["hashes"][0].update(content="abc"),
    "bad-timestamp": lambda doc: doc["metadata"].update(timestamp="yesterday"),
    "duplicate-component": lambda doc: doc["components"].append(dict(doc["components"][2])),
    "duplicate-dependency": lambda doc: doc["dependencies"][0]["dependsOn"].append(doc["components"][0]["bom-ref"]),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_schema_check_refuses_what_the_librarys_own_validator_refuses(tmp_path, breakage):
    doc = document()
    assert library_verdict(doc) is None
    BREAKAGES[breakage](doc)
    assert library_verdict(doc) is not None
    path = tmp_path / "broken.cdx.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"not a valid CycloneDX 1.5 document: "):
        read_sbom(path)


def test_a_repeated_component_is_named_by_its_position(tmp_path):
    doc = document()
    doc["components"].append(dict(doc["components"][2]))
    path = tmp_path / "x.cdx.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r": components: item 7 repeats item 2 \(the items must be unique\)$"):
        read_sbom(path)


def test_writing_and_reading_take_time_linear_in_the_number_of_packages(tmp_path):
    """The library's writer and reader and jsonschema's uniqueItems compare every component with
    every other one (quadratic: seconds for the thousands of packages of a CI runner or a fat image)."""
    import time

    def round_trip(n: int) -> float:
        sbom = Sbom(IMAGE, sorted((Package(f"p{i:05}", f"1:{i}.0-1", "amd64", f"s{i}", f"1:{i}.0-1")
                                   for i in range(n)), key=lambda p: p.name))
        # CPU time, not the wall clock: the other test workers' load must not count as this code's
        started = time.process_time()
        sbom.write(tmp_path / f"{n}.cdx.json")
        assert read_sbom(tmp_path / f"{n}.cdx.json") == sbom
        return time.process_time() - started

    round_trip(100)  # the validator is built once
    runs = [(round_trip(500), round_trip(4000)) for _ in range(3)]  # side by side, so both meet the same machine
    small, large = min(s for s, _ in runs), min(lg for _, lg in runs)
    assert large < 16 * small, (small, large)  # 8 times the packages: linear is ~8 times, quadratic 64


@pytest.mark.parametrize("edit, message", [
    (lambda doc: doc["components"][0].update(type="gadget"), r"components\[0\]\.type: 'gadget' is not one of"),
    (lambda doc: doc.update(specVersion="1.4"), r"specVersion: expected CycloneDX 1.5, found '1.4'"),
    (lambda doc: doc["metadata"]["component"].pop("properties"), r"metadata.component: no bakery.build-id property"),
    (lambda doc: doc["components"][0].update(purl="not a purl"),
     r"components\[0\]\.purl: purl is missing the required "),
], ids=["schema", "spec-version", "not-bakerys", "bad-purl"])
def test_reading_a_document_that_is_not_a_valid_bakery_sbom_names_the_file_and_the_field(tmp_path, edit, message):
    doc = document()
    edit(doc)
    path = tmp_path / "x.sbom.cdx.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: .*{message}"):
        read_sbom(path)


def test_reading_a_file_that_is_not_json_or_not_there_is_one_line(tmp_path):
    (tmp_path / "x.json").write_text("{half")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}/x.json: not JSON \("):
        read_sbom(tmp_path / "x.json")
    with pytest.raises(ConfigError, match=r"missing.json: cannot read the SBOM \(No such file or directory\)$"):
        read_sbom(tmp_path / "missing.json")


# ---- what the uploads brought ------------------------------------------------------------------

def test_uploaded_paths_are_the_files_each_upload_brings_at_their_dest_each_once(tmp_path):
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "empty").mkdir()
    (site / "index.html").write_text("x")
    (site / "css/a.css").write_text("x")
    (site / "link").symlink_to("index.html")
    motd = tmp_path / "motd"
    motd.write_text("x")
    uploads = [(site, "/var/www/html"), (motd, "/etc/motd"), (site, "/var/www/html/")]  # the tree twice
    # directories and symlinks carry no content to digest; the second upload of the tree adds nothing
    assert uploaded_paths(uploads) == ["/var/www/html/css/a.css", "/var/www/html/index.html", "/etc/motd"]


# ---- the builder's answer ----------------------------------------------------------------------

ANSWER = [
    "os\tdebian\t12\tbookworm\tDebian GNU/Linux 12 (bookworm)",
    "arch\tamd64",
    "deb\tinstalled\tlibattr1\t1:2.5.1-4+b1\tamd64\tattr\t1:2.5.1-4",
    "deb\tinstalled\tdpkg\t1.21.22\tamd64\tdpkg\t1.21.22",
    "deb\tconfig-files\tnginx-old\t1.0\tamd64\tnginx\t1.0",   # removed, only its conffiles left
    "venv\t/opt/app/venv",
    "py\trequests\t2.31.0\t/opt/app/venv/lib/python3.11/site-packages/requests-2.31.0.dist-info/METADATA",
    "py\tPyYAML\t6.0.1\t/usr/lib/python3/dist-packages/PyYAML-6.0.1.egg-info",
    "py\tPyYAML\t6.0.1\t/usr/lib/python3/dist-packages/PyYAML-6.0.1.dist-info/METADATA",  # Debian ships both
    "py\tzipp\t3.19.2\t/usr/lib/python3/dist-packages/setuptools/_vendor/zipp-3.19.2.dist-info/METADATA",
    "up\t0",
    "up\t2",
    "sha\t" + "a" * 64,
    "sha\t" + "c" * 64,
    "stat\t644\troot:root",
    "stat\t4755\troot:staff",
    "warning\tfind: '/srv/gone': No such file or directory",
    "end",
]
FILES = ["/var/www/html/index.html", "/var/www/html/removed-by-a-step.txt", "/usr/local/bin/tool"]


def parse(lines: list[str], files: list[str] = FILES):
    return parse_collection(lines, files, recipe="web", build_id=IMAGE.build_id, inputs_hash=IMAGE.inputs_hash,
                            source_ami=IMAGE.source_ami, where="builder i-0abc")


def test_the_builders_answer_becomes_the_sbom():
    found = parse(ANSWER)
    sbom = found.sbom
    assert sbom.image == IMAGE
    # installed packages only, source and source version as dpkg reported them
    assert sbom.packages == [Package("dpkg", "1.21.22", "amd64", "dpkg", "1.21.22"), ATTR]
    # a distribution vendored inside another package is not installed; one with two metadata files is one
    assert sbom.python == [PythonPackage("PyYAML", "6.0.1", "/usr/lib/python3/dist-packages"),
                           PythonPackage("requests", "2.31.0", "/opt/app/venv/lib/python3.11/site-packages",
                                         "/opt/app/venv")]
    # the uploaded files still there, in the answer's order: index 1 was removed by a later step
    assert sbom.files == [UploadedFile("/usr/local/bin/tool", "c" * 64, "4755", "root:staff"),
                          UploadedFile("/var/www/html/index.html", "a" * 64, "0644", "root:root")]
    assert found.warnings == ["find: '/srv/gone': No such file or directory"]


@pytest.mark.parametrize("lines, message", [
    (ANSWER[:-1], r"SBOM collection ended early \(its last line: \"warning\\tfind: .*\"\)"),
    ([], r"SBOM collection ended early \(its last line: 'none'\)"),
    ([*ANSWER[:-1], "error\tdpkg-query: error: parsing file '/var/lib/dpkg/status'", "error\tmore", "end"],
     r"SBOM collection failed: dpkg-query: error: parsing file '/var/lib/dpkg/status' \(and 1 more\)$"),
    ([line for line in ANSWER if not line.startswith("stat")],
     r"SBOM collection: 2 uploaded file\(s\) found but 2 checksum\(s\) and 0 stat line\(s\) came back"),
], ids=["no-end", "nothing", "errors", "short"])
def test_an_answer_that_is_cut_short_or_reports_errors_fails_the_collection(lines, message):
    with pytest.raises(RemoteError, match=rf"^builder i-0abc: {message}"):
        parse(lines)


def test_the_collection_command_runs_under_sh_and_answers_for_this_machine(tmp_path):
    """The command as the builder runs it (sh, as root), here: this machine is Debian-like with dpkg."""
    upload = tmp_path / "up load's file"  # a name a shell would split or unquote
    upload.write_bytes(b"payload\n")
    files = [str(upload), str(tmp_path / "never-uploaded")]
    out = subprocess.run(["sh", "-c", collection_script(files)], capture_output=True, text=True, timeout=120)
    sbom = parse(out.stdout.splitlines(), files).sbom
    dpkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dpkg"], capture_output=True, text=True).stdout
    assert next(p for p in sbom.packages if p.name == "dpkg").version == dpkg
    assert sbom.files == [UploadedFile(str(upload), digest(b"payload\n").removeprefix("sha256:"),
                                       f"{upload.stat().st_mode & 0o7777:04o}", "root:root")]
    release = platform.freedesktop_os_release()
    assert (sbom.image.os_id, sbom.image.os_version, sbom.image.os_name) == (
        release["ID"], release.get("VERSION_ID", ""), release.get("PRETTY_NAME", ""))
