"""lazylayer fetcher side: registry client and worker jobs."""
