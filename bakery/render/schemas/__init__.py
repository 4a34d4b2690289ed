"""Vendored JSON schemas, shipped as package data (see LICENSE-cloud-init)."""
