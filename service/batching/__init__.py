"""The dynamic batcher: admission, dispatch and supervision (batcher), the queue that
slices requests into batches of one shape (batch_queue), answering executed batches and
failure isolation (batch_execution), the instance threads (instances) and request
deadlines (deadlines). May import: runtime and below."""
