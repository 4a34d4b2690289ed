"""Reaching a machine and running things on it, whatever it is (EC2 builder, local sandbox)."""
