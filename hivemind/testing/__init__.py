"""Test and benchmark doubles that speak real wire protocols (no patched clients)."""
