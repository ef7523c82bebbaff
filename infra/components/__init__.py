"""Pulumi component resources of the RAG platform, one module per building block.

Each component takes `(name, args, opts)`, validates its frozen-dataclass args first, parents every child to
itself, never builds a provider (the Kubernetes/cloud provider arrives through `opts`), and registers typed
outputs last. The Kubernetes specs they apply are built by small pure functions (see `specs`), so they can be
unit-tested without the Pulumi engine.
"""
