"""What is known about an image, and the proof of it (issue 16): what it contains (a CycloneDX
SBOM), what changed between two images, whether it has known vulnerabilities (an OSV feed, a
gate), whether it is fresh (its apt sources offer newer packages), and who built it from what (a
signed in-toto statement), stored where any machine finds it by image id.

Below the workflows: `bake` collects and gates, `rebake` asks about freshness, `launch` and
`verify` check provenance; each of those calls in here, never the other way round.
"""
