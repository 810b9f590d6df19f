"""The network interfaces: REST (FastAPI) and gRPC, over the same dispatcher."""
