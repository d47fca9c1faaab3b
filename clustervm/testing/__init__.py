"""Helpers for clustervm's tests: a whole VM in one process (:mod:`clustervm.testing.inprocess`),
simulated hosts (:mod:`clustervm.testing.netns`) and a Slurm cluster
(:mod:`clustervm.testing.slurm`)."""
