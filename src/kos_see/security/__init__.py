"""Who is asking: keys, principals and signed request envelopes."""
