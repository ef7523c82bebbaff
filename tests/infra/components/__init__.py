"""Unit tests of the Pulumi components in infra/components (pure spec builders and mocked runs)."""
