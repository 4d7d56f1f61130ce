"""The containerd snapshotter: containerd's snapshots gRPC API over lazylayer's layer store."""
