"""Benchmarks of ``oeleo run`` against oeleo 0.7.0, rsync, rclone and cp (``python -m benchmarks.run``)."""
