"""The local cloud's endpoint process: moto's EC2/SSM/ELB app behind the control plane, and the
reconciler that keeps the machines in step with it.

    python -m bakery.local.server --data-dir /var/lib/bakery --port 4599

Started detached by `invoke local.up` (or on demand by any bakery command on the local cloud), as
root: it creates network namespaces, mounts and sandboxes. It listens on 127.0.0.1 only. Machines
are processes of their own: stopping this process leaves them running.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request would drown the log

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from bakery.local import internet, moto_extensions, moto_state
    from bakery.local.base import base_ca_dir
    from bakery.local.cloud import DEBIAN_OWNER, LOCAL_ACCOUNT, LocalCloud
    from bakery.local.control import ControlPlane
    from bakery.local.imds import MetadataService
    from bakery.local.persist import Snapshots
    from bakery.local.privatelink import ApiEndpoints
    from bakery.local.reconcile import Reconciler
    from bakery.local.resolver import VpcResolver

    machines = LocalCloud(args.data_dir)
    moto_extensions.install(machines)
    snapshots = Snapshots(machines.endpoint.snapshot_file)
    reconciler = Reconciler(machines, link_local=[
        MetadataService(), VpcResolver(),
        ApiEndpoints(args.port, base_ca_dir(args.data_dir), machines.endpoint.dir)])
    if snapshots.restore():
        moto_state.sync_images(machines.registered_images(), {LOCAL_ACCOUNT, DEBIAN_OWNER})
        moto_state.resume_address_allocation()
        moto_extensions.give_default_vpcs_internet_gateways()
    reconciler.adopt()
    app = ControlPlane(DomainDispatcherApplication(create_backend_app), machines, reconciler, snapshots)
    reconciler.changed = app.save
    app.save()  # what adopting the machines changed
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler)

    def stop(signum, frame):  # shutdown() waits for serve_forever, so not from this (its) thread
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reconciler.start()
    # look up the package mirrors' addresses now, so a public address picked while moto answers a
    # RunInstances (moto_extensions._public_address) finds them known and never waits for DNS
    internet.reserved(wait=0)
    logging.getLogger("bakery.local").info("local EC2 endpoint on http://127.0.0.1:%d (data %s)", args.port,
                                           args.data_dir)
    try:
        server.serve_forever()
    finally:
        reconciler.close()
        with app.app.lock:  # a request thread (a daemon) may still be inside moto
            snapshots.save()  # the machines' last states (running, stopped) as the reconciler left them


if __name__ == "__main__":
    main()
