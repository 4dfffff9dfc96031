//! Black-box tests of keys and entity-ids: what the gateway learns from `$metadata` (composite keys,
//! every Edm type real services key by, aliases, `BaseType` inheritance, several schemas), what
//! `gateway.toml` adds (`key`, `ignore`), and what happens to a set whose key cannot be found.
//! Test names say the behaviour; comments cite CONFORMANCE.md rules.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::gateway::{BehindGateway, Client, Gateway, GatewayProcess, TRACK};
use support::{EntitySetDef, FakeUpstream, Faults, PageHooks};

const ROOT: &str = "/odata/v4/shop";

fn values(page: &Value) -> &Vec<Value> {
    page["value"].as_array().expect("value array")
}

/// The 4.0 tombstones of a delta page (C16): their `id`s.
fn tombstone_ids_4_0(page: &Value) -> Vec<String> {
    values(page)
        .iter()
        .filter(|e| {
            e["@odata.context"]
                .as_str()
                .is_some_and(|c| c.ends_with("/$deletedEntity"))
        })
        .map(|e| e["id"].as_str().expect("tombstone id").to_owned())
        .collect()
}

// ------------------------------------------------------------------ composite keys

#[tokio::test]
async fn composite_keys_give_named_entity_ids_and_4_01_tombstones_with_every_key_property_c16_c17()
{
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Int32")
            .key("Line", "Edm.Int32")
            .property("qty", "Edm.Int32"),
    );
    for (id, line) in [(1, 1), (1, 2), (2, 1)] {
        up.insert("Orders", json!({"ID": id, "Line": line, "qty": 10}));
    }
    let BehindGateway { up, gw, client } = BehindGateway::over(up).await;
    let (entities, link) = client
        .read_tracked(&gw.url(&format!("{ROOT}/Orders")))
        .await;
    assert_eq!(entities.len(), 3);

    up.delete("Orders", json!({"ID": 1, "Line": 2}));
    up.update("Orders", json!({"ID": 2, "Line": 1}), json!({"qty": 11}));

    let page = client.delta_page(&link, false).await;
    assert_eq!(tombstone_ids_4_0(&page), ["Orders(ID=1,Line=2)"], "{page}");
    let changed: Vec<&Value> = values(&page)
        .iter()
        .filter(|e| e.get("id").is_none())
        .collect();
    assert_eq!(changed, [&json!({"ID": 2, "Line": 1, "qty": 11})]);

    // The same link again, in 4.01: `@removed` first, then `@id`, then the key properties.
    let r = client.get(&link, &[("OData-MaxVersion", "4.01")]).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains(
            r#"{"@removed":{"reason":"deleted"},"@id":"Orders(ID=1,Line=2)","ID":1,"Line":2}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn composite_string_keys_with_commas_and_quotes_are_confirmed_not_falsely_removed_c27() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Docs", "Doc")
            .key("Region", "Edm.String")
            .key("No", "Edm.Int64")
            .property("n", "Edm.Int32"),
    );
    let rows = [("A,B=1", 1), ("O'Neil (x)", 2), ("Z", 3)];
    for (region, no) in rows {
        up.insert("Docs", json!({"Region": region, "No": no, "n": 0}));
    }
    let BehindGateway { up, gw, client } = BehindGateway::over(up).await;
    let (_, link) = client.read_tracked(&gw.url(&format!("{ROOT}/Docs"))).await;

    // The upstream silently drops the last entity from every answer: the gateway must find it
    // with a key lookup instead of reporting it removed.
    up.set_truncate_after(Some(2));
    let page = client.delta_page(&link, false).await;
    assert_eq!(values(&page), &Vec::<Value>::new(), "{page}");
    let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();
    up.set_truncate_after(None);

    up.delete("Docs", json!({"Region": "O'Neil (x)", "No": 2}));
    up.delete("Docs", json!({"Region": "A,B=1", "No": 1}));
    let page = client.delta_page(&link, false).await;
    let mut ids = tombstone_ids_4_0(&page);
    ids.sort();
    assert_eq!(
        ids,
        [
            "Docs(Region='A,B=1',No=1)",
            "Docs(Region='O''Neil (x)',No=2)"
        ],
        "{page}"
    );
}

// ------------------------------------------------------------------ every key type

/// One key type and the entity-ids its values must give (C16).
struct KeyCase {
    edm_type: &'static str,
    /// Values as the upstream sends them, in key order.
    values: Vec<Value>,
    /// The key literal of each value inside `Things(…)`.
    literals: Vec<&'static str>,
}

fn key_cases() -> Vec<KeyCase> {
    vec![
        KeyCase {
            edm_type: "Edm.Int16",
            values: vec![json!(-3), json!(7), json!(32767)],
            literals: vec!["-3", "7", "32767"],
        },
        KeyCase {
            edm_type: "Edm.Int32",
            values: vec![json!(0), json!(42), json!(2147483647)],
            literals: vec!["0", "42", "2147483647"],
        },
        KeyCase {
            edm_type: "Edm.Int64",
            values: vec![json!(1), json!(9007199254740993_i64), json!(i64::MAX)],
            literals: vec!["1", "9007199254740993", "9223372036854775807"],
        },
        // Int64 with IEEE754Compatible=true arrives as a JSON string; the literal is still bare.
        KeyCase {
            edm_type: "Edm.Int64",
            values: vec![
                json!("2"),
                json!("9007199254740993"),
                json!("90071992547409930"),
            ],
            literals: vec!["2", "9007199254740993", "90071992547409930"],
        },
        KeyCase {
            edm_type: "Edm.String",
            values: vec![json!("Berlin"), json!("O'Neil"), json!("x''y")],
            literals: vec!["'Berlin'", "'O''Neil'", "'x''''y'"],
        },
        // Characters that delimit URLs must not break the removal check's query.
        KeyCase {
            edm_type: "Edm.String",
            values: vec![json!("a&b=c"), json!("d#e+f g"), json!("ü/ß?x;%25")],
            literals: vec!["'a&b=c'", "'d#e+f g'", "'ü/ß?x;%25'"],
        },
        KeyCase {
            edm_type: "Edm.Guid",
            values: vec![
                json!("0d8f5b3c-7d0e-4a1b-9c2d-3e4f5a6b7c8d"),
                json!("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
                json!("f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f"),
            ],
            literals: vec![
                "0d8f5b3c-7d0e-4a1b-9c2d-3e4f5a6b7c8d",
                "6f9619ff-8b86-d011-b42d-00c04fc964ff",
                "f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f",
            ],
        },
        KeyCase {
            edm_type: "Edm.Date",
            values: vec![
                json!("2023-12-31"),
                json!("2024-01-31"),
                json!("2024-02-29"),
            ],
            literals: vec!["2023-12-31", "2024-01-31", "2024-02-29"],
        },
        KeyCase {
            edm_type: "Edm.DateTimeOffset",
            values: vec![
                json!("2024-01-31T10:20:30Z"),
                json!("2024-01-31T10:20:30.123Z"),
                json!("2024-06-01T08:00:00+02:00"),
            ],
            literals: vec![
                "2024-01-31T10:20:30Z",
                "2024-01-31T10:20:30.123Z",
                "2024-06-01T08:00:00+02:00",
            ],
        },
        KeyCase {
            edm_type: "Edm.Decimal",
            values: vec![json!(-1.5), json!(12.25), json!(100)],
            literals: vec!["-1.5", "12.25", "100"],
        },
        // SAP CAP sends decimals as JSON strings to keep their precision; the literal is bare.
        KeyCase {
            edm_type: "Edm.Decimal",
            values: vec![json!("1.50"), json!("12.25"), json!("100.00")],
            literals: vec!["1.50", "12.25", "100.00"],
        },
        KeyCase {
            edm_type: "Edm.Boolean",
            values: vec![json!(false), json!(true)],
            literals: vec!["false", "true"],
        },
    ]
}

/// For one key type: the initial read holds every entity; an upstream that silently leaves out the
/// last entity causes no false tombstone (the removal check writes the type's literals, C27); an
/// update shows the entity with its key (C19); a delete gives the entity-id with the literal of the
/// type in 4.0 (C16) and `@id` plus the key property as sent in 4.01 (C17).
async fn check_key_type(case: &KeyCase) {
    let what = format!("{} {:?}", case.edm_type, case.values);
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Things", "Thing")
            .key("K", case.edm_type)
            .property("n", "Edm.Int32"),
    );
    for v in &case.values {
        up.insert("Things", json!({"K": v, "n": 0}));
    }
    let BehindGateway { up, gw, client } = BehindGateway::over(up).await;
    let (entities, link) = client
        .read_tracked(&gw.url(&format!("{ROOT}/Things")))
        .await;
    assert_eq!(entities.len(), case.values.len(), "{what}");

    let last = case.values.len() - 1;
    up.set_truncate_after(Some(last));
    let page = client.delta_page(&link, false).await;
    assert_eq!(values(&page), &Vec::<Value>::new(), "{what}: {page}");
    let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();
    up.set_truncate_after(None);

    up.update("Things", case.values[0].clone(), json!({"n": 5}));
    assert!(up.delete("Things", case.values[last].clone()), "{what}");
    let expected_id = format!("Things({})", case.literals[last]);

    let page = client.delta_page(&link, false).await;
    assert_eq!(
        tombstone_ids_4_0(&page),
        std::slice::from_ref(&expected_id),
        "{what}: {page}"
    );
    let changed: Vec<&Value> = values(&page)
        .iter()
        .filter(|e| e.get("id").is_none())
        .collect();
    assert_eq!(
        changed,
        [&json!({"K": case.values[0], "n": 5})],
        "{what}: {page}"
    );

    let page = client.delta_page(&link, true).await;
    let tomb = values(&page)
        .iter()
        .find(|e| e.get("@removed").is_some())
        .unwrap_or_else(|| panic!("{what}: no 4.01 tombstone in {page}"));
    assert_eq!(tomb["@id"], json!(expected_id), "{what}");
    assert_eq!(
        tomb["K"], case.values[last],
        "{what}: key as the upstream sent it"
    );
}

#[tokio::test]
async fn every_key_type_gives_entity_ids_with_its_literal_form_c16_c17_c27() {
    for case in key_cases() {
        check_key_type(&case).await;
    }
}

// ------------------------------------------------------------------ keys from $metadata

/// The EDMX envelope around some schemas, with a vocabulary reference as real services send.
fn edmx(schemas: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
  <edmx:Reference Uri="https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Core.V1.xml">
    <edmx:Include Namespace="Org.OData.Core.V1" Alias="Core"/>
  </edmx:Reference>
  <edmx:DataServices>
{schemas}
  </edmx:DataServices>
</edmx:Edmx>"#
    )
}

/// Track `set`, delete the entity with `key`, and return the 4.0 tombstone ids of the delta (or
/// panic when the set was not tracked).
async fn tombstones_after_delete(
    up: &FakeUpstream,
    gw: &Gateway,
    set: &str,
    key: Value,
) -> Vec<String> {
    let client = Client::default();
    let (_, link) = client.read_tracked(&gw.url(&format!("{ROOT}/{set}"))).await;
    assert!(up.delete(set, key));
    tombstone_ids_4_0(&client.delta_page(&link, false).await)
}

#[tokio::test]
async fn keys_are_found_through_a_schema_alias_like_sap_self() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("SalesOrder", "SalesOrderType")
            .key("SalesOrderUUID", "Edm.Guid")
            .key("IsActiveEntity", "Edm.Boolean")
            .property("SalesOrder", "Edm.String"),
    );
    let a = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
    let b = "0d8f5b3c-7d0e-4a1b-9c2d-3e4f5a6b7c8d";
    for uuid in [a, b] {
        up.insert(
            "SalesOrder",
            json!({"SalesOrderUUID": uuid, "IsActiveEntity": true, "SalesOrder": "1"}),
        );
    }
    up.set_metadata(edmx(
        r#"    <Schema Namespace="com.sap.gateway.srvd.zui_salesorder.v0001" Alias="SAP__self" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="SalesOrderType">
        <Key>
          <PropertyRef Name="SalesOrderUUID"/>
          <PropertyRef Name="IsActiveEntity"/>
        </Key>
        <Property Name="SalesOrderUUID" Type="Edm.Guid" Nullable="false"/>
        <Property Name="IsActiveEntity" Type="Edm.Boolean" Nullable="false"/>
        <Property Name="SalesOrder" Type="Edm.String" MaxLength="10"/>
      </EntityType>
      <EntityContainer Name="Container">
        <EntitySet Name="SalesOrder" EntityType="SAP__self.SalesOrderType"/>
      </EntityContainer>
      <Annotations Target="SAP__self.SalesOrderType/SalesOrder">
        <Annotation Term="Core.Computed" Bool="true"/>
      </Annotations>
    </Schema>"#,
    ));
    let gw = Gateway::start(&up.base_url()).await;
    let ids = tombstones_after_delete(
        &up,
        &gw,
        "SalesOrder",
        json!({"SalesOrderUUID": a, "IsActiveEntity": true}),
    )
    .await;
    assert_eq!(
        ids,
        [format!(
            "SalesOrder(SalesOrderUUID={a},IsActiveEntity=true)"
        )]
    );
}

#[tokio::test]
async fn a_key_declared_on_a_base_type_is_inherited_through_several_levels() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("CreditNotes", "CreditNote")
            .key("Region", "Edm.String")
            .key("No", "Edm.Int64")
            .property("amount", "Edm.Decimal")
            .property("reason", "Edm.String"),
    );
    for no in 1..=3 {
        up.insert(
            "CreditNotes",
            json!({"Region": "EU", "No": no, "amount": "1.00", "reason": "x"}),
        );
    }
    // CreditNote → Invoice → Document: only the abstract root declares the key; the key
    // property's type is a TypeDefinition over Edm.String.
    up.set_metadata(edmx(
        r#"    <Schema Namespace="com.example.sales" Alias="S" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <TypeDefinition Name="RegionCode" UnderlyingType="Edm.String" MaxLength="4"/>
      <EntityType Name="Document" Abstract="true">
        <Key><PropertyRef Name="Region"/><PropertyRef Name="No"/></Key>
        <Property Name="Region" Type="S.RegionCode" Nullable="false"/>
        <Property Name="No" Type="Edm.Int64" Nullable="false"/>
      </EntityType>
      <EntityType Name="Invoice" BaseType="S.Document">
        <Property Name="amount" Type="Edm.Decimal" Scale="2" Precision="15"/>
      </EntityType>
      <EntityType Name="CreditNote" BaseType="com.example.sales.Invoice">
        <Property Name="reason" Type="Edm.String"/>
      </EntityType>
      <EntityContainer Name="Sales">
        <EntitySet Name="CreditNotes" EntityType="S.CreditNote"/>
      </EntityContainer>
    </Schema>"#,
    ));
    let gw = Gateway::start(&up.base_url()).await;
    let ids =
        tombstones_after_delete(&up, &gw, "CreditNotes", json!({"Region": "EU", "No": 2})).await;
    assert_eq!(ids, ["CreditNotes(Region='EU',No=2)"]);
}

#[tokio::test]
async fn the_container_and_the_entity_types_may_live_in_different_schemas() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Products", "Product")
            .key("ID", "Edm.Guid")
            .property("name", "Edm.String"),
    );
    up.define_set(
        EntitySetDef::new("Stock", "StockEntry")
            .key("Product", "Edm.Guid")
            .key("Day", "Edm.Date")
            .property("qty", "Edm.Int32"),
    );
    let p1 = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
    let p2 = "0d8f5b3c-7d0e-4a1b-9c2d-3e4f5a6b7c8d";
    for p in [p1, p2] {
        up.insert("Products", json!({"ID": p, "name": "n"}));
        up.insert(
            "Stock",
            json!({"Product": p, "Day": "2024-02-29", "qty": 1}),
        );
    }
    // Types in two schemas (one derives from the other across schemas, by alias), the container
    // in a third that names the types by namespace and by alias.
    up.set_metadata(edmx(
        r#"    <Schema Namespace="Catalog.Base" Alias="Base" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="Identified" Abstract="true">
        <Key><PropertyRef Name="ID"/></Key>
        <Property Name="ID" Type="Edm.Guid" Nullable="false"/>
      </EntityType>
    </Schema>
    <Schema Namespace="Catalog.Model" Alias="M" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="Product" BaseType="Base.Identified">
        <Property Name="name" Type="Edm.String"/>
      </EntityType>
      <EntityType Name="StockEntry">
        <Key><PropertyRef Name="Product"/><PropertyRef Name="Day"/></Key>
        <Property Name="Product" Type="Edm.Guid" Nullable="false"/>
        <Property Name="Day" Type="Edm.Date" Nullable="false"/>
        <Property Name="qty" Type="Edm.Int32"/>
      </EntityType>
    </Schema>
    <Schema Namespace="Catalog.Service" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityContainer Name="CatalogService">
        <EntitySet Name="Products" EntityType="Catalog.Model.Product"/>
        <EntitySet Name="Stock" EntityType="M.StockEntry"/>
      </EntityContainer>
    </Schema>"#,
    ));
    let gw = Gateway::start(&up.base_url()).await;
    let ids = tombstones_after_delete(&up, &gw, "Products", json!(p2)).await;
    assert_eq!(ids, [format!("Products({p2})")]);
    let ids = tombstones_after_delete(
        &up,
        &gw,
        "Stock",
        json!({"Product": p1, "Day": "2024-02-29"}),
    )
    .await;
    assert_eq!(ids, [format!("Stock(Product={p1},Day=2024-02-29)")]);
}

// ------------------------------------------------------------------ keys from gateway.toml

/// `$metadata` whose `Things` type declares no key (as some views and legacy services do).
fn keyless_things_metadata() -> String {
    edmx(
        r#"    <Schema Namespace="Legacy" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="Thing">
        <Property Name="Code" Type="Edm.String"/>
        <Property Name="n" Type="Edm.Int32"/>
      </EntityType>
      <EntityContainer Name="C">
        <EntitySet Name="Things" EntityType="Legacy.Thing"/>
      </EntityContainer>
    </Schema>"#,
    )
}

async fn things_upstream(codes: &[&str]) -> FakeUpstream {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Things", "Thing")
            .key("Code", "Edm.String")
            .property("n", "Edm.Int32"),
    );
    for code in codes {
        up.insert("Things", json!({"Code": code, "n": 0}));
    }
    up
}

fn route_with_key(upstream: &str, key: &str) -> String {
    format!("[[route]]\nupstream = \"{upstream}\"\n\n[route.sets.Things]\nkey = [{key}]\n")
}

#[tokio::test]
async fn a_configured_key_tracks_a_set_whose_metadata_declares_no_key() {
    let up = things_upstream(&["A-1", "B'2", "C"]).await;
    up.set_metadata(keyless_things_metadata());
    let toml = route_with_key(&up.base_url(), r#""Code""#);
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let ids = tombstones_after_delete(&up, &gw, "Things", json!("B'2")).await;
    // Without a type from $metadata, a string value is written as a string literal.
    assert_eq!(ids, ["Things('B''2')"]);
}

#[tokio::test]
async fn a_configured_key_with_a_type_writes_literals_of_that_type() {
    let a = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
    let b = "0d8f5b3c-7d0e-4a1b-9c2d-3e4f5a6b7c8d";
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Things", "Thing")
            .key("Code", "Edm.Guid")
            .property("n", "Edm.Int32"),
    );
    up.insert("Things", json!({"Code": a, "n": 0}));
    up.insert("Things", json!({"Code": b, "n": 0}));
    up.set_metadata(keyless_things_metadata());
    let toml = route_with_key(&up.base_url(), r#""Code:Edm.Guid""#);
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let ids = tombstones_after_delete(&up, &gw, "Things", json!(a)).await;
    assert_eq!(
        ids,
        [format!("Things({a})")],
        "a GUID literal is not quoted"
    );
}

#[tokio::test]
async fn a_configured_key_wins_over_the_metadata_key() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Things", "Thing")
            .key("ID", "Edm.Int32")
            .property("Code", "Edm.String"),
    );
    up.insert("Things", json!({"ID": 1, "Code": "one"}));
    up.insert("Things", json!({"ID": 2, "Code": "two"}));
    let toml = route_with_key(&up.base_url(), r#""Code""#);
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let ids = tombstones_after_delete(&up, &gw, "Things", json!(2)).await;
    assert_eq!(ids, ["Things('two')"]);
}

#[tokio::test]
async fn a_configured_key_tracks_a_set_of_an_upstream_without_metadata() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Things", "Thing")
            .key("ID", "Edm.Int64")
            .property("n", "Edm.Int32"),
    );
    up.insert_many("Things", (1..=3).map(|i| json!({"ID": i, "n": 0})));
    up.set_metadata_missing(true);
    let client = Client::default();
    assert_eq!(client.get(&up.url("$metadata"), &[]).await.status, 404);

    let toml = format!(
        "[[route]]\nupstream = \"{}\"\n[route.sets.Things]\nkey = [\"ID\"]\n",
        up.base_url()
    );
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let ids = tombstones_after_delete(&up, &gw, "Things", json!(3)).await;
    assert_eq!(ids, ["Things(3)"], "a number value is written as a number");
}

// ------------------------------------------------------------------ no key: pass-through

/// The gateway's answer to a tracked read must be the upstream's own: same status and body, no
/// `Preference-Applied`, no delta link (C2).
async fn assert_passed_through_untracked(gw_url: &str, upstream_url: &str) {
    let client = Client::default();
    let through = client.get(gw_url, &TRACK).await;
    let direct = client.get(upstream_url, &TRACK).await;
    assert_eq!(through.status, 200, "{}", through.text());
    assert_eq!(through.status, direct.status);
    assert_eq!(through.header("preference-applied"), None);
    let body = through.json();
    assert!(body.get("@odata.deltaLink").is_none(), "{body}");
    assert_eq!(body, direct.json(), "the upstream's answer, unchanged");
}

#[tokio::test]
async fn a_set_without_a_usable_key_is_passed_through_and_the_log_says_how_to_fix_it_c2() {
    let up = things_upstream(&["A", "B"]).await;
    up.set_metadata(keyless_things_metadata());
    let (_dir, data) = support::gateway::data_dir();
    let gw = GatewayProcess::spawn(&up.base_url(), &data, &[]);
    assert_passed_through_untracked(&gw.url(&format!("{ROOT}/Things")), &up.url("Things")).await;
    let line = gw
        .wait_for_stderr(Duration::from_secs(5), |l| {
            l.contains("Things") && l.contains("[route.sets.Things] key")
        })
        .unwrap_or_else(|| {
            panic!(
                "no log line names the set and the fix: {:#?}",
                gw.stderr_lines()
            )
        });
    assert!(
        line.contains("--upstream"),
        "names where the route comes from: {line}"
    );
}

#[tokio::test]
async fn a_set_of_a_config_file_route_without_a_key_logs_the_file_and_line_to_edit_c2() {
    let up = things_upstream(&["A", "B"]).await;
    up.set_metadata(keyless_things_metadata());
    let (dir, data) = support::gateway::data_dir();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "# gateway for the test\npage_size = 100\n\n[[route]]\nupstream = \"{}\"\n",
            up.base_url()
        ),
    )
    .unwrap();
    let data_arg = data.join("store");
    let args: Vec<&std::ffi::OsStr> = vec![
        "--config".as_ref(),
        config.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data_arg.as_os_str(),
    ];
    let gw = GatewayProcess::spawn_with(&args, &[]);
    assert_passed_through_untracked(&gw.url(&format!("{ROOT}/Things")), &up.url("Things")).await;
    let place = format!("{}:4", config.display());
    let line = gw
        .wait_for_stderr(Duration::from_secs(5), |l| {
            l.contains("[route.sets.Things] key") && l.contains(&place)
        })
        .unwrap_or_else(|| {
            panic!(
                "no log line names the fix and {place}: {:#?}",
                gw.stderr_lines()
            )
        });
    assert!(line.contains("Things"), "{line}");
}

#[tokio::test]
async fn a_set_of_an_upstream_without_metadata_and_without_a_configured_key_is_passed_through_c2() {
    let up = things_upstream(&["A", "B"]).await;
    up.set_metadata_missing(true);
    let (_dir, data) = support::gateway::data_dir();
    let gw = GatewayProcess::spawn(&up.base_url(), &data, &[]);
    assert_passed_through_untracked(&gw.url(&format!("{ROOT}/Things")), &up.url("Things")).await;
    gw.wait_for_stderr(Duration::from_secs(5), |l| {
        l.contains("Things") && l.contains("[route.sets.Things] key")
    })
    .unwrap_or_else(|| {
        panic!(
            "no log line names the set and the fix: {:#?}",
            gw.stderr_lines()
        )
    });
}

#[tokio::test]
async fn unreadable_metadata_passes_tracked_reads_through_c2() {
    let up = things_upstream(&["A", "B"]).await;
    up.set_metadata("<html><body>Service Unavailable</body>".into());
    let gw = Gateway::start(&up.base_url()).await;
    assert_passed_through_untracked(&gw.url(&format!("{ROOT}/Things")), &up.url("Things")).await;
}

#[tokio::test]
async fn a_name_that_is_no_entity_set_in_metadata_is_passed_through_c2() {
    let up = things_upstream(&["A"]).await;
    up.set_metadata(edmx(
        r#"    <Schema Namespace="Shop" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="Thing">
        <Key><PropertyRef Name="Code"/></Key>
        <Property Name="Code" Type="Edm.String" Nullable="false"/>
      </EntityType>
      <EntityContainer Name="C">
        <EntitySet Name="Things" EntityType="Shop.Thing"/>
        <Singleton Name="Me" Type="Shop.Thing"/>
        <FunctionImport Name="TopThings" Function="Shop.TopThings"/>
      </EntityContainer>
    </Schema>"#,
    ));
    let BehindGateway { up, gw, client } = BehindGateway::over(up).await;
    for name in ["Me", "TopThings"] {
        let through = client.get(&gw.url(&format!("{ROOT}/{name}")), &TRACK).await;
        let direct = client.get(&up.url(name), &TRACK).await;
        assert_eq!(through.status, direct.status, "{name}: {}", through.text());
        assert_eq!(through.header("preference-applied"), None, "{name}");
        assert!(!through.text().contains("deltaLink"), "{name}");
    }
}

// ------------------------------------------------------------------ ignore

#[tokio::test]
async fn ignored_properties_alone_do_not_make_a_change_but_travel_with_real_changes() {
    let up = FakeUpstream::start().await;
    up.define_set(
        EntitySetDef::new("Customers", "Customer")
            .key("ID", "Edm.Int32")
            .property("name", "Edm.String")
            .property("modifiedAt", "Edm.DateTimeOffset"),
    );
    let at = |s: u32| format!("2024-05-01T10:00:{s:02}Z");
    up.insert_many(
        "Customers",
        (1..=4).map(|i| json!({"ID": i, "name": format!("c{i}"), "modifiedAt": at(0)})),
    );
    let toml = format!(
        "[[route]]\nupstream = \"{}\"\n[route.sets.Customers]\nignore = [\"modifiedAt\"]\n",
        up.base_url()
    );
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let client = Client::default();
    let (_, link) = client
        .read_tracked(&gw.url(&format!("{ROOT}/Customers")))
        .await;

    // Only the volatile timestamp moves: no change.
    for i in 1..=4 {
        up.update("Customers", json!(i), json!({"modifiedAt": at(1)}));
    }
    let page = client.delta_page(&link, false).await;
    assert_eq!(values(&page), &Vec::<Value>::new(), "{page}");
    let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();

    // A real change shows, with the current value of the ignored property; a delete still shows.
    up.update(
        "Customers",
        json!(2),
        json!({"name": "renamed", "modifiedAt": at(2)}),
    );
    up.update("Customers", json!(3), json!({"modifiedAt": at(3)}));
    up.delete("Customers", json!(4));
    let page = client.delta_page(&link, false).await;
    assert_eq!(tombstone_ids_4_0(&page), ["Customers(4)"], "{page}");
    let changed: Vec<&Value> = values(&page)
        .iter()
        .filter(|e| e.get("id").is_none())
        .collect();
    assert_eq!(
        changed,
        [&json!({"ID": 2, "name": "renamed", "modifiedAt": at(2)})],
        "{page}"
    );
}

// ------------------------------------------------------------------ key spelling

/// One key value spelled two ways is one entity: an upstream that writes a GUID in upper case or a
/// decimal with a trailing zero in its answers to the removal check (C27), or in a later
/// enumeration, gets no tombstone and no re-add for it; tombstones keep the entity-id as first
/// read (C16).
#[tokio::test]
async fn a_key_spelled_another_way_upstream_is_neither_removed_nor_added_again_c16_c27() {
    let cases: [(&str, [Value; 4]); 2] = [
        (
            "Edm.Guid",
            [
                json!("0d8f5b3c-7d0e-4a1b-9c2d-3e4f5a6b7c8d"),
                json!("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
                json!("a0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f"),
                json!("f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f"),
            ],
        ),
        (
            "Edm.Decimal",
            [json!("1.5"), json!("12.25"), json!("100.5"), json!("7.125")],
        ),
    ];
    for (edm_type, keys) in cases {
        let up = FakeUpstream::start().await;
        up.define_set(
            EntitySetDef::new("Things", "Thing")
                .key("K", edm_type)
                .property("n", "Edm.Int32"),
        );
        for k in &keys {
            up.insert("Things", json!({"K": k, "n": 0}));
        }
        let BehindGateway { up, gw, client } = BehindGateway::over(up).await;
        let (entities, link) = client
            .read_tracked(&gw.url(&format!("{ROOT}/Things")))
            .await;
        assert_eq!(entities.len(), keys.len(), "{edm_type}");

        // The enumeration misses the last entity, so its removal is checked upstream, and the
        // check's answer spells the key another way.
        up.set_count_mode(support::CountMode::Never);
        up.set_truncate_after(Some(keys.len() - 1));
        up.set_hook(|r| {
            let checking = r.request.query_pairs().iter().any(|(n, _)| n == "$filter");
            r.upstream.set_respell_keys(checking);
        });
        let page = client.delta_page(&link, false).await;
        assert_eq!(values(&page), &Vec::<Value>::new(), "{edm_type}: {page}");
        let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();

        // A whole enumeration spelled the other way, then the first way again.
        up.clear_hook();
        up.set_truncate_after(None);
        up.set_count_mode(support::CountMode::EveryPage);
        up.set_respell_keys(true);
        let page = client.delta_page(&link, false).await;
        assert_eq!(values(&page), &Vec::<Value>::new(), "{edm_type}: {page}");
        let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();
        up.set_respell_keys(false);
        let page = client.delta_page(&link, false).await;
        assert_eq!(values(&page), &Vec::<Value>::new(), "{edm_type}: {page}");
        let link = page["@odata.deltaLink"].as_str().unwrap().to_owned();

        // A real delete is still one tombstone, with the literal as first read.
        assert!(up.delete("Things", keys[1].clone()), "{edm_type}");
        let page = client.delta_page(&link, false).await;
        let literal = keys[1].as_str().unwrap();
        assert_eq!(
            tombstone_ids_4_0(&page),
            [format!("Things({literal})")],
            "{edm_type}: {page}"
        );
        assert_eq!(values(&page).len(), 1, "{edm_type}: {page}");
    }
}
