"""The gradfleet coordinator: the gRPC service, the CLI, the job store and scheduler."""

import os

# gRPC's C core logs at INFO otherwise, e.g. an "I1204 ... Handshake failed" line for every failed TLS
# handshake, in the CLI and the server alike, next to the one-line error that explains it. Its errors
# still show; this must be set before grpc is imported, and a value the user set is kept.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
