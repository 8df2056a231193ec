"""Experiment configs: each file's get_config() returns one ConfigDict (see quickstart.py)."""
