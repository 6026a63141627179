"""A Google Cloud Storage emulator on 127.0.0.1 for the remote-storage tests.

`gcp-storage-emulator` speaks GCS's JSON API over HTTP from memory; gcsfs (what `keras_nfnet.storage` uses for
gs://) sends its requests there when STORAGE_EMULATOR_HOST is set, so the tests exercise the same client code
and protocol as a real bucket. Child processes inherit the variable and reach the same server.
"""
import http.server
import logging
import os
import socket
import sys
import threading
import types

BUCKET = "nfnet-test"

# gcsfs's default client first asks the gRPC storage-control API whether a bucket is zonal or hierarchical; the
# emulator has no gRPC endpoint (the client would retry for minutes), so use the plain JSON-API client.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


class _AcceptingServer(http.server.ThreadingHTTPServer):
    """The emulator's HTTP server, accepting every connection at once but answering one request at a time.

    The emulator's own server is single-threaded with a listen backlog of 5: gcsfs sends a batch of range reads
    concurrently, the connections past the backlog are dropped, and each waits for TCP's retransmission (seconds,
    then a minute). The emulator's storage is not thread-safe, so requests are still served one by one."""

    daemon_threads = True
    request_queue_size = 1024
    _one_at_a_time = threading.Lock()

    def finish_request(self, request, client_address):
        with self._one_at_a_time:
            super().finish_request(request, client_address)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """An in-memory emulator serving bucket `BUCKET`, in a thread of this process."""

    def __init__(self):
        from gcp_storage_emulator import server
        from gcp_storage_emulator.server import create_server

        server.server = types.SimpleNamespace(HTTPServer=_AcceptingServer)  # what the emulator starts
        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self.port = _free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self._server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=BUCKET)

    def __enter__(self):
        self._server._api.daemon = True  # its serving thread must not keep a finished process alive
        self._server.start()
        httpd = self._server._api._httpd  # the emulator's http.server, created by start()
        report = httpd.handle_error

        def handle_error(request, client_address):  # a client that hung up early is no error of the test
            if not isinstance(sys.exc_info()[1], ConnectionError):
                report(request, client_address)

        httpd.handle_error = handle_error
        self._previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = self.host
        return self

    def __exit__(self, *exc):
        if self._previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = self._previous
        self._server.stop()
