"""Models: registry, model manager, job queues and batching, archives, snapshots."""
