"""bakery: bake AMIs from recipes, launch them with per-environment user data.

The package is split by responsibility (see README "Architecture"); nothing here
imports boto3 or paramiko at module level so that `invoke --list` stays fast.
"""

__version__ = "0.1.0"
