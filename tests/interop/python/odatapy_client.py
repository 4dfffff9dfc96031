"""odatapy's client (PyPI `odatapy[client]`) reading a tracked collection through the gateway.

    python odatapy_client.py --service URL --set NAME --page-size N --version 4.0|4.01

Driven by lines on stdin, answering each with one JSON line on stdout:
- `initial`: the tracked read, `get_entity_set(uri, track_changes=True, max_page_size=N)` page
  by page with `iter_pages`, which follows the next links;
- `delta`: `get_delta(link)` on the delta link of the last read, then on each next link of the
  delta, keeping `deleted_entities` (tombstones, in the shape `--version` asks for);
- `quit`.
The answer: {"step", "pages", "entities": [properties], "removed": [{"id", "reason"}],
"next_links", "delta_link"}, or {"step", "error"}.
"""

import argparse
import json
import sys

from odatapy.client import ODataClient
from odatapy.client.transport import HttpxTransport

MAX_PAGES = 10_000


def plain(entity):
    return {p.name: p.value for p in entity.properties}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--service", required=True)
    parser.add_argument("--set", required=True)
    parser.add_argument("--page-size", type=int, required=True)
    parser.add_argument("--version", choices=["4.0", "4.01"], required=True)
    args = parser.parse_args()
    client = ODataClient(args.service, HttpxTransport(timeout=60.0), odata_version=args.version)
    delta_link = None

    for line in sys.stdin:
        step = line.strip()
        if step == "quit":
            return
        out = {"step": step, "pages": 0, "entities": [], "removed": [], "next_links": []}
        try:
            if step == "initial":
                uri = client.entity_set_uri(args.set)
                last = None
                for page in client.iter_pages(uri, track_changes=True, max_page_size=args.page_size):
                    out["pages"] += 1
                    out["entities"].extend(plain(e) for e in page.entities)
                    if page.next_link:
                        out["next_links"].append(page.next_link)
                    last = page
                    if out["pages"] >= MAX_PAGES:
                        raise RuntimeError("too many pages")
                delta_link = last.delta_link if last else None
            elif step == "delta":
                if not delta_link:
                    raise RuntimeError("no delta link to follow")
                link = delta_link
                while link:
                    delta = client.get_delta(link, max_page_size=args.page_size)
                    out["pages"] += 1
                    out["entities"].extend(plain(e) for e in delta.entities)
                    out["removed"].extend(
                        {"id": d.id, "reason": d.reason} for d in delta.deleted_entities
                    )
                    link = delta.next_link
                    if link:
                        out["next_links"].append(link)
                    elif delta.delta_link:
                        delta_link = delta.delta_link
                    if out["pages"] >= MAX_PAGES:
                        raise RuntimeError("too many pages")
            else:
                raise RuntimeError(f"unknown step {step!r}")
            out["delta_link"] = delta_link
        except Exception as e:  # reported to the test, which fails with it
            out = {"step": step, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
