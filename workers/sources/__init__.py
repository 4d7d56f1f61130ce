"""Blob sources: where a layer's compressed bytes come from (registry, descriptor URLs, OCI
layout directories, plug-ins). base.py is the interface, handlers.py picks one per layer."""
