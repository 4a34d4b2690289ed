"""Local cloud: an EC2 endpoint for any client, with real machines (systemd in namespaces) behind it.

    server.py          the endpoint process: moto's app behind the control plane, with the reconciler
    control.py         the control plane: what a request changed, saved and nudged to the reconciler
    reconcile.py       machines, fabric, firewall, gateways and the VPCs' link-local services follow
                       moto's state
    moto_state.py      the only window onto moto's EC2 objects (moto_network.py: its networks and ways
                       out as data)
    moto_extensions.py where moto answers with a stand-in and EC2 has a real answer
    persist.py         moto's state saved before each answer and restored at start
    linklocal.py       the VPC's link-local services, one listener each per VPC namespace:
    imds.py              the instance metadata service (169.254.169.254)
    resolver.py          the VPC's DNS resolver (169.254.169.253)
    privatelink.py       the AWS APIs over TLS (169.254.169.250), relayed to the endpoint
    tls.py             the local cloud's CA (trusted by the base image) and its certificates
    cloud.py           the machines behind the endpoint's instances, and the durable image store's view
    endpoint.py        starting, finding and stopping the endpoint process (127.0.0.1)
    base.py            the Debian base rootfs (systemd, cloud-init with its Ec2 datasource), built once
    layers.py          baked images as tar.zst overlay layers stacked on it
    sandbox.py         one machine: its netns, overlay, systemd-nspawn booting the image's systemd
    vpcnet.py          subnets as bridges and ENIs as veths, inside namespaces the project creates
    firewall.py        security groups, network ACLs and the source/dest check as nftables rules
    internet.py        the internet namespace: the only slirp4netns, public addresses routed to VPCs
    gateways.py        internet gateways, route tables, NAT gateways and 1:1 NAT in a VPC's namespace
    netns.py           one thing done inside a network namespace from the host (ip, sysctl, nft)
    procs.py           a process by PID and start time (never another one reusing the PID)
    errors.py          LocalCloudError
    prereqs.py         what the host needs (root, overlayfs, namespaces, nspawn, nft)
    status.py          what `invoke local.status` shows

Root is required. The sandbox is for hygiene and reproducibility, not a security boundary: root
inside it keeps all capabilities of host root.
"""
