"""The bake: a recipe becomes an image, and nothing else is left behind.

    run.py        one bake: resolve the source, hash the inputs, skip or lock, run the pipeline
    pipeline.py   the list of steps, top to bottom, and the runner
    state.py      the typed state the steps hand each other; the manifest
    steps.py      the steps on the builder: key pair, group, builder, SSH, recipe steps, hygiene, image
    smoke.py      the smoke test of the new image
    publish.py    SSM, region copies, sharing, launch template, deprecation
    hygiene.py    what runs before the snapshot, and the leftover check
    inputs.py     the inputs hash (digests.py remembers file digests for it)
    rebake.py     the scheduled path: every recipe, baked only when its inputs changed
    images.py     the finished images, for `invoke images`
    timeline.py   where a bake's time went (its manifest's timeline): `invoke report`'s picture, the
                  rebake summary's gantt chart
"""
