"""The research harness behind run.py: prompt sets, decoding runs, result tables, resume, analysis."""
