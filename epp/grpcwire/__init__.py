"""A lean gRPC server over cleartext HTTP/2 on the event loop, for ext_proc and health."""
