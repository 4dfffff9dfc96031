//! `$metadata` (CSDL XML): the entity sets of a service and the key of each — resolved through
//! namespaces, aliases, `BaseType` inheritance, type definitions and several schemas in one document.

use std::collections::HashMap;

use super::entity_id::{KeyProperty, KeyType};

/// Why a `$metadata` document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Not well-formed XML.
    #[error("$metadata is not well-formed XML: {0}")]
    Xml(String),
    /// XML, but without an entity container.
    #[error("$metadata has no EntityContainer")]
    NoContainer,
}

/// What an entity set's key resolution found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetKey {
    /// The key properties, in key order.
    Key(Vec<KeyProperty>),
    /// The set exists but its key cannot be used; the reason, for the log.
    Unusable(String),
}

/// The entity sets of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMetadata {
    sets: HashMap<String, SetKey>,
}

impl ServiceMetadata {
    /// The key of an entity set; `None` when the service has no such set.
    pub fn set(&self, name: &str) -> Option<&SetKey> {
        self.sets.get(name)
    }

    /// Names of all entity sets.
    pub fn set_names(&self) -> impl Iterator<Item = &str> {
        self.sets.keys().map(String::as_str)
    }

    /// Parse a CSDL XML document.
    pub fn parse(xml: &str) -> Result<Self, MetadataError> {
        let doc = roxmltree::Document::parse_with_options(
            xml,
            roxmltree::ParsingOptions {
                allow_dtd: false,
                nodes_limit: 5_000_000,
                ..Default::default()
            },
        )
        .map_err(|e| MetadataError::Xml(e.to_string()))?;

        let mut types: HashMap<String, TypeInfo> = HashMap::new();
        let mut type_defs: HashMap<String, String> = HashMap::new();
        let mut enums: HashMap<String, ()> = HashMap::new();
        let mut containers = Vec::new();

        for schema in doc.descendants().filter(|n| n.has_tag_name_local("Schema")) {
            let namespace = schema.attribute("Namespace").unwrap_or("");
            let alias = schema.attribute("Alias");
            let qualified = |name: &str| -> Vec<String> {
                let mut names = vec![format!("{namespace}.{name}")];
                if let Some(a) = alias {
                    names.push(format!("{a}.{name}"));
                }
                names
            };
            for child in schema.children().filter(|n| n.is_element()) {
                let Some(name) = child.attribute("Name") else {
                    continue;
                };
                match child.tag_name().name() {
                    "EntityType" => {
                        let info = TypeInfo::read(child, namespace, alias);
                        for q in qualified(name) {
                            types.insert(q, info.clone());
                        }
                    }
                    "TypeDefinition" => {
                        let underlying = child.attribute("UnderlyingType").unwrap_or("").to_owned();
                        for q in qualified(name) {
                            type_defs.insert(q, underlying.clone());
                        }
                    }
                    "EnumType" => {
                        for q in qualified(name) {
                            enums.insert(q, ());
                        }
                    }
                    "EntityContainer" => containers.push(child),
                    _ => {}
                }
            }
        }
        if containers.is_empty() {
            return Err(MetadataError::NoContainer);
        }

        let mut sets = HashMap::new();
        for container in containers {
            for set in container
                .children()
                .filter(|n| n.has_tag_name_local("EntitySet"))
            {
                let (Some(name), Some(ty)) = (set.attribute("Name"), set.attribute("EntityType"))
                else {
                    continue;
                };
                let key = resolve_key(ty, &types, &type_defs, &enums);
                sets.insert(name.to_owned(), key);
            }
        }
        Ok(ServiceMetadata { sets })
    }
}

trait LocalName {
    fn has_tag_name_local(&self, name: &str) -> bool;
}

impl LocalName for roxmltree::Node<'_, '_> {
    fn has_tag_name_local(&self, name: &str) -> bool {
        self.is_element() && self.tag_name().name() == name
    }
}

/// An entity type as declared: its own key and properties, and its base type (qualified).
#[derive(Clone, Debug, Default)]
struct TypeInfo {
    base: Option<String>,
    key: Option<Vec<String>>,
    /// Property name → declared type name, qualified names normalised to the schema namespace.
    properties: HashMap<String, String>,
}

impl TypeInfo {
    fn read(node: roxmltree::Node, namespace: &str, alias: Option<&str>) -> Self {
        let unalias = |t: &str| match alias {
            Some(a) if t.starts_with(&format!("{a}.")) => format!("{namespace}{}", &t[a.len()..]),
            _ => t.to_owned(),
        };
        let mut info = TypeInfo {
            base: node.attribute("BaseType").map(unalias),
            ..Default::default()
        };
        for child in node.children().filter(|n| n.is_element()) {
            match child.tag_name().name() {
                "Key" => {
                    let refs = child
                        .children()
                        .filter(|n| n.has_tag_name_local("PropertyRef"))
                        .filter_map(|r| r.attribute("Name").map(str::to_owned))
                        .collect();
                    info.key = Some(refs);
                }
                "Property" => {
                    if let (Some(n), Some(t)) = (child.attribute("Name"), child.attribute("Type")) {
                        info.properties.insert(n.to_owned(), unalias(t));
                    }
                }
                _ => {}
            }
        }
        info
    }
}

fn resolve_key(
    type_name: &str,
    types: &HashMap<String, TypeInfo>,
    type_defs: &HashMap<String, String>,
    enums: &HashMap<String, ()>,
) -> SetKey {
    // Walk the inheritance chain (bounded, so a cyclic BaseType cannot loop) to find the key and
    // every property a key may name.
    let mut chain = Vec::new();
    let mut current = Some(type_name.to_owned());
    while let Some(name) = current {
        if chain.len() > 32 {
            return SetKey::Unusable(format!("the BaseType chain of {type_name} does not end"));
        }
        let Some(info) = types.get(&name) else {
            return SetKey::Unusable(format!("entity type {name} is not declared"));
        };
        chain.push(info);
        current = info.base.clone();
    }
    let Some(key) = chain.iter().find_map(|t| t.key.as_ref()) else {
        return SetKey::Unusable(format!("entity type {type_name} declares no Key"));
    };
    if key.is_empty() {
        return SetKey::Unusable(format!("entity type {type_name} has an empty Key"));
    }
    let mut props = Vec::new();
    for name in key {
        if name.contains('/') {
            return SetKey::Unusable(format!(
                "key property {name} of {type_name} is a path into a complex type"
            ));
        }
        let Some(declared) = chain.iter().find_map(|t| t.properties.get(name)) else {
            return SetKey::Unusable(format!(
                "key property {name} of {type_name} is not declared"
            ));
        };
        let underlying = type_defs
            .get(declared)
            .map(String::as_str)
            .unwrap_or(declared);
        let (ty, enum_type) = match KeyType::from_edm(underlying) {
            Some(t) => (t, None),
            None if enums.contains_key(declared) => (KeyType::Enum, Some(declared.clone())),
            None => {
                return SetKey::Unusable(format!(
                    "key property {name} of {type_name} has type {declared}"
                ));
            }
        };
        props.push(KeyProperty {
            name: name.clone(),
            ty,
            enum_type,
        });
    }
    SetKey::Key(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSDL: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">
  <edmx:DataServices>
    <Schema Namespace="Shop.Model" Alias="M" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <TypeDefinition Name="Code" UnderlyingType="Edm.String"/>
      <EntityType Name="Base"><Key><PropertyRef Name="ID"/></Key><Property Name="ID" Type="Edm.Guid" Nullable="false"/></EntityType>
      <EntityType Name="Customer" BaseType="M.Base"><Property Name="name" Type="Edm.String"/></EntityType>
      <EntityType Name="Line"><Key><PropertyRef Name="Order"/><PropertyRef Name="No"/></Key>
        <Property Name="Order" Type="Edm.Int64"/><Property Name="No" Type="Edm.Int16"/></EntityType>
      <EntityType Name="Tag"><Key><PropertyRef Name="code"/></Key><Property Name="code" Type="M.Code"/></EntityType>
      <EntityType Name="NoKey"><Property Name="x" Type="Edm.String"/></EntityType>
    </Schema>
    <Schema Namespace="Shop.Service" xmlns="http://docs.oasis-open.org/odata/ns/edm">
      <EntityContainer Name="C">
        <EntitySet Name="Customers" EntityType="Shop.Model.Customer"/>
        <EntitySet Name="Lines" EntityType="M.Line"/>
        <EntitySet Name="Tags" EntityType="Shop.Model.Tag"/>
        <EntitySet Name="Broken" EntityType="Shop.Model.NoKey"/>
      </EntityContainer>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>"#;

    #[test]
    fn keys_resolve_through_aliases_base_types_and_type_definitions() {
        let m = ServiceMetadata::parse(CSDL).unwrap();
        let SetKey::Key(k) = m.set("Customers").unwrap() else {
            panic!()
        };
        assert_eq!((k[0].name.as_str(), k[0].ty), ("ID", KeyType::Guid));
        let SetKey::Key(k) = m.set("Lines").unwrap() else {
            panic!()
        };
        assert_eq!(
            k.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["Order", "No"]
        );
        assert_eq!(k[1].ty, KeyType::Integer);
        let SetKey::Key(k) = m.set("Tags").unwrap() else {
            panic!()
        };
        assert_eq!(k[0].ty, KeyType::String);
        assert!(matches!(m.set("Broken"), Some(SetKey::Unusable(_))));
        assert_eq!(m.set("Nope"), None);
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(ServiceMetadata::parse("not xml").is_err());
        assert!(ServiceMetadata::parse("<a/>").is_err());
        assert!(ServiceMetadata::parse("<!DOCTYPE x [<!ENTITY a 'b'>]><a/>").is_err());
    }
}
