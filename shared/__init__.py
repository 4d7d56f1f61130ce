"""lazylayer common library: format, cache stores, protocol, config, errors. No processes, no sockets."""
