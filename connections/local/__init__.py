"""A local or mounted folder as the remote."""
