"""EC2 networking calls: VPCs, subnets, security groups, network ACLs, Elastic IPs, ENIs.

A mixin of the EC2 facade (bakery/cloud/ec2.py): every method goes through `self.call` or
`self.describe_all`, so errors are mapped and retried in one place.
"""

from __future__ import annotations


class VpcAPI:
    """Networking operations of the EC2 facade."""
