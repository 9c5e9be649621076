"""Conformance suites every Source and Sink implementation must pass.

In the manner of fsspec's abstract test mixins and rclone's fstests: a suite is
a class of test methods written against the interface only, parameterised by
an abstract fixture (``source_world`` / ``sink_world``) that a subclass in
tests/test_*_conformance.py provides for one implementation.
"""
