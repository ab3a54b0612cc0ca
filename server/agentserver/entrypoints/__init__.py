"""Entrypoints: the gRPC server and the CLI call into the domain."""
