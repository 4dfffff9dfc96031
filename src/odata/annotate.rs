//! Discoverable tracking (C35): the `$metadata` a client reads through the gateway says which
//! entity sets answer `Prefer: odata.track-changes`, with `Org.OData.Capabilities.V1.ChangeTracking`.
//! The document is parsed once to find positions; the bytes between insertions are copied as they
//! came, so that everything but the added annotations (and, when missing, the vocabulary
//! reference that makes the term resolvable, CSDL §3.3) stays byte-identical. Sets whose deltas
//! honour the callback preference (C33) also get `Org.OData.Capabilities.V1.CallbackSupported`
//! with the one protocol the gateway calls back with, `http`.

use std::collections::{HashMap, HashSet};

use super::metadata::{ServiceMetadata, SetKey};

/// The qualified name of the term.
const TERM: &str = "Org.OData.Capabilities.V1.ChangeTracking";
/// The qualified name of the callback term.
const CALLBACK_TERM: &str = "Org.OData.Capabilities.V1.CallbackSupported";
/// The vocabulary's namespace and where it is published.
const VOCABULARY: &str = "Org.OData.Capabilities.V1";
const VOCABULARY_URI: &str =
    "https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Capabilities.V1.xml";

/// Annotate every entity set of a CSDL XML document. `configured_key` says whether the route
/// configures a key for a set (which makes a set without a `$metadata` key trackable). `None` when
/// the document cannot be read as CSDL or has nothing to annotate: it is then passed on unchanged.
/// `callbacks` says whether a trackable set's deltas honour the callback preference.
pub(crate) fn annotate(
    xml: &str,
    configured_key: impl Fn(&str) -> bool,
    callbacks: impl Fn(&str) -> bool,
) -> Option<String> {
    let keys = ServiceMetadata::parse(xml).ok()?;
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 5_000_000,
            ..Default::default()
        },
    )
    .ok()?;
    let model = Model::read(&doc);
    // (byte offset, text to insert, bytes to replace at that offset)
    let mut edits: Vec<(usize, String, usize)> = Vec::new();
    for set in doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "EntitySet")
    {
        let (Some(name), Some(ty)) = (set.attribute("Name"), set.attribute("EntityType")) else {
            continue;
        };
        if model.annotated_sets.contains(name) || has_own_annotation(set, &model.aliases) {
            continue;
        }
        let trackable = configured_key(name) || matches!(keys.set(name), Some(SetKey::Key(_)));
        let prefix = element_prefix(xml, set);
        let mut annotation = annotation_xml(&prefix, trackable.then(|| model.members(ty)));
        if trackable && callbacks(name) && !has_term(set, &model.aliases, "CallbackSupported") {
            annotation.push_str(&callback_xml(&prefix));
        }
        let range = set.range();
        let element = &xml[range.clone()];
        if element.ends_with("/>") {
            let tag = if prefix.is_empty() {
                "EntitySet".to_owned()
            } else {
                format!("{prefix}:EntitySet")
            };
            edits.push((
                range.end - 2,
                format!(">{annotation}</{tag}>"),
                2, // replaces the "/>"
            ));
        } else if let Some(close) = element.rfind("</") {
            edits.push((range.start + close, annotation, 0));
        }
    }
    if edits.is_empty() {
        return None;
    }
    if !model.vocabulary_referenced
        && let Some((at, text)) = reference_insertion(xml, &doc)
    {
        edits.push((at, text, 0));
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(xml.len() + edits.len() * 256);
    let mut copied = 0;
    for (at, text, replaced) in edits {
        out.push_str(&xml[copied..at]);
        out.push_str(&text);
        copied = at + replaced;
    }
    out.push_str(&xml[copied..]);
    Some(out)
}

/// What the annotations need from the document.
#[derive(Default)]
struct Model {
    /// Qualified entity type name (namespace and alias spellings) → its declaration.
    types: HashMap<String, TypeMembers>,
    /// Alias → namespace, for resolving annotation terms.
    aliases: HashMap<String, String>,
    /// Entity sets that an `<Annotations Target="…/Set">` already annotates with the term.
    annotated_sets: HashSet<String>,
    /// Whether an `edmx:Include` already brings the Capabilities vocabulary in.
    vocabulary_referenced: bool,
}

#[derive(Clone, Default)]
struct TypeMembers {
    base: Option<String>,
    properties: Vec<String>,
    navigation: Vec<String>,
}

impl Model {
    fn read(doc: &roxmltree::Document) -> Self {
        let mut model = Model::default();
        for include in doc
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "Include")
        {
            let Some(ns) = include.attribute("Namespace") else {
                continue;
            };
            if ns == VOCABULARY {
                model.vocabulary_referenced = true;
            }
            if let Some(alias) = include.attribute("Alias") {
                model.aliases.insert(alias.to_owned(), ns.to_owned());
            }
        }
        for schema in doc
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "Schema")
        {
            let namespace = schema.attribute("Namespace").unwrap_or("");
            let alias = schema.attribute("Alias");
            if let Some(a) = alias {
                model.aliases.insert(a.to_owned(), namespace.to_owned());
            }
            for ty in schema
                .children()
                .filter(|n| n.is_element() && n.tag_name().name() == "EntityType")
            {
                let Some(name) = ty.attribute("Name") else {
                    continue;
                };
                let names_of = |kind: &str| {
                    ty.children()
                        .filter(|n| n.is_element() && n.tag_name().name() == kind)
                        .filter_map(|n| n.attribute("Name").map(str::to_owned))
                        .collect::<Vec<_>>()
                };
                let members = TypeMembers {
                    base: ty.attribute("BaseType").map(str::to_owned),
                    properties: names_of("Property"),
                    navigation: names_of("NavigationProperty"),
                };
                model
                    .types
                    .insert(format!("{namespace}.{name}"), members.clone());
                if let Some(a) = alias {
                    model.types.insert(format!("{a}.{name}"), members);
                }
            }
        }
        for annotations in doc
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "Annotations")
        {
            let Some(target) = annotations.attribute("Target") else {
                continue;
            };
            let names_term = annotations
                .children()
                .any(|a| is_change_tracking(a, &model.aliases));
            // `Namespace.Container/Set`; a deeper path annotates something inside the set.
            if names_term
                && let Some((_, set)) = target.split_once('/')
                && !set.contains('/')
            {
                model.annotated_sets.insert(set.to_owned());
            }
        }
        model
    }

    /// Structural and navigation properties of an entity type, inherited ones first; the base
    /// type chain is bounded so that a cycle cannot loop.
    fn members(&self, type_name: &str) -> (Vec<String>, Vec<String>) {
        let mut chain = Vec::new();
        let mut current = Some(type_name.to_owned());
        while let Some(name) = current {
            let Some(t) = self.types.get(&name) else {
                break;
            };
            if chain.len() > 32 {
                break;
            }
            chain.push(t);
            current = t.base.clone();
        }
        let mut properties = Vec::new();
        let mut navigation = Vec::new();
        for t in chain.iter().rev() {
            properties.extend(t.properties.iter().cloned());
            navigation.extend(t.navigation.iter().cloned());
        }
        (properties, navigation)
    }
}

fn is_change_tracking(node: roxmltree::Node, aliases: &HashMap<String, String>) -> bool {
    is_term(node, aliases, "ChangeTracking")
}

/// Whether `node` is an annotation with the Capabilities term `term`, however its namespace is
/// spelled.
fn is_term(node: roxmltree::Node, aliases: &HashMap<String, String>, term: &str) -> bool {
    if !(node.is_element() && node.tag_name().name() == "Annotation") {
        return false;
    }
    let Some(written) = node.attribute("Term") else {
        return false;
    };
    written.rsplit_once('.').is_some_and(|(qualifier, name)| {
        name == term
            && (qualifier == VOCABULARY
                || aliases.get(qualifier).is_some_and(|ns| ns == VOCABULARY))
    })
}

/// Whether a set carries an annotation with the Capabilities term `term` itself.
fn has_term(set: roxmltree::Node, aliases: &HashMap<String, String>, term: &str) -> bool {
    set.children().any(|c| is_term(c, aliases, term))
}

/// `CallbackSupported` with the `http` protocol: the gateway calls a callback URL with an HTTP
/// request (OData 4.01 Part 1, "Preference callback").
fn callback_xml(prefix: &str) -> String {
    let p = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}:")
    };
    format!(
        "<{p}Annotation Term=\"{CALLBACK_TERM}\"><{p}Record><{p}PropertyValue Property=\"CallbackProtocols\"><{p}Collection><{p}Record><{p}PropertyValue Property=\"Id\" String=\"http\"/></{p}Record></{p}Collection></{p}PropertyValue></{p}Record></{p}Annotation>"
    )
}

fn has_own_annotation(set: roxmltree::Node, aliases: &HashMap<String, String>) -> bool {
    set.children().any(|c| is_change_tracking(c, aliases))
}

/// The namespace prefix an element was written with (`edm` in `<edm:EntitySet`), so that what is
/// inserted lands in the same namespace.
fn element_prefix(xml: &str, node: roxmltree::Node) -> String {
    let start = &xml[node.range().start + 1..];
    let name_end = start
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(start.len());
    match start[..name_end].split_once(':') {
        Some((prefix, _)) => prefix.to_owned(),
        None => String::new(),
    }
}

/// The `<Annotation>` for one set: `Supported=false` for a set the gateway cannot track, else
/// `Supported=true` with every property and navigation property listed, since the gateway tracks
/// any `$filter` and `$expand` and an omitted list would mean "none" to a client (V).
fn annotation_xml(prefix: &str, members: Option<(Vec<String>, Vec<String>)>) -> String {
    let p = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}:")
    };
    let Some((properties, navigation)) = members else {
        return format!(
            "<{p}Annotation Term=\"{TERM}\"><{p}Record><{p}PropertyValue Property=\"Supported\" Bool=\"false\"/></{p}Record></{p}Annotation>"
        );
    };
    let mut out = format!(
        "<{p}Annotation Term=\"{TERM}\"><{p}Record><{p}PropertyValue Property=\"Supported\" Bool=\"true\"/>"
    );
    for (label, element, names) in [
        ("FilterableProperties", "PropertyPath", properties),
        ("ExpandableProperties", "NavigationPropertyPath", navigation),
    ] {
        out.push_str(&format!(
            "<{p}PropertyValue Property=\"{label}\"><{p}Collection>"
        ));
        for name in names {
            // Names are CSDL simple identifiers; escaping keeps an odd document well-formed anyway.
            out.push_str(&format!("<{p}{element}>{}</{p}{element}>", escape(&name)));
        }
        out.push_str(&format!("</{p}Collection></{p}PropertyValue>"));
    }
    out.push_str(&format!("</{p}Record></{p}Annotation>"));
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An `edmx:Reference` to the Capabilities vocabulary, placed before `edmx:DataServices` (where
/// CSDL wants references), in the Edmx element's own prefix.
fn reference_insertion(xml: &str, doc: &roxmltree::Document) -> Option<(usize, String)> {
    let services = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "DataServices")?;
    let prefix = element_prefix(xml, services);
    let p = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}:")
    };
    Some((
        services.range().start,
        format!(
            "<{p}Reference Uri=\"{VOCABULARY_URI}\"><{p}Include Namespace=\"{VOCABULARY}\"/></{p}Reference>"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSDL: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
  <edmx:DataServices>
    <Schema Namespace="Shop" Alias="S" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityType Name="Base"><Key><PropertyRef Name="ID"/></Key><Property Name="ID" Type="Edm.Int32"/></EntityType>
      <EntityType Name="Customer" BaseType="S.Base"><Property Name="name" Type="Edm.String"/>
        <NavigationProperty Name="orders" Type="Collection(Shop.Order)"/></EntityType>
      <EntityType Name="Order"><Key><PropertyRef Name="ID"/></Key><Property Name="ID" Type="Edm.Int32"/></EntityType>
      <EntityType Name="Log"><Property Name="line" Type="Edm.String"/></EntityType>
      <EntityContainer Name="C">
        <EntitySet Name="Customers" EntityType="Shop.Customer"/>
        <EntitySet Name="Orders" EntityType="Shop.Order">
          <Annotation Term="Org.OData.Capabilities.V1.ChangeTracking"><Record><PropertyValue Property="Supported" Bool="false"/></Record></Annotation>
        </EntitySet>
        <EntitySet Name="Logs" EntityType="Shop.Log"></EntitySet>
        <EntitySet Name="Lines" EntityType="Shop.Log"/>
      </EntityContainer>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>"#;

    fn set_annotation<'a>(
        doc: &'a roxmltree::Document,
        set: &str,
    ) -> Option<roxmltree::Node<'a, 'a>> {
        doc.descendants()
            .find(|n| n.tag_name().name() == "EntitySet" && n.attribute("Name") == Some(set))?
            .children()
            .find(|n| n.tag_name().name() == "Annotation")
    }

    #[test]
    fn trackable_sets_list_inherited_properties_and_navigation() {
        let out = annotate(CSDL, |s| s == "Lines", |_| false).unwrap();
        let doc = roxmltree::Document::parse(&out).unwrap();
        let a = set_annotation(&doc, "Customers").unwrap();
        let texts = |kind: &str| {
            a.descendants()
                .filter(|n| n.tag_name().name() == kind)
                .filter_map(|n| n.text())
                .collect::<Vec<_>>()
        };
        assert_eq!(texts("PropertyPath"), ["ID", "name"]);
        assert_eq!(texts("NavigationPropertyPath"), ["orders"]);
        // Unkeyed but with a configured key: trackable.
        assert!(
            set_annotation(&doc, "Lines")
                .unwrap()
                .descendants()
                .any(|n| n.attribute("Bool") == Some("true"))
        );
        // No key anywhere: marked unsupported.
        assert!(
            set_annotation(&doc, "Logs")
                .unwrap()
                .descendants()
                .any(|n| n.attribute("Bool") == Some("false"))
        );
        // Already annotated by the service: left alone.
        assert_eq!(
            out.matches("Org.OData.Capabilities.V1.ChangeTracking")
                .count(),
            4
        );
        assert!(out.contains("<edmx:Reference Uri="));
    }

    #[test]
    fn an_annotations_block_counts_as_already_annotated() {
        let xml = CSDL.replace(
            "</Schema>",
            r#"<Annotations Target="Shop.C/Customers"><Annotation Term="Cap.ChangeTracking"/></Annotations></Schema>"#,
        ).replace(
            "<edmx:DataServices>",
            r#"<edmx:Reference Uri="x"><edmx:Include Namespace="Org.OData.Capabilities.V1" Alias="Cap"/></edmx:Reference><edmx:DataServices>"#,
        );
        let out = annotate(&xml, |_| false, |_| false).unwrap();
        let doc = roxmltree::Document::parse(&out).unwrap();
        assert!(set_annotation(&doc, "Customers").is_none());
        assert_eq!(out.matches("<edmx:Reference").count(), 1);
    }

    #[test]
    fn unreadable_documents_are_left_alone() {
        assert_eq!(annotate("not xml", |_| true, |_| true), None);
        assert_eq!(annotate("<a/>", |_| true, |_| true), None);
    }
}
