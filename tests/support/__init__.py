"""Test helpers shared by every area: real registries, a token service, a fault-injecting proxy."""
