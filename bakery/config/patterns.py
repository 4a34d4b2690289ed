"""Names and ids as config files write them, as plain regular expressions (no models needed)."""

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # recipe, environment and tier names
AMI_RE = r"^ami-[0-9a-f]{8,17}$"
