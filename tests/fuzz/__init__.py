"""Fuzz and abuse tests of the sans-IO cores (hypothesis; the atheris harnesses are in fuzz/)."""
