"""Migration jobs: a bounded set of items (source -> destination), each with a
durable row, run until every item is done or has failed for good."""
