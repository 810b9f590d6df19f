"""The gRPC interface. ``engine_pb2*`` are generated from proto/ by
scripts/proto and committed, so installing needs no code generator."""
