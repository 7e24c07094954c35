"""How a worker chain runs beside the main process: worker processes or threads, their command loop, the wire
format and the shared-memory segments batches travel in. Internal to :mod:`meddiffuse_stream.nodes`."""
