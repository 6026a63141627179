"""`serve`: runs the `ModelServer` WSGI app on waitress (multi-threaded) until SIGTERM/SIGINT, then drains the
requests in flight before exiting.

A request body over `max_request_bytes` is read and dropped as it arrives (never stored), and the app answers it
with a JSON 413 on a connection that stays usable: no reset.
"""
import io
import logging
import signal
import threading
import time

import waitress
from waitress import wasyncore
from waitress.buffers import OverflowableBuffer
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser

from keras_nfnet.serving.app import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_REQUEST_BYTES, ModelServer
from keras_nfnet.serving.image_headers import DEFAULT_MAX_IMAGE_PIXELS
from keras_nfnet.serving.versions import (
    DEFAULT_LOAD_RETRY_INTERVAL_SECONDS,
    DEFAULT_MAX_NUM_LOAD_RETRIES,
    DEFAULT_POLL_WAIT_SECONDS,
)

logger = logging.getLogger("keras_nfnet.serving")


class _DroppingBuffer(OverflowableBuffer):
    """Keeps a body up to `limit` bytes; past that (or from the start, when the declared length is over it) drops
    the data and only counts it, so a client sending a huge body is read to its end without the server storing it,
    and the answer (a JSON 413) comes on a connection that is not reset."""

    def __init__(self, overflow, limit, drop=False):
        super().__init__(overflow)
        self.limit, self.dropping, self.received = limit, drop, 0

    def __len__(self):
        return self.received if self.dropping else super().__len__()

    def append(self, s):
        self.received += len(s)
        if not self.dropping and self.received > self.limit:
            self.dropping = True
            super().close()
            self.buf, self.strbuf = None, b""
        if not self.dropping:
            super().append(s)

    def getfile(self):
        return io.BytesIO() if self.dropping else super().getfile()


def _channel_class(max_request_bytes):
    """A waitress channel whose parser drops bodies over `max_request_bytes` (or, with `Expect: 100-continue`,
    answers before the body is sent)."""
    class BoundedBodyParser(HTTPRequestParser):
        def parse_header(self, header_plus):
            super().parse_header(header_plus)
            if self.body_rcv is None:
                return
            if self.content_length > max_request_bytes and self.expect_continue:
                # The client waits for "100 Continue" before sending the body: answer 413 now, it sends nothing.
                self.body_rcv, self.expect_continue, self.connection_close = None, False, True
                return
            self.body_rcv.buf = _DroppingBuffer(self.adj.inbuf_overflow, max_request_bytes,
                                                drop=self.content_length > max_request_bytes)

    class BoundedBodyChannel(HTTPChannel):
        parser_class = BoundedBodyParser

    return BoundedBodyChannel


def serve(model_base_path, model_name=None, host="127.0.0.1", port=8501, threads=4,
          max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
          max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, file_system_poll_wait_seconds=DEFAULT_POLL_WAIT_SECONDS,
          max_num_load_retries=DEFAULT_MAX_NUM_LOAD_RETRIES,
          load_retry_interval_seconds=DEFAULT_LOAD_RETRY_INTERVAL_SECONDS, num_request_iterations_for_warmup=0,
          enable_signature_method_name_check=False, grace_seconds=10.0, ready_callback=None):
    """Load the newest version (after replaying its warm-up requests), then serve until SIGTERM/SIGINT, polling
    for new versions; on the signal stop accepting, finish in-flight requests (up to `grace_seconds`), exit.

    `ready_callback(host, port)` is called once the socket is listening (port 0 picks a free port).
    """
    app = ModelServer(model_base_path, model_name, max_batch_size=max_batch_size,
                      max_request_bytes=max_request_bytes, max_image_pixels=max_image_pixels,
                      file_system_poll_wait_seconds=file_system_poll_wait_seconds,
                      max_num_load_retries=max_num_load_retries,
                      load_retry_interval_seconds=load_retry_interval_seconds,
                      num_request_iterations_for_warmup=num_request_iterations_for_warmup,
                      enable_signature_method_name_check=enable_signature_method_name_check)
    stop = threading.Event()

    def request_stop(signum, _frame):
        logger.info("received signal %d: draining", signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        app.start()
    except BaseException:
        app.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    socket_map = {}
    # waitress' own limit is out of the way: bodies over max_request_bytes are read and dropped by the channel's
    # parser and answered by the app with a JSON 413.
    server = waitress.create_server(app, map=socket_map, host=host, port=port, threads=threads,
                                    max_request_body_size=2**62, ident="keras-nfnet-serving")
    server.channel_class = _channel_class(max_request_bytes)
    bound_host, bound_port = server.effective_host, server.effective_port
    versions = ", ".join(map(str, app.versions.available_versions))
    print(f"serving {app.model_name} version {versions} at http://{bound_host}:{bound_port}/v1/models/"
          f"{app.model_name}", flush=True)
    if ready_callback is not None:
        ready_callback(bound_host, bound_port)
    try:
        while not stop.is_set():
            wasyncore.loop(timeout=0.2, map=socket_map, count=1)
        # Stop accepting (close the listening socket: new connections are refused), then keep the loop running
        # until every request already being received or computed has been answered, or the grace time is up.
        wasyncore.dispatcher.close(server)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and (app.in_flight or _pending_output(socket_map)):
            wasyncore.loop(timeout=0.05, map=socket_map, count=1)
    finally:
        server.task_dispatcher.shutdown(timeout=max(1.0, grace_seconds))
        wasyncore.close_all(socket_map)
        app.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped serving {app.model_name}", flush=True)


def _pending_output(socket_map):
    """Whether any connection is still receiving a request, has requests queued, or has unsent output."""
    return any(getattr(channel, "request", None) is not None or getattr(channel, "requests", None)
               or getattr(channel, "total_outbufs_len", 0) for channel in list(socket_map.values()))
