"""Test support code shared across test packages (throwaway servers)."""
