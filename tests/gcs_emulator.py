"""A Google Cloud Storage emulator on 127.0.0.1 for the remote-storage tests.

`gcp-storage-emulator` speaks GCS's JSON API over HTTP from memory; gcsfs (what `keras_nfnet.storage` uses for
gs://) sends its requests there when STORAGE_EMULATOR_HOST is set, so the tests exercise the same client code
and protocol as a real bucket. Child processes inherit the variable and reach the same server.
"""
import logging
import os
import socket

BUCKET = "nfnet-test"

# gcsfs's default client first asks the gRPC storage-control API whether a bucket is zonal or hierarchical; the
# emulator has no gRPC endpoint (the client would retry for minutes), so use the plain JSON-API client.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """An in-memory emulator serving bucket `BUCKET`, in a thread of this process."""

    def __init__(self):
        from gcp_storage_emulator.server import create_server

        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self.port = _free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self._server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=BUCKET)

    def __enter__(self):
        self._server.start()
        self._previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = self.host
        return self

    def __exit__(self, *exc):
        if self._previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = self._previous
        self._server.stop()
