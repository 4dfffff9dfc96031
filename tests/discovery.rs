//! Black-box tests of discoverable tracking (C35): the `$metadata` read through the gateway
//! annotates each entity set with `Org.OData.Capabilities.V1.ChangeTracking` and is otherwise the
//! upstream's document, byte for byte.

mod support;

use support::EntitySetDef;
use support::gateway::{Client, Gateway};
use support::shop::{ROOT, shop};

const TERM: &str = "Org.OData.Capabilities.V1.ChangeTracking";
const REFERENCE: &str = "<edmx:Reference Uri=\"https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Capabilities.V1.xml\"><edmx:Include Namespace=\"Org.OData.Capabilities.V1\"/></edmx:Reference>";

/// The document with what the gateway adds taken out again: each ChangeTracking annotation, the
/// vocabulary reference, and the end tag that opening a self-closed `<EntitySet/>` needed.
fn without_added(text: &str) -> String {
    let mut out = text.replacen(REFERENCE, "", 1);
    let open = format!("<Annotation Term=\"{TERM}\">");
    while let Some(start) = out.find(&open) {
        let end =
            start + out[start..].find("</Annotation>").expect("closed") + "</Annotation>".len();
        let reopened = out[..start].ends_with('>') && out[end..].starts_with("</EntitySet>");
        if reopened {
            out.replace_range(start - 1..end + "</EntitySet>".len(), "/>");
        } else {
            out.replace_range(start..end, "");
        }
    }
    out
}

/// The `Supported` value and listed paths of the ChangeTracking annotation of `set`.
fn change_tracking(
    doc: &roxmltree::Document,
    set: &str,
) -> Option<(String, Vec<String>, Vec<String>)> {
    let annotation = doc
        .descendants()
        .find(|n| n.tag_name().name() == "EntitySet" && n.attribute("Name") == Some(set))?
        .children()
        .find(|n| n.tag_name().name() == "Annotation" && n.attribute("Term") == Some(TERM))?;
    let supported = annotation
        .descendants()
        .find(|n| n.attribute("Property") == Some("Supported"))?
        .attribute("Bool")?
        .to_owned();
    let texts = |kind: &str| {
        annotation
            .descendants()
            .filter(|n| n.tag_name().name() == kind)
            .filter_map(|n| n.text().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    Some((
        supported,
        texts("PropertyPath"),
        texts("NavigationPropertyPath"),
    ))
}

#[tokio::test]
async fn metadata_annotates_trackable_sets_and_keeps_every_other_byte_c35() {
    let up = shop(1).await;
    up.define_set(EntitySetDef::new("Logs", "Log").property("line", "Edm.String"));
    up.define_set(EntitySetDef::new("Things", "Thing").property("code", "Edm.String"));
    let toml = format!(
        "[[route]]\nupstream = \"{}\"\n\n[route.sets.Things]\nkey = [\"code\"]\n",
        up.base_url()
    );
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let client = Client::default();
    let direct = client.get(&up.url("$metadata"), &[]).await;
    let via = client.get(&gw.url(&format!("{ROOT}/$metadata")), &[]).await;
    assert_eq!(via.status, 200, "{}", via.text());
    assert_eq!(via.header("content-type"), direct.header("content-type"));
    assert_eq!(
        via.header("content-length")
            .and_then(|v| v.parse::<usize>().ok()),
        Some(via.body.len())
    );
    let text = via.text();
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");

    let (supported, properties, navigation) =
        change_tracking(&doc, "Customers").expect("annotated");
    assert_eq!(supported, "true");
    // The gateway tracks $filter on any property and any $expand; an omitted list would mean
    // "none" (V ChangeTrackingType), so every property is listed.
    assert_eq!(properties, ["ID", "name", "city", "score"]);
    assert!(navigation.is_empty());
    // No key in $metadata, but one configured: trackable.
    assert_eq!(change_tracking(&doc, "Things").unwrap().0, "true");
    // No key at all: the gateway passes tracked reads through untracked (C2), and says so.
    assert_eq!(change_tracking(&doc, "Logs").unwrap().0, "false");

    // Everything but what was added is the upstream's document, byte for byte.
    assert_eq!(without_added(&text), direct.text());
}

#[tokio::test]
async fn navigation_properties_are_listed_as_expandable_c35() {
    let up = shop(1).await;
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Int32")
            .property("customerID", "Edm.Int32")
            .nav("customer", "Customers", "customerID"),
    );
    let gw = Gateway::start(&up.base_url()).await;
    let via = Client::default()
        .get(&gw.url(&format!("{ROOT}/$metadata")), &[])
        .await;
    let text = via.text();
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let (supported, _, navigation) = change_tracking(&doc, "Orders").expect("annotated");
    assert_eq!(supported, "true");
    assert_eq!(navigation, ["customer"]);
    let direct = Client::default().get(&up.url("$metadata"), &[]).await;
    assert_eq!(without_added(&text), direct.text());
}

#[tokio::test]
async fn a_set_the_service_annotated_itself_is_left_alone_c35() {
    let up = shop(1).await;
    up.define_set(EntitySetDef::new("Logs", "Log").property("line", "Edm.String"));
    let generated = Client::default()
        .get(&up.url("$metadata"), &[])
        .await
        .text();
    let own = format!(
        "<EntitySet Name=\"Customers\" EntityType=\"ShopService.Customer\"><Annotation Term=\"{TERM}\"><Record><PropertyValue Property=\"Supported\" Bool=\"false\"/></Record></Annotation></EntitySet>"
    );
    let start = generated
        .find("<EntitySet Name=\"Customers\"")
        .expect("a Customers set");
    let end = start + generated[start..].find("/>").expect("self-closed") + 2;
    // CRLF line ends, non-ASCII text and the upstream's own address stay as they are.
    let custom = format!(
        "{}{own}{}",
        generated[..start].replacen(
            "?>",
            &format!(
                "?>\r\n<!-- Grüße, 東京, {}/$metadata -->\r\n",
                up.base_url()
            ),
            1
        ),
        &generated[end..]
    );
    up.set_metadata(custom.clone());
    let gw = Gateway::start(&up.base_url()).await;
    let via = Client::default()
        .get(&gw.url(&format!("{ROOT}/$metadata")), &[])
        .await;
    assert_eq!(via.status, 200);
    let text = via.text();
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    // The service's own answer stands, once; the other set is annotated.
    assert_eq!(change_tracking(&doc, "Customers").unwrap().0, "false");
    assert_eq!(
        text.matches(&format!("Term=\"{TERM}\"")).count(),
        2,
        "{text}"
    );
    assert_eq!(change_tracking(&doc, "Logs").unwrap().0, "false");
    assert!(text.contains("<!-- Grüße, 東京, "));
    assert!(text.contains("?>\r\n<!--"));
}

#[tokio::test]
async fn an_annotated_metadata_carries_the_upstreams_etag_in_weak_form_c35() {
    let up = shop(1).await;
    up.set_metadata_etag(Some("\"v7\""));
    let gw = Gateway::start(&up.base_url()).await;
    let via = Client::default()
        .get(&gw.url(&format!("{ROOT}/$metadata")), &[])
        .await;
    assert_eq!(via.status, 200);
    assert!(via.text().contains(TERM));
    // The bytes differ from the upstream's: a strong validator would claim they do not.
    assert_eq!(via.header("etag"), Some("W/\"v7\""));
}

/// The `CallbackProtocols` ids of the `CallbackSupported` annotation of `set`, if it has one.
fn callback_protocols(doc: &roxmltree::Document, set: &str) -> Option<Vec<String>> {
    let annotation = doc
        .descendants()
        .find(|n| n.tag_name().name() == "EntitySet" && n.attribute("Name") == Some(set))?
        .children()
        .find(|n| {
            n.tag_name().name() == "Annotation"
                && n.attribute("Term") == Some("Org.OData.Capabilities.V1.CallbackSupported")
        })?;
    Some(
        annotation
            .descendants()
            .filter(|n| n.attribute("Property") == Some("Id"))
            .filter_map(|n| n.attribute("String").map(str::to_owned))
            .collect(),
    )
}

/// C33 made discoverable: with callbacks allowed, each trackable set refreshed in the background
/// says it honours the callback preference over HTTP; a set without `poll_interval`, an
/// untrackable one, or a gateway that allows no callback host says nothing.
#[tokio::test]
async fn metadata_advertises_callbacks_where_deltas_honour_them_c33_c35() {
    let up = shop(1).await;
    up.define_set(EntitySetDef::new("Logs", "Log").property("line", "Edm.String"));
    up.define_set(
        EntitySetDef::new("Orders", "Order")
            .key("ID", "Edm.Int32")
            .property("total", "Edm.Int32"),
    );
    let client = Client::default();
    let route = format!(
        "[[route]]\nupstream = \"{}\"\npoll_interval = \"10s\"\n\n[route.sets.Orders]\npoll_interval = \"0s\"\n",
        up.base_url()
    );
    let read = |gw: &Gateway| {
        let url = gw.url(&format!("{ROOT}/$metadata"));
        let client = client.clone();
        async move {
            let r = client.get(&url, &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        }
    };
    let toml = format!("[notifications]\nallowed_hosts = [\"hooks.example.com\"]\n\n{route}");
    let gw = Gateway::start_with("", Some(&toml), |_| {}).await;
    let text = read(&gw).await;
    let doc = roxmltree::Document::parse(&text).expect("well-formed");
    assert_eq!(
        callback_protocols(&doc, "Customers"),
        Some(vec!["http".to_owned()]),
        "{text}"
    );
    assert_eq!(callback_protocols(&doc, "Orders"), None, "no poll_interval");
    assert_eq!(callback_protocols(&doc, "Logs"), None, "not trackable");
    assert_eq!(change_tracking(&doc, "Customers").unwrap().0, "true");
    // No allowed host: no callback is ever made, so none is advertised.
    let gw = Gateway::start_with("", Some(&route), |_| {}).await;
    let text = read(&gw).await;
    assert!(!text.contains("CallbackSupported"), "{text}");
}
