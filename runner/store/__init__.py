"""Where shards live: claims (claims.py) and the shard tree, records, manifests (shards.py)."""

from runner.store.claims import ClaimTable, LocalClaims, is_stale, make_claim
from runner.store.shards import Committer, ShardStore, job_root

__all__ = ["ClaimTable", "Committer", "LocalClaims", "ShardStore", "is_stale", "job_root", "make_claim"]
