"""Local cloud: EC2-like instances as overlayfs + namespace sandboxes on this host.

    cloud.py     the machines behind the endpoint's instances, and the durable image store's view
    endpoint.py  the EC2 endpoint (a moto server on 127.0.0.1), started on demand
    base.py      the Debian base rootfs, built once with mmdebstrap
    layers.py    baked images as tar.zst overlay layers stacked on it
    sandbox.py   one instance: namespaces, overlay, chroot, real cloud-init, sshd
    vpcnet.py    subnets as bridges and ENIs as veths, inside namespaces the project creates
    prereqs.py   what the host needs (root, overlayfs, namespaces)
    status.py    what `invoke local.status` shows

Root is required. The sandbox is for hygiene and reproducibility, not a security boundary: root
inside it keeps all capabilities of host root.
"""
