//! Content and key hashes. An entity's content hash is blake3 over its canonical JSON form (members
//! sorted, whitespace and control information dropped, configured volatile properties left out), so
//! that an upstream reordering members or reformatting never looks like a change.

use crate::odata::entity_id::{EntityKey, KeyError, KeyProperty};
use crate::odata::json::{Canonicalizer, JsonError, Member};

use crate::ids::truncate;
pub use crate::ids::{ContentHash, KeyHash};

impl std::hash::Hash for KeyHash {
    /// Already uniformly distributed: 8 of its bytes as one word is all a hash table needs (see
    /// `index::BuildKeyHasher`, which mixes in a seed).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(word));
    }
}

// Defined here rather than beside the type: the key identity is protocol knowledge
// (`odata::entity_id`), and the ids module imports nothing of ours.
impl KeyHash {
    /// The hash of a key predicate such as `42` or `ID=1,Line=2`: of its identity, so that
    /// `Guid`s in either case, or `1.50` and `1.5`, are one key (`key_identity`).
    pub fn of(predicate: &str) -> Self {
        let identity = crate::odata::entity_id::key_identity(predicate);
        KeyHash(truncate(blake3::hash(identity.as_bytes())))
    }
}

/// `raw` with the given byte ranges replaced.
fn respell(raw: &[u8], replacements: &[((usize, usize), Vec<u8>)]) -> Vec<u8> {
    let mut sorted: Vec<&((usize, usize), Vec<u8>)> = replacements.iter().collect();
    sorted.sort_by_key(|((start, _), _)| *start);
    let mut out = Vec::with_capacity(raw.len() + 16);
    let mut at = 0;
    for ((start, end), value) in sorted {
        if *start < at || *end > raw.len() {
            continue;
        }
        out.extend_from_slice(&raw[at..*start]);
        out.extend_from_slice(value);
        at = *end;
    }
    out.extend_from_slice(&raw[at..]);
    out
}

/// Why an upstream entity could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityError {
    /// The JSON could not be scanned.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The key could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// An entity's identity and content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The key as read from the payload.
    pub key: EntityKey,
    /// Hash of the key predicate.
    pub key_hash: KeyHash,
    /// Hash of the canonical content.
    pub content: ContentHash,
}

/// Reusable buffers for hashing many entities without allocating per entity: the top-level
/// members, the canonical writer's per-depth scratch, and the canonical bytes blake3 runs over.
#[derive(Default)]
pub struct Hasher {
    members: Vec<Member>,
    writer: Canonicalizer,
    canonical: Vec<u8>,
}

impl Hasher {
    /// Read the key and hash the content of one entity. `ignore` names top-level properties that do
    /// not count as content (volatile timestamps and the like).
    pub fn digest(
        &mut self,
        raw: &[u8],
        key: &[KeyProperty],
        ignore: &[String],
    ) -> Result<Digest, EntityError> {
        // One scan gives both the canonical form and the top-level members the key is read from.
        self.members.clear();
        self.canonical.clear();
        let skip = |name: &[u8]| ignore.iter().any(|i| i.as_bytes() == name);
        self.writer
            .write_object(raw, &skip, &mut self.members, &mut self.canonical)?;
        let (key, respelled) = EntityKey::read_spelled(raw, &self.members, key)?;
        if !respelled.is_empty() {
            // A key spelled another way is the same content: hash it as spelled canonically.
            let text = respell(raw, &respelled);
            self.members.clear();
            self.canonical.clear();
            self.writer
                .write_object(&text, &skip, &mut self.members, &mut self.canonical)?;
        }
        Ok(Digest {
            key_hash: KeyHash::of(&key.predicate),
            content: ContentHash(truncate(blake3::hash(&self.canonical))),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odata::entity_id::KeyType;
    use proptest::prelude::*;

    fn id_key() -> Vec<KeyProperty> {
        vec![KeyProperty {
            name: "ID".into(),
            ty: KeyType::Integer,
            enum_type: None,
        }]
    }

    #[test]
    fn ignored_properties_and_control_information_do_not_change_the_hash() {
        let mut h = Hasher::default();
        let ignore = vec!["modifiedAt".to_owned()];
        let a = h
            .digest(
                br#"{"ID":1,"n":"x","modifiedAt":"1","@odata.etag":"a"}"#,
                &id_key(),
                &ignore,
            )
            .unwrap();
        let b = h
            .digest(
                br#"{"ID":1,"n":"x","modifiedAt":"2","@odata.etag":"b"}"#,
                &id_key(),
                &ignore,
            )
            .unwrap();
        assert_eq!(a, b);
        let c = h
            .digest(br#"{"ID":1,"n":"y","modifiedAt":"2"}"#, &id_key(), &ignore)
            .unwrap();
        assert_ne!(a.content, c.content);
        assert_eq!(a.key_hash, c.key_hash);
    }

    #[test]
    fn a_key_spelled_another_way_is_the_same_key_and_the_same_content() {
        let key = vec![
            KeyProperty {
                name: "G".into(),
                ty: KeyType::Guid,
                enum_type: None,
            },
            KeyProperty {
                name: "P".into(),
                ty: KeyType::Decimal,
                enum_type: None,
            },
        ];
        let mut h = Hasher::default();
        let lower = h
            .digest(
                br#"{"G":"6f9619ff-8b86-d011-b42d-00c04fc964ff","P":1.5,"n":"x"}"#,
                &key,
                &[],
            )
            .unwrap();
        let upper = h
            .digest(
                br#"{"n":"x","P":1.50,"G":"6F9619FF-8B86-D011-B42D-00C04FC964FF"}"#,
                &key,
                &[],
            )
            .unwrap();
        assert_eq!(lower.key_hash, upper.key_hash);
        assert_eq!(lower.content, upper.content);
        assert_ne!(lower.key.predicate, upper.key.predicate, "spelled as sent");
        let other = h
            .digest(
                br#"{"n":"y","P":1.50,"G":"6F9619FF-8B86-D011-B42D-00C04FC964FF"}"#,
                &key,
                &[],
            )
            .unwrap();
        assert_ne!(lower.content, other.content);
    }

    /// A JSON value with nested objects and arrays, for the property test.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-zA-Z0-9 é'\"\\\\]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Write `v` with members in an order chosen by `seed` and random whitespace between tokens.
    fn write_shuffled(v: &serde_json::Value, seed: &mut u64, out: &mut String) {
        fn next(seed: &mut u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        }
        let ws = |n: u64| [" ", "", "\n  ", "\t", ""][(n % 5) as usize];
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                for i in (1..entries.len()).rev() {
                    entries.swap(i, (next(seed) % (i as u64 + 1)) as usize);
                }
                out.push('{');
                for (i, (k, val)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws(next(seed)));
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(ws(next(seed)));
                    out.push(':');
                    out.push_str(ws(next(seed)));
                    write_shuffled(val, seed, out);
                }
                out.push_str(ws(next(seed)));
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, val) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(ws(next(seed)));
                        out.push(',');
                    }
                    write_shuffled(val, seed, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    proptest! {
        /// The content hash depends on content only: never on member order or whitespace.
        #[test]
        fn member_order_and_whitespace_never_change_the_content_hash(
            props in prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..8),
            id in any::<i32>(),
            seed_a in 1u64..,
            seed_b in 1u64..,
        ) {
            let mut obj: serde_json::Map<String, serde_json::Value> = props.into_iter().collect();
            obj.insert("ID".into(), id.into());
            let v = serde_json::Value::Object(obj);
            let (mut a, mut b) = (String::new(), String::new());
            write_shuffled(&v, &mut seed_a.clone(), &mut a);
            write_shuffled(&v, &mut seed_b.clone(), &mut b);
            let mut h = Hasher::default();
            let da = h.digest(a.as_bytes(), &id_key(), &[]).unwrap();
            let db = h.digest(b.as_bytes(), &id_key(), &[]).unwrap();
            prop_assert_eq!(da, db);
        }

        /// Different content gives a different hash.
        #[test]
        fn a_changed_value_changes_the_content_hash(a in any::<i64>(), b in any::<i64>()) {
            prop_assume!(a != b);
            let mut h = Hasher::default();
            let da = h.digest(format!(r#"{{"ID":1,"v":{a}}}"#).as_bytes(), &id_key(), &[]).unwrap();
            let db = h.digest(format!(r#"{{"ID":1,"v":{b}}}"#).as_bytes(), &id_key(), &[]).unwrap();
            prop_assert_ne!(da.content, db.content);
        }
    }
}
