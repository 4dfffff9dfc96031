// `@odata/client` (npm) reading a tracked collection through the gateway.
//
//   node odata-client.js --service URL --set NAME --page-size N --version 4.0|4.01
//
// The library has no API for next or delta links: `EntitySet.query()` returns the entities of
// the first page only, and drops the links. So this reads the way its users do: the first page
// through the library (`EntitySet.query()` for the entities; `newRequest()`, which hands back the
// page's body, for its links), then every next link and the delta link as raw requests through
// the library's `requestUri()`, telling tombstones apart by hand: `@odata.context` ending in
// `$deletedEntity` (4.0) or an `@removed` member (4.01). The tracking preference and the
// version go in the library's `commonHeaders`.
//
// Driven by lines on stdin, answering each with one JSON line on stdout: `initial`, `delta`,
// `quit`. The answer: {"step", "pages", "entities", "removed": [{"id", "reason"}], "next_links",
// "delta_link", "library_first_page"}, or {"step", "error"}.
"use strict";

const readline = require("readline");
const { OData } = require("@odata/client");

function arg(name) {
  const at = process.argv.indexOf(name);
  if (at < 0 || at + 1 >= process.argv.length) {
    console.error(`${name} is required`);
    process.exit(2);
  }
  return process.argv[at + 1];
}
const SERVICE = arg("--service").replace(/\/?$/, "/");
const SET = arg("--set");
const PAGE = Number(arg("--page-size"));
const VERSION = arg("--version");
const MAX_PAGES = 10000;

const v401 = VERSION === "4.01";
const NEXT = v401 ? "@nextLink" : "@odata.nextLink";
const DELTA = v401 ? "@deltaLink" : "@odata.deltaLink";
const client = OData.New4({
  serviceEndpoint: SERVICE,
  commonHeaders: {
    Prefer: `odata.track-changes, odata.maxpagesize=${PAGE}`,
    "OData-MaxVersion": VERSION,
  },
});

function link(page, name) {
  // 4.01 services may use either spelling of the control names.
  return page[name] ?? page[name.replace(/^@(?!odata\.)/, "@odata.")];
}

function isTombstone(item) {
  if (v401) return "@removed" in item || "@odata.removed" in item;
  return typeof item["@odata.context"] === "string" && item["@odata.context"].endsWith("$deletedEntity");
}

function tombstone(item) {
  if (v401) {
    const removed = item["@removed"] ?? item["@odata.removed"];
    return { id: item["@id"] ?? item["@odata.id"], reason: removed.reason ?? "deleted" };
  }
  return { id: item.id, reason: item.reason ?? "deleted" };
}

function plain(item) {
  const out = {};
  for (const [k, v] of Object.entries(item)) if (!k.includes("@")) out[k] = v;
  return out;
}

function take(out, page, delta) {
  if (page.error) throw new Error(`an OData error: ${JSON.stringify(page.error)}`);
  if (!Array.isArray(page.value)) throw new Error(`a page without value: ${JSON.stringify(page).slice(0, 300)}`);
  out.pages += 1;
  for (const item of page.value) {
    if (isTombstone(item)) {
      if (!delta) throw new Error(`a tombstone in the initial read: ${JSON.stringify(item)}`);
      out.removed.push(tombstone(item));
    } else {
      out.entities.push(plain(item));
    }
  }
  if (out.pages >= MAX_PAGES) throw new Error("too many pages");
}

/** Follow next links from `page` to the last page; returns the delta link. */
async function follow(out, page, delta) {
  take(out, page, delta);
  for (;;) {
    const next = link(page, NEXT);
    if (!next) return link(page, DELTA) ?? null;
    out.next_links.push(next);
    page = await client.requestUri(next);
    take(out, page, delta);
  }
}

let deltaLink = null;

async function step(name) {
  const out = { step: name, pages: 0, entities: [], removed: [], next_links: [] };
  if (name === "initial") {
    const firstPage = await client.getEntitySet(SET).query();
    out.library_first_page = firstPage.length;
    const page = await client.newRequest({ collection: SET, method: "GET" });
    deltaLink = await follow(out, page, false);
  } else if (name === "delta") {
    if (!deltaLink) throw new Error("no delta link to follow");
    const page = await client.requestUri(deltaLink);
    deltaLink = (await follow(out, page, true)) ?? deltaLink;
  } else {
    throw new Error(`unknown step ${name}`);
  }
  out.delta_link = deltaLink;
  return out;
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on("line", (line) => {
  const name = line.trim();
  if (name === "quit") {
    queue.then(() => process.exit(0));
    return;
  }
  queue = queue.then(async () => {
    let out;
    try {
      out = await step(name);
    } catch (e) {
      out = { step: name, error: String(e && e.stack ? e.stack : e) };
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  });
});
lines.on("close", () => queue.then(() => process.exit(0)));
