"""Smoke runs of the benchmarks in bench/: each runs small as a subprocess, so the scripts
keep working as the code under them changes.  No timing is asserted."""
