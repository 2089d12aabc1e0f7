"""A TCP forwarder in front of the session's Schema Registry, for a test that needs the registry to
go away and come back: :meth:`RegistryProxy.cut` closes its port and every connection through it (a
client sees what it sees of a registry that is down: connection refused), :meth:`RegistryProxy.restore`
opens the same port again. The registry behind it keeps running, so the outage ends at once instead
of after a JVM start, and other tests sharing the registry are not affected."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

from consumer.devtools.process import free_port

ACCEPT_POLL_SECONDS = 0.1


class RegistryProxy:
    def __init__(self, registry_url: str) -> None:
        parts = urlsplit(registry_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"the registry URL names no host and port: {registry_url}")
        self.target = (parts.hostname, parts.port)
        self.port = free_port()
        self.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._open = threading.Event()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def restore(self) -> None:
        """Listen (again) on :attr:`port` and forward every connection to the registry."""
        if self.is_open:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(ACCEPT_POLL_SECONDS)
        self._listener = listener
        self._open.set()
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        """Refuse new connections and end the open ones; returns once the port is closed."""
        self._open.clear()
        if self._accepting is not None:
            self._accepting.join(10)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._open.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if not self._open.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
