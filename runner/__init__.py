"""forge: exact Texas 42 oracle shards from one YAML job file."""
__version__ = "0.1.0"
