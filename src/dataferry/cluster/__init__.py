"""Runs sharded across a Dask cluster (``dataferry run --scheduler``/``--workers``).

The coordinator (:mod:`.coordinator`, the ``dataferry`` process) holds the
destination's lock, plans each task once (listing, decisions against the
manifest, conflicts refused before anything moves), splits the files to fetch
into shards of about equal bytes (:mod:`.sharding`; an archive stays whole),
and submits one Dask task per shard. A worker (:mod:`.shard`) runs the
ordinary engine (``run_task``) over its shard only, with its own connection,
into the shared destination, without taking the lock, and returns the
manifest entries it would have written; the coordinator records them.
Dask re-runs the shard of a lost worker elsewhere; partial files left by the
lost one are resumed. Dask is optional (``pip install 'dataferry[dask]'``) and
imported only here, lazily. See docs/scale.md.
"""
