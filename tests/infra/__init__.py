"""Tests of the Pulumi program, its config and its cluster targets."""
