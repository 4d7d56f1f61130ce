"""Worker pool, protocol and trio<->ZeroMQ pump, with real processes and sockets."""
