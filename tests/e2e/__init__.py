"""Multi-node and multi-process scenarios on loopback (a package: its modules may share a
name with the unit tests of the same feature, as test_bundles.py does)."""
