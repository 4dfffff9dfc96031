//! Generated `$metadata` (CSDL XML, EDMX 4.0) for the defined entity sets.

use super::model::{EntitySetDef, SetStore};

/// Escapes text for use inside an XML attribute.
fn attr(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole EDMX document: one schema with every entity type once, and an
/// entity container binding each set and its navigations.
pub(crate) fn generate(namespace: &str, sets: &[SetStore]) -> String {
    let ns = attr(namespace);
    let mut xml = String::from(concat!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
        "<edmx:Edmx Version=\"4.0\" xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\">\n",
        "  <edmx:DataServices>\n",
    ));
    xml.push_str(&format!(
        "    <Schema Namespace=\"{ns}\" xmlns=\"http://docs.oasis-open.org/odata/ns/edm\">\n"
    ));
    let mut written: Vec<&str> = Vec::new();
    for store in sets {
        if !written.contains(&store.def.entity_type.as_str()) {
            written.push(&store.def.entity_type);
            xml.push_str(&entity_type(&ns, &store.def, sets));
        }
    }
    xml.push_str("      <EntityContainer Name=\"EntityContainer\">\n");
    for store in sets {
        xml.push_str(&entity_set(&ns, &store.def));
    }
    xml.push_str(concat!(
        "      </EntityContainer>\n",
        "    </Schema>\n",
        "  </edmx:DataServices>\n",
        "</edmx:Edmx>\n",
    ));
    xml
}

fn entity_type(ns: &str, def: &EntitySetDef, sets: &[SetStore]) -> String {
    let mut xml = format!("      <EntityType Name=\"{}\">\n", attr(&def.entity_type));
    xml.push_str("        <Key>\n");
    for key in &def.keys {
        xml.push_str(&format!(
            "          <PropertyRef Name=\"{}\"/>\n",
            attr(&key.name)
        ));
    }
    xml.push_str("        </Key>\n");
    for prop in def.declared() {
        let nullable = if def.is_key(&prop.name) {
            " Nullable=\"false\""
        } else {
            ""
        };
        xml.push_str(&format!(
            "        <Property Name=\"{}\" Type=\"{}\"{nullable}/>\n",
            attr(&prop.name),
            attr(&prop.edm_type)
        ));
    }
    for nav in &def.navs {
        // The target's entity type names the navigation type; an undefined
        // target still yields well-formed XML so tests can define sets in any order.
        let target_type = sets
            .iter()
            .find(|s| s.def.name == nav.target_set)
            .map_or(nav.target_set.as_str(), |s| s.def.entity_type.as_str());
        xml.push_str(&format!(
            "        <NavigationProperty Name=\"{}\" Type=\"Collection({ns}.{})\"/>\n",
            attr(&nav.name),
            attr(target_type)
        ));
    }
    xml.push_str("      </EntityType>\n");
    xml
}

fn entity_set(ns: &str, def: &EntitySetDef) -> String {
    let open = format!(
        "        <EntitySet Name=\"{}\" EntityType=\"{ns}.{}\"",
        attr(&def.name),
        attr(&def.entity_type)
    );
    if def.navs.is_empty() {
        return format!("{open}/>\n");
    }
    let mut xml = format!("{open}>\n");
    for nav in &def.navs {
        xml.push_str(&format!(
            "          <NavigationPropertyBinding Path=\"{}\" Target=\"{}\"/>\n",
            attr(&nav.name),
            attr(&nav.target_set)
        ));
    }
    xml.push_str("        </EntitySet>\n");
    xml
}
