"""dataferry's benchmark: dataferry against scp, sftp, rclone and the seed's approach.

Run it from the repository root with ``python -m bench`` (``make bench``); see
``docs/benchmarks.md``.
"""
