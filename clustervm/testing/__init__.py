"""Helpers for clustervm's own tests (simulated hosts, see :mod:`clustervm.testing.netns`)."""
