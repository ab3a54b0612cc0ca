"""The browser's way in: gRPC-web (and the Connect protocol) over HTTP/1.1 beside the
console, calling the very servicers the gRPC server runs."""
