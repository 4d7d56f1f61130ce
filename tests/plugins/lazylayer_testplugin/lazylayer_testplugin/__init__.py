"""Test plug-ins for lazylayer: `testdir` (blob source) and `rawchunk` (decompressor)."""
