// A JayStack `odata-v4-server` service on 127.0.0.1 for the interop tests: one entity set
// `Customers` (key `Id`, Edm.Int32) held in memory, with reads, POST, PATCH and DELETE.
//
//   node jaystack-server.js --rows N --page-size P [--owner-pid PID]
//
// Prints `JAYSTACK_BASE_URL=http://127.0.0.1:PORT/odata` on stdout once it listens (the port is
// chosen by the OS), and one JSON line per request served on stderr ({method, url, prefer}).
//
// Plain JavaScript has no decorator syntax, so the decorators the library is written for are
// applied by hand with tslib's helpers, as the TypeScript compiler would emit them.
//
// The library has no server-driven paging: a controller returns the whole collection. The
// `find` below pages by key itself — `$skiptoken` is the last key of the previous page — and
// hands the next link and `$count` to a small wrapper of `res.send`, since the library does not
// take either from a controller's answer. `$filter` is evaluated by JayStack's own
// `odata-v4-inmemory`, as the library's examples do.
"use strict";

const { __decorate, __param, __metadata } = require("tslib");
const { ODataServer, ODataController, Edm, odata } = require("odata-v4-server");
const { createFilter } = require("odata-v4-inmemory");
const express = require("express");

function arg(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}
const ROWS = Number(arg("--rows", "100"));
const PAGE = Number(arg("--page-size", "50"));
const OWNER = Number(arg("--owner-pid", "0"));
if (!Number.isInteger(ROWS) || ROWS < 0 || !Number.isInteger(PAGE) || PAGE < 1) {
  console.error("--rows and --page-size must be integers (page size at least 1)");
  process.exit(2);
}

const CITIES = ["Berlin", "Paris", "Oslo", "Lisbon", "Prague"];
/** Id -> entity; rows are kept in key order when read. */
const customers = new Map();
for (let id = 1; id <= ROWS; id++) {
  customers.set(id, {
    Id: id,
    Name: `Customer ${id}`,
    City: CITIES[id % CITIES.length],
    Score: (id * 37) % 1000,
    Active: id % 3 !== 0,
  });
}

class Customer {}
__decorate([Edm.Key, Edm.Int32, __metadata("design:type", Number)], Customer.prototype, "Id", void 0);
__decorate([Edm.String, __metadata("design:type", String)], Customer.prototype, "Name", void 0);
__decorate([Edm.String, __metadata("design:type", String)], Customer.prototype, "City", void 0);
__decorate([Edm.Int32, __metadata("design:type", Number)], Customer.prototype, "Score", void 0);
__decorate([Edm.Boolean, __metadata("design:type", Boolean)], Customer.prototype, "Active", void 0);

const WRITABLE = ["Name", "City", "Score", "Active"];

function httpError(status, message) {
  const e = new Error(message);
  e.statusCode = status;
  return e;
}

class CustomersController extends ODataController {
  find(filter, query, context) {
    let rows = [...customers.values()].sort((a, b) => a.Id - b.Id);
    if (filter) rows = rows.filter(createFilter(filter));
    const params = context.request.query || {};
    // Rows are served in key order; ordering by anything else is not needed by the tests and
    // refused rather than answered wrongly.
    if (params.$orderby && !/^Id( asc)?$/.test(params.$orderby)) {
      throw httpError(501, "only $orderby=Id is implemented by this service");
    }
    if (params.$count === "true") context.response.locals.count = rows.length;
    const number = (name) => {
      if (params[name] === undefined) return null;
      const n = Number(params[name]);
      if (!Number.isInteger(n) || n < 0) throw httpError(400, `${name} must be a whole number`);
      return n;
    };
    const after = number("$skiptoken");
    const skip = number("$skip");
    const top = number("$top");
    if (after !== null) rows = rows.filter((r) => r.Id > after);
    if (skip !== null) rows = rows.slice(skip);
    if (top !== null) rows = rows.slice(0, top);
    if (rows.length > PAGE) {
      rows = rows.slice(0, PAGE);
      const next = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (!["$skiptoken", "$skip", "$top"].includes(k)) next.set(k, v);
      if (top !== null) next.set("$top", String(top - PAGE));
      next.set("$skiptoken", String(rows[rows.length - 1].Id));
      const host = context.request.headers.host;
      context.response.locals.nextLink =
        `http://${host}${context.request.baseUrl}/Customers?${next.toString().replace(/\+/g, "%20")}`;
    }
    return rows.map((r) => ({ ...r }));
  }
  findOne(key) {
    const row = customers.get(Number(key));
    if (!row) throw httpError(404, `Customers(${key}) does not exist`);
    return { ...row };
  }
  insert(body) {
    const id = Number(body.Id);
    if (!Number.isInteger(id)) throw httpError(400, "a new customer needs an integer Id");
    if (customers.has(id)) throw httpError(409, `Customers(${id}) exists`);
    const row = { Id: id, Name: null, City: null, Score: null, Active: null };
    for (const p of WRITABLE) if (p in body) row[p] = body[p];
    customers.set(id, row);
    return { ...row };
  }
  update(key, delta) {
    const row = customers.get(Number(key));
    if (!row) throw httpError(404, `Customers(${key}) does not exist`);
    for (const p of WRITABLE) if (p in delta) row[p] = delta[p];
  }
  remove(key) {
    if (!customers.delete(Number(key))) throw httpError(404, `Customers(${key}) does not exist`);
  }
}
const P = CustomersController.prototype;
__decorate([odata.GET, __param(0, odata.filter), __param(1, odata.query), __param(2, odata.context)], P, "find", null);
__decorate([odata.GET, __param(0, odata.key)], P, "findOne", null);
__decorate([odata.POST, __param(0, odata.body)], P, "insert", null);
__decorate([odata.PATCH, __param(0, odata.key), __param(1, odata.body)], P, "update", null);
__decorate([odata.DELETE, __param(0, odata.key)], P, "remove", null);
__decorate([odata.type(Customer)], CustomersController);

class CustomersServer extends ODataServer {}
__decorate([odata.namespace("Interop"), odata.controller(CustomersController, "Customers", Customer)], CustomersServer);

const app = express();
app.use((req, res, next) => {
  process.stderr.write(
    JSON.stringify({ method: req.method, url: req.originalUrl, prefer: req.headers.prefer || null }) + "\n",
  );
  // The library's own wrapper of `res.send` (installed after this one) hands over the body
  // already serialised, as a Buffer.
  const send = res.send;
  res.send = function (body) {
    if (res.locals.count !== undefined || res.locals.nextLink) {
      const buffer = Buffer.isBuffer(body);
      let page = body;
      if (buffer || typeof body === "string") {
        try {
          page = JSON.parse(body.toString("utf8"));
        } catch {
          page = null;
        }
      }
      if (page && typeof page === "object" && Array.isArray(page.value)) {
        if (res.locals.count !== undefined) page["@odata.count"] = res.locals.count;
        if (res.locals.nextLink) page["@odata.nextLink"] = res.locals.nextLink;
        const text = JSON.stringify(page);
        body = buffer ? Buffer.from(text, "utf8") : typeof body === "string" ? text : page;
      }
    }
    return send.call(this, body);
  };
  next();
});
app.use("/odata", CustomersServer.create());

const server = app.listen(0, "127.0.0.1", () => {
  process.stdout.write(`JAYSTACK_BASE_URL=http://127.0.0.1:${server.address().port}/odata\n`);
});
if (OWNER > 0) {
  // Exit with the test that started this server, even when it is killed.
  setInterval(() => {
    try {
      process.kill(OWNER, 0);
    } catch {
      process.exit(0);
    }
  }, 500).unref();
}
process.on("SIGTERM", () => process.exit(0));
