"""The queue manager: what happens to a task between intake and a worker."""
