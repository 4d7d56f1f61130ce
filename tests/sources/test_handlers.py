"""Choosing sources and decompressors: config orders and rules, fallback past a source that
cannot serve, and clear refusals of names nobody provides."""

from __future__ import annotations

from pathlib import Path

import pytest
from lazylayer_testplugin.rawchunk import MEDIA_TYPE, write_blob

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.config import load_config
from lazylayer.shared.errors import ConfigError, NotEStargzError
from lazylayer.shared.estargz.formats import BUILTIN, Decompressors
from lazylayer.shared.plugins import BUILTIN_DECOMPRESSORS
from lazylayer.workers.sources.base import LayerSpec
from lazylayer.workers.sources.handlers import Sources, rule_matches
from tests.fuse.daemonproc import start_daemon
from tests.sources.conftest import sample_layer
from tests.support.blobserver import BlobServer
from tests.support.registry import RunningRegistry, push_blob


def sources(**section: object) -> Sources:
    return Sources(load_config(None, env={}, overrides={f"sources.{k}": v for k, v in section.items()}).config)


def test_rules_match_at_name_boundaries_and_the_longest_wins():
    assert rule_matches("reg.example", "reg.example/app:1")
    assert rule_matches("reg.example", "reg.example:5000/app")
    assert not rule_matches("reg.example", "reg.example.evil/app")
    assert rule_matches("oci:/srv/images", "oci:/srv/images/app:1.0")
    assert not rule_matches("oci:/srv/images", "oci:/srv/images-old/app")
    chooser = sources(rules={"reg.example": ["registry"], "reg.example/team/": ["urls", "registry"]})
    assert chooser.order_for("reg.example/team/app:1") == ("urls", "registry")
    assert chooser.order_for("reg.example/other:1") == ("registry",)
    assert chooser.order_for("elsewhere.example/x:1") == ("oci-layout", "urls", "registry")
    assert sources(rules={"docker.io": ["registry"]}).order_for("ubuntu") == ("registry",)  # normalised


def test_unknown_handler_and_decompressor_names_are_refused_naming_them():
    assert tuple(BUILTIN) == BUILTIN_DECOMPRESSORS  # the names a config check knows without importing formats
    with pytest.raises(ConfigError, match="'p2p'.*neither built in.*testdir"):
        sources(order=["p2p", "registry"])
    with pytest.raises(ConfigError, match="'lz4'.*neither built in.*rawchunk"):
        Decompressors.load(("gzip", "lz4"))


def test_a_dead_url_falls_back_to_the_registry(registry: RunningRegistry):
    layer = sample_layer()
    push_blob(registry, "fallback/app", layer.blob)
    with BlobServer() as server:
        spec = LayerSpec(f"{registry.host}/fallback/app:v1", layer.digest, len(layer.blob),
                         urls=(server.url("missing"),))
        chooser = sources()
        assert chooser.open(spec).handler == "urls"  # no probe: the first that claims it
        chosen = chooser.choose(spec)
        assert chosen.handler == "registry" and server.requests  # the URL was asked, and answered 404
        assert chosen.read_at(0, 2) == layer.blob[:2]
        assert chooser.open(spec, prefer="registry").handler == "registry"  # the recorded choice


def test_decompressors_claim_by_footer_and_plugins_are_loaded():
    chain = Decompressors.load()
    assert list(chain.chain)[:2] == ["gzip", "zstd"] and "rawchunk" in chain.plugins
    assert chain.claim(BytesSource(sample_layer().blob), "")[0] == "gzip"
    blob, _ = write_blob({"a": b"a"})
    assert chain.claim(BytesSource(blob), MEDIA_TYPE)[0] == "rawchunk"
    with pytest.raises(NotEStargzError, match="no decompressor"):
        Decompressors.load(("gzip", "zstd")).claim(BytesSource(blob), MEDIA_TYPE)


def test_the_daemon_refuses_a_handler_nobody_provides_before_starting(tmp_path: Path):
    daemon = start_daemon(tmp_path, wait=False, config={"sources": {"rules": {"reg.example": ["p2p"]}}})
    assert daemon.process is not None
    try:
        assert daemon.process.wait(timeout=60) == 1
    finally:
        daemon.stop()
    assert "[sources] names 'p2p', which is neither built in" in daemon.log()
    assert "worker" not in daemon.log()  # refused before any worker was started
