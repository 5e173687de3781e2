"""The anns gRPC server: a thin adapter from the anns.v1 services to the library.

``anns serve DIR --port P`` runs it; :func:`build_server` starts one in-process::

    from server import ServerConfig, build_server
    running = build_server(ServerConfig(root=path, port=0))
    ...  # anns.Client(f"127.0.0.1:{running.port}")
    running.stop()

Modules: ``config`` (ServerConfig), ``registry`` (collections under the root),
``convert`` (wire <-> numpy), ``servicers`` (the four services), ``interceptors`` (auth;
errors -> status codes, limits, metrics, logs), ``metrics``, ``logs``, ``errors``, ``app``.
Stubs come from the generated ``anns_proto`` package (proto/generate.py).
"""

from server.app import RunningServer, build_server, serve
from server.config import ServerConfig

__all__ = ["RunningServer", "ServerConfig", "build_server", "serve"]
