"""The gRPC surface: servicers convert proto to domain and back, nothing more."""
