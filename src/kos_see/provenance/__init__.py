"""Provenance: the signed record of what an attempt ran, and its replay."""
