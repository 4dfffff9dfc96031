"""An odatapy (PyPI `odatapy`) in-memory OData V4 service on 127.0.0.1 for the interop tests.

    python odatapy_server.py --rows N --page-size P [--owner-pid PID]

One entity set `Customers` (key `ID`, Edm.Int32) in odatapy's `InMemoryDataStore`, served by its
`InMemoryProcessor` through its WSGI adapter on a threaded `wsgiref` server: reads with
server-driven paging (odatapy's own `$skiptoken`), POST, PATCH and DELETE. odatapy tracks changes
itself: a request with `Prefer: odata.track-changes` is answered with its own delta link.

Prints `ODATAPY_BASE_URL=http://127.0.0.1:PORT` on stdout once it listens (the port is chosen by
the OS), and one JSON line per request served on stderr ({method, url, prefer}).
"""

import argparse
import json
import os
import sys
import threading
import time
from decimal import Decimal
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from odatapy.data import Entity, ValueType
from odatapy.edm.csdl import (
    CsdlAbstractEdmProvider,
    CsdlEntityContainer,
    CsdlEntitySet,
    CsdlEntityType,
    CsdlProperty,
    CsdlPropertyRef,
    CsdlSchema,
)
from odatapy.server import OData
from odatapy.server.adapters import ODataWSGIApp
from odatapy.server.inmemory import InMemoryDataStore, InMemoryProcessor

CITIES = ["Berlin", "Paris", "Oslo", "Lisbon", "Prague"]


class Provider(CsdlAbstractEdmProvider):
    def get_schemas(self):
        customer = CsdlEntityType(
            name="Customer",
            key=[CsdlPropertyRef(name="ID")],
            properties=[
                CsdlProperty(name="ID", type="Edm.Int32", nullable=False),
                CsdlProperty(name="name", type="Edm.String"),
                CsdlProperty(name="city", type="Edm.String"),
                CsdlProperty(name="balance", type="Edm.Decimal", precision=15, scale=2),
                CsdlProperty(name="score", type="Edm.Int32"),
            ],
        )
        container = CsdlEntityContainer(
            name="Container",
            entity_sets=[CsdlEntitySet(name="Customers", type="Interop.Customer")],
        )
        return [CsdlSchema(namespace="Interop", entity_types=[customer], entity_container=container)]


def customer(i):
    e = Entity()
    e.set_property("ID", i, ValueType.PRIMITIVE, "Edm.Int32")
    e.set_property("name", f"Customer {i}", ValueType.PRIMITIVE, "Edm.String")
    e.set_property("city", CITIES[i % len(CITIES)], ValueType.PRIMITIVE, "Edm.String")
    e.set_property("balance", Decimal(i * 731 % 100000) / 100, ValueType.PRIMITIVE, "Edm.Decimal")
    e.set_property("score", i * 37 % 1000, ValueType.PRIMITIVE, "Edm.Int32")
    return e


def logged(app):
    def wrapper(environ, start_response):
        url = environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        line = {"method": environ.get("REQUEST_METHOD"), "url": url, "prefer": environ.get("HTTP_PREFER")}
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()
        return app(environ, start_response)

    return wrapper


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def watch_owner(pid):
    """Exit with the test that started this server, even when it is killed."""
    while True:
        try:
            os.kill(pid, 0)
        except OSError:
            os._exit(0)
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--owner-pid", type=int, default=0)
    args = parser.parse_args()
    if args.rows < 0 or args.page_size < 1:
        parser.error("--rows must be >= 0 and --page-size >= 1")

    odata = OData.new_instance()
    handler = odata.create_handler(odata.create_service_metadata(Provider()))
    store = InMemoryDataStore()
    store.set_entities("Customers", [customer(i) for i in range(1, args.rows + 1)])
    handler.register(InMemoryProcessor(store, page_size=args.page_size))
    server = make_server(
        "127.0.0.1", 0, logged(ODataWSGIApp(handler)), server_class=ThreadingServer, handler_class=QuietHandler
    )
    if args.owner_pid > 0:
        threading.Thread(target=watch_owner, args=(args.owner_pid,), daemon=True).start()
    print(f"ODATAPY_BASE_URL=http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
