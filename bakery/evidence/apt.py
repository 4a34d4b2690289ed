"""An image's apt sources: the one-line (sources.list) and deb822 (.sources) forms read into
(URI, suite, components). The SBOM records them; freshness asks them for newer packages."""

from __future__ import annotations

from dataclasses import dataclass

from debian.deb822 import Deb822


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]

    @property
    def security(self) -> bool:
        """Debian's security archive: the suite `bookworm-security` (security.debian.org)."""
        return self.suite.endswith("-security") or self.suite.endswith("/updates")

    def label(self) -> str:
        return f"{self.uri.rstrip('/')} {self.suite}"


def parse_sources(text: str) -> list[AptSource]:
    """The `deb` entries of a sources.list (one-line form) or a .sources file (deb822 form)."""
    out: list[AptSource] = []
    if any(line.strip().lower().startswith(("types:", "uris:")) for line in text.splitlines()):
        for para in Deb822.iter_paragraphs(text.splitlines()):
            if "deb" not in para.get("Types", "").split() or para.get("Enabled", "yes").lower() == "no":
                continue
            for uri in para.get("URIs", "").split():
                for suite in para.get("Suites", "").split():
                    out.append(AptSource(uri, suite, tuple(para.get("Components", "").split())))
        return out
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            out.append(AptSource(words[0], words[1], tuple(words[2:])))
    return out
