"""How a worker reads shards: fetched (with retries, from the cache or object store), verified, parsed into
layouts, streamed or prefetched, and turned into samples. Internal to :mod:`meddiffuse_stream.nodes`."""
