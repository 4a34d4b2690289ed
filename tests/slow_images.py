"""A moto server whose new images take their time, as EC2's do: moto makes every image available
at once with its snapshots at 100 %, so a wait on it never sees an image pending or a snapshot
moving. Installed in the server's process (`MotoServer(slow_images=SECONDS)`): an image made by
CreateImage or CopyImage stays `pending` for SECONDS, and each snapshot made after install reports
its progress growing from 0 % to 100 % over the same time. Images registered otherwise (a test's
source image) are as moto makes them."""

from __future__ import annotations

import time


def install(seconds: float) -> None:
    from moto.ec2.models.amis import AmiBackend, Ami
    from moto.ec2.models.elastic_block_store import Snapshot

    born: dict[str, float] = {}  # image or snapshot id -> when it was made (monotonic)

    def share(resource_id: str) -> float:
        start = born.get(resource_id)
        return 1.0 if start is None else min(1.0, (time.monotonic() - start) / seconds)

    def image_state(self) -> str:
        state = self.__dict__.get("_state", "available")
        return "pending" if state == "available" and share(self.id) < 1.0 else state

    def set_image_state(self, value: str) -> None:
        self.__dict__["_state"] = value

    Ami.state = property(image_state, set_image_state)
    Snapshot.progress = property(lambda self: f"{int(share(self.id) * 100)}%")

    snapshot_init = Snapshot.__init__

    def snapshot_made(self, *args, **kwargs):
        snapshot_init(self, *args, **kwargs)
        born[self.id] = time.monotonic()

    Snapshot.__init__ = snapshot_made

    for name in ("create_image", "copy_image"):
        made = getattr(AmiBackend, name)

        def slowed(self, *args, _made=made, **kwargs):
            image = _made(self, *args, **kwargs)
            born[image.id] = time.monotonic()
            return image

        setattr(AmiBackend, name, slowed)
