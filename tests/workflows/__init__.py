"""Tests of the ragops delivery workflows (Automation API against a fake Pulumi CLI)."""
