//! A real server's own OData API for its `Customers` set, bypassing the gateway: used to write
//! behind the gateway's back and as the ground truth that replicas are compared with. `Dialect`
//! holds what differs between the servers: the key's name, the properties a random write
//! touches, how values are written.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::rng::Rng;
use crate::support::gateway::{Client, Resp};

/// Which real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SAP CAP (`@sap/cds`): key `ID`; name, email, city, balance (Decimal), score, birthday and a
    /// server-maintained `modifiedAt`.
    Cap,
    /// JayStack `odata-v4-server`: key `Id`; Name, City, Score, Active.
    JayStack,
    /// odatapy's in-memory server: key `ID`; name, city, balance (Decimal), score.
    Odatapy,
}

const CITIES: [&str; 5] = ["Berlin", "Paris", "Oslo", "Lisbon", "Prague"];

impl Dialect {
    /// The server's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Cap => "SAP CAP",
            Dialect::JayStack => "JayStack odata-v4-server",
            Dialect::Odatapy => "odatapy",
        }
    }

    /// The key property of `Customers`.
    pub fn key(self) -> &'static str {
        match self {
            Dialect::JayStack => "Id",
            Dialect::Cap | Dialect::Odatapy => "ID",
        }
    }

    /// A string property every entity has.
    pub fn name_property(self) -> &'static str {
        match self {
            Dialect::JayStack => "Name",
            Dialect::Cap | Dialect::Odatapy => "name",
        }
    }

    /// A new entity with key `id` and random values.
    pub fn new_entity(self, rng: &mut Rng, id: i64) -> Value {
        match self {
            Dialect::Cap => json!({
                "ID": id,
                "name": format!("New {id}"),
                "email": format!("n{id}@example.com"),
                "city": rng.pick(&CITIES),
                "balance": cap_decimal(rng),
                "score": rng.between(0, 999),
                "birthday": format!("19{:02}-{:02}-{:02}", rng.between(30, 99), rng.between(1, 12), rng.between(1, 28)),
            }),
            Dialect::JayStack => json!({
                "Id": id,
                "Name": format!("New {id}"),
                "City": rng.pick(&CITIES),
                "Score": rng.between(0, 999),
                "Active": rng.chance(50),
            }),
            Dialect::Odatapy => json!({
                "ID": id,
                "name": format!("New {id}"),
                "city": rng.pick(&CITIES),
                "balance": number_decimal(rng),
                "score": rng.between(0, 999),
            }),
        }
    }

    /// A non-empty random subset of the writable properties. Some patches write a value the row
    /// already holds: CAP still moves `modifiedAt`, so the row has changed all the same; on the
    /// other servers the row stays as it was and must not be reported.
    pub fn random_patch(self, rng: &mut Rng) -> Value {
        let mut patch = serde_json::Map::new();
        while patch.is_empty() {
            match self {
                Dialect::Cap => {
                    if rng.chance(40) {
                        patch.insert("name".into(), json!(format!("Renamed {}", rng.below(1000))));
                    }
                    if rng.chance(40) {
                        patch.insert("city".into(), json!(rng.pick(&CITIES)));
                    }
                    if rng.chance(30) {
                        patch.insert("balance".into(), cap_decimal(rng));
                    }
                    if rng.chance(30) {
                        patch.insert("score".into(), json!(rng.between(0, 999)));
                    }
                    if rng.chance(10) {
                        patch.insert("email".into(), Value::Null);
                    }
                }
                Dialect::JayStack => {
                    if rng.chance(40) {
                        patch.insert("Name".into(), json!(format!("Renamed {}", rng.below(1000))));
                    }
                    if rng.chance(40) {
                        patch.insert("City".into(), json!(rng.pick(&CITIES)));
                    }
                    if rng.chance(30) {
                        patch.insert("Score".into(), json!(rng.between(0, 999)));
                    }
                    if rng.chance(20) {
                        patch.insert("Active".into(), json!(rng.chance(50)));
                    }
                }
                Dialect::Odatapy => {
                    if rng.chance(40) {
                        patch.insert("name".into(), json!(format!("Renamed {}", rng.below(1000))));
                    }
                    if rng.chance(40) {
                        patch.insert("city".into(), json!(rng.pick(&CITIES)));
                    }
                    if rng.chance(30) {
                        patch.insert("balance".into(), number_decimal(rng));
                    }
                    if rng.chance(30) {
                        patch.insert("score".into(), json!(rng.between(0, 999)));
                    }
                    if rng.chance(10) {
                        patch.insert("city".into(), Value::Null);
                    }
                }
            }
        }
        Value::Object(patch)
    }
}

/// A Decimal(15,2), written as CAP writes it (a string) or as a JSON number; CAP accepts both
/// and answers with a string either way.
fn cap_decimal(rng: &mut Rng) -> Value {
    let cents = rng.between(0, 9_999_999);
    if rng.chance(50) {
        json!(format!("{}.{:02}", cents / 100, cents % 100))
    } else {
        json!(cents as f64 / 100.0)
    }
}

/// A Decimal(15,2) as a JSON number (odatapy answers with numbers unless asked for
/// `IEEE754Compatible=true`).
fn number_decimal(rng: &mut Rng) -> Value {
    json!(rng.between(0, 9_999_999) as f64 / 100.0)
}

/// A server's own OData API for `Customers`.
#[derive(Clone)]
pub struct Api {
    /// The service root.
    pub base: String,
    /// Which server.
    pub dialect: Dialect,
    client: Client,
}

impl Api {
    /// The API of the service at `base`.
    pub fn new(base: &str, dialect: Dialect) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            dialect,
            client: Client::default(),
        }
    }

    /// `base/Customers` + `rest` (a key predicate, a query).
    pub fn url(&self, rest: &str) -> String {
        format!("{}/Customers{rest}", self.base)
    }

    /// The key of an entity.
    pub fn id_of(&self, entity: &Value) -> i64 {
        entity[self.dialect.key()]
            .as_i64()
            .unwrap_or_else(|| panic!("an entity without an integer key: {entity}"))
    }

    async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Resp {
        let (headers, body): (&[(&str, &str)], Vec<u8>) = match body {
            Some(b) => (
                &[("Content-Type", "application/json")],
                serde_json::to_vec(b).expect("serializable"),
            ),
            None => (&[], Vec::new()),
        };
        self.client.send(method, url, headers, body).await
    }

    /// Every entity of `Customers{query}` without control information (`@odata.id`, …),
    /// following the server's nextLinks (relative or absolute) to the end.
    pub async fn read_all(&self, query: &str) -> Vec<Value> {
        let mut url = self.url(query);
        let mut rows = Vec::new();
        for _ in 0..100_000 {
            let r = self.client.get(&url, &[]).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{} GET {url}: {}",
                self.dialect.name(),
                r.text()
            );
            let page = r.json();
            rows.extend(
                page["value"]
                    .as_array()
                    .expect("value array")
                    .iter()
                    .cloned()
                    .map(without_control),
            );
            match page["@odata.nextLink"].as_str() {
                Some(next) if next.starts_with("http") => url = next.to_owned(),
                Some(next) => url = format!("{}/{next}", self.base),
                None => return rows,
            }
        }
        panic!("{}'s nextLinks did not end: {url}", self.dialect.name());
    }

    /// `read_all` keyed by the key.
    pub async fn rows_by_id(&self, query: &str) -> BTreeMap<i64, Value> {
        self.read_all(query)
            .await
            .into_iter()
            .map(|r| (self.id_of(&r), r))
            .collect()
    }

    /// The entity with this key, or `None` when the server answers 404.
    pub async fn get(&self, id: i64) -> Option<Value> {
        let r = self.client.get(&self.url(&format!("({id})")), &[]).await;
        match r.status {
            StatusCode::OK => Some(without_control(r.json())),
            StatusCode::NOT_FOUND => None,
            other => panic!(
                "{} GET Customers({id}): {other} {}",
                self.dialect.name(),
                r.text()
            ),
        }
    }

    /// POST a new entity; it must carry its key (CAP answers a POST without one with the wrong
    /// row, the others have no key generation here). Returns the server's answer.
    pub async fn insert(&self, entity: &Value) -> Value {
        assert!(
            entity[self.dialect.key()].is_i64(),
            "a POST needs a key: {entity}"
        );
        let r = self.send(Method::POST, &self.url(""), Some(entity)).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{} POST {entity}: {}",
            self.dialect.name(),
            r.text()
        );
        r.json()
    }

    /// PATCH an existing entity.
    pub async fn patch(&self, id: i64, patch: &Value) {
        let url = self.url(&format!("({id})"));
        let r = self.send(Method::PATCH, &url, Some(patch)).await;
        assert!(
            matches!(r.status.as_u16(), 200 | 204),
            "{} PATCH Customers({id}) {patch}: {} {}",
            self.dialect.name(),
            r.status,
            r.text()
        );
    }

    /// DELETE an existing entity.
    pub async fn delete(&self, id: i64) {
        let r = self
            .send(Method::DELETE, &self.url(&format!("({id})")), None)
            .await;
        assert_eq!(
            r.status,
            StatusCode::NO_CONTENT,
            "{} DELETE Customers({id}): {}",
            self.dialect.name(),
            r.text()
        );
    }
}

/// An entity without its control information (`@odata.id`, `@odata.editLink`, `@odata.etag`,
/// `@odata.context`, …), as a replica keeps it.
pub fn without_control(mut entity: Value) -> Value {
    if let Some(obj) = entity.as_object_mut() {
        obj.retain(|k, _| !k.contains('@'));
    }
    entity
}

/// A real server started for a test, behind the gateway.
pub trait Upstream {
    /// Its own API.
    fn api(&self) -> Api;
    /// The lines of its request log that contain `needle`.
    fn requests_with(&self, needle: &str) -> Vec<String>;
    /// The path of its service root, which the gateway serves as well (`/odata`, or empty).
    fn root_path(&self) -> String {
        let base = self.api().base;
        let rest = base.split_once("://").map_or("", |(_, r)| r);
        rest.find('/')
            .map_or(String::new(), |at| rest[at..].to_owned())
    }
}

impl Upstream for crate::cap::Cap {
    fn api(&self) -> Api {
        crate::cap::Cap::api(self)
    }
    fn requests_with(&self, needle: &str) -> Vec<String> {
        self.log_lines_with(needle)
    }
}

impl Upstream for crate::servers::ScriptServer {
    fn api(&self) -> Api {
        crate::servers::ScriptServer::api(self)
    }
    fn requests_with(&self, needle: &str) -> Vec<String> {
        crate::servers::ScriptServer::requests_with(self, needle)
    }
}
