//! `RepositorySlice`: up to [`MAX_REPOSITORIES_PER_SLICE`] entries of one Subscription's
//! repository list, the way Kubernetes keeps a Service's endpoints in EndpointSlices. Together a
//! Subscription's slices hold its whole list, each repository once, while `status.repositories`
//! keeps the first 1,000 for kubectl. Each slice carries the label [`SUBSCRIPTION_LABEL`] and a
//! controller ownerReference to its Subscription, so garbage collection removes it. Only the
//! operator writes slices. Types only, no I/O.
//!
//! Like an EndpointSlice, a slice is data, not a desired state: its entries are top-level
//! fields, with no `spec` or `status` (so the type is written by hand, not derived).

use std::{borrow::Cow, sync::Arc};

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
        CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation,
        JSONSchemaProps,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::core::NamespaceResourceScope;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{GROUP, Repository, VERSION};

/// On every slice: the name of the Subscription whose list it holds.
pub const SUBSCRIPTION_LABEL: &str = "scm.shippable.io/subscription";

/// The value of [`SUBSCRIPTION_LABEL`] for a Subscription named `name`: the name itself, or for
/// a name longer than a label value may be (63 characters), its first 46 characters, '-' and 16
/// hex digits of its SHA-256.
pub fn subscription_label(name: &str) -> String {
    use sha2::Digest;
    if name.len() <= 63 {
        return name.to_owned();
    }
    let hash = sha2::Sha256::digest(name.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let cut = (0..=46)
        .rev()
        .find(|i| name.is_char_boundary(*i))
        .unwrap_or(0);
    let head = name[..cut].trim_end_matches(['-', '.']);
    format!("{head}-{hex}")
}

/// The most entries one slice holds (EndpointSlice's default is 100 endpoints; a repository
/// entry is about 0.5 KiB, so 500 keep a slice near 256 KiB, far below etcd's 1.5 MiB).
pub const MAX_REPOSITORIES_PER_SLICE: usize = 500;

/// The most bytes of JSON one slice's entries take: with its metadata a slice stays below
/// 1 MiB (etcd refuses objects over 1.5 MiB) however long the names Bitbucket sends.
pub const MAX_SLICE_BYTES: usize = 768 * 1024;

/// One slice of the list a Subscription's status names: which slice, and the digest of the
/// entries it held when the list was complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SliceRef {
    /// The RepositorySlice's name.
    pub name: String,
    /// [`digest`] of its entries.
    pub digest: String,
}

/// A digest of a slice's entries: 32 hex digits of the SHA-256 of their JSON, as the API server
/// stores them (so what the operator wrote and what a reader reads back digest alike).
pub fn digest(repositories: &[Repository]) -> String {
    hex_digest(&serde_json::to_vec(repositories).expect("repositories serialise to JSON"))
}

/// 32 hex digits of the SHA-256 of `json`.
fn hex_digest(json: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(json);
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A slice's entries, kept as one allocation: their JSON (compact, fields in [`Repository`]'s
/// order, as `serde_json` writes them), deflated, and parsed when read. Every replica caches
/// every slice, and at ten thousand Subscriptions the entries as structs were half the
/// operator's heap (about 650 bytes and 10 allocations an entry); their JSON alone still took
/// 85% of that, as the entries repeat their keys and their names in every URL. Reads and
/// writes as the array of entries the CRD's schema describes. Equal entries are kept once in
/// the process (`kept`): Subscriptions that see the same repositories share them.
#[derive(Clone, PartialEq, Eq)]
pub struct Entries {
    deflated: Arc<[u8]>,
    len: u32,
}

impl Drop for Entries {
    fn drop(&mut self) {
        crate::kept::release(std::mem::replace(&mut self.deflated, crate::kept::none()));
    }
}

/// miniz's fastest level: a slice's entries deflate to about a fifth either way.
const DEFLATE_LEVEL: u8 = 1;

impl Entries {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries' JSON, inflated.
    fn json(&self) -> String {
        let bytes = miniz_oxide::inflate::decompress_to_vec(&self.deflated)
            .expect("entries hold what they deflated");
        String::from_utf8(bytes).expect("entries hold JSON text")
    }

    /// The entries, parsed.
    pub fn to_vec(&self) -> Vec<Repository> {
        serde_json::from_str(&self.json()).expect("entries hold the JSON they were made from")
    }

    /// See [`digest`]: the digest of the JSON kept.
    pub fn digest(&self) -> String {
        hex_digest(self.json().as_bytes())
    }
}

impl From<Vec<Repository>> for Entries {
    fn from(repositories: Vec<Repository>) -> Self {
        repositories.as_slice().into()
    }
}

impl From<&[Repository]> for Entries {
    fn from(repositories: &[Repository]) -> Self {
        let json = serde_json::to_vec(repositories).expect("repositories serialise to JSON");
        let deflated = miniz_oxide::deflate::compress_to_vec(&json, DEFLATE_LEVEL);
        Self {
            deflated: crate::kept::share(&deflated),
            len: u32::try_from(repositories.len()).unwrap_or(u32::MAX),
        }
    }
}

impl Default for Entries {
    fn default() -> Self {
        Vec::new().into()
    }
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.to_vec()).finish()
    }
}

impl Serialize for Entries {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.to_vec())
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Repository>::deserialize(deserializer).map(Self::from)
    }
}

impl JsonSchema for Entries {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        <Vec<Repository>>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <Vec<Repository>>::json_schema(generator)
    }
}

/// A digest of a whole list, from the slices that hold it (as `status.slices` names them): 32
/// hex digits of the SHA-256 of their names and digests. It changes whenever the list does.
pub fn list_digest(slices: &[SliceRef]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for slice in slices {
        hash.update(slice.name.as_bytes());
        hash.update(b":");
        hash.update(slice.digest.as_bytes());
        hash.update(b"\n");
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a set of slices is not the list a Subscription's status names: a reader then serves the
/// last complete list it had, or nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Incomplete {
    /// The Subscription has not written a complete list yet.
    #[error("it has not listed its repositories yet")]
    NotListed,
    #[error("RepositorySlice {0} is not there (yet)")]
    Missing(String),
    /// The slice holds other entries than when the list was complete: an update is under way.
    #[error("RepositorySlice {0} is being rewritten")]
    Changed(String),
}

/// What a slice holds, however it is kept: the object, or a compact record of it (the
/// operator's cache keeps records of its own).
pub trait Holding {
    /// Its entries.
    fn entries(&self) -> &Entries;
    /// [`digest`] of its entries, as written with them.
    fn digest(&self) -> &str;
}

impl Holding for RepositorySlice {
    fn entries(&self) -> &Entries {
        &self.repositories
    }

    fn digest(&self) -> &str {
        &self.digest
    }
}

impl<T: Holding + ?Sized> Holding for &T {
    fn entries(&self) -> &Entries {
        (**self).entries()
    }

    fn digest(&self) -> &str {
        (**self).digest()
    }
}

impl<T: Holding + ?Sized> Holding for std::sync::Arc<T> {
    fn entries(&self) -> &Entries {
        (**self).entries()
    }

    fn digest(&self) -> &str {
        (**self).digest()
    }
}

/// The slices that `named` (a Subscription's `status.slices`) names, in its order, when `find`
/// gives each of them holding the entries it held when the list was complete (its `digest` as
/// recorded); otherwise why not. Their entries together are the Subscription's whole list.
pub fn complete<S: Holding>(
    named: Option<&[SliceRef]>,
    mut find: impl FnMut(&str) -> Option<S>,
) -> Result<Vec<S>, Incomplete> {
    let named = named.ok_or(Incomplete::NotListed)?;
    named
        .iter()
        .map(|wanted| {
            let slice =
                find(&wanted.name).ok_or_else(|| Incomplete::Missing(wanted.name.clone()))?;
            if slice.digest() == wanted.digest {
                Ok(slice)
            } else {
                Err(Incomplete::Changed(wanted.name.clone()))
            }
        })
        .collect()
}

/// The entries of `slices`, sorted by full name.
pub fn entries<S: Holding>(slices: &[S]) -> Vec<Repository> {
    let mut list: Vec<Repository> = slices.iter().flat_map(|s| s.entries().to_vec()).collect();
    list.sort_unstable_by(|a, b| a.full_name.cmp(&b.full_name));
    list
}

/// The first `n` entries of `slices` by full name, parsing only those `n` whole (the others'
/// names are read where they lie): a Subscription's status shows the first 1,000 of a list
/// that may hold 100,000.
pub fn first_entries<S: Holding>(slices: &[S], n: usize) -> Vec<Repository> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow, rename = "fullName")]
        full_name: Cow<'a, str>,
    }
    fn raw(json: &str) -> Vec<&serde_json::value::RawValue> {
        serde_json::from_str(json).expect("entries hold the JSON they were made from")
    }
    let texts: Vec<String> = slices.iter().map(|s| s.entries().json()).collect();
    let mut named: Vec<(Cow<'_, str>, &serde_json::value::RawValue)> = texts
        .iter()
        .flat_map(|json| raw(json))
        .map(|entry| {
            let named: Named<'_> =
                serde_json::from_str(entry.get()).expect("every entry has a full name");
            (named.full_name, entry)
        })
        .collect();
    if named.len() > n {
        named.select_nth_unstable_by(n, |a, b| a.0.cmp(&b.0));
        named.truncate(n);
    }
    named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    named
        .into_iter()
        .map(|(_, entry)| serde_json::from_str(entry.get()).expect("entries parse"))
        .collect()
}

/// Up to 500 repositories of one Subscription; together its slices hold its whole list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySlice {
    #[serde(default = "api_version")]
    #[schemars(skip)]
    pub api_version: String,
    #[serde(default = "kind")]
    #[schemars(skip)]
    pub kind: String,
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    /// Repositories of the Subscription, in the shape of its `status.repositories` entries;
    /// each repository of the Subscription is in exactly one of its slices.
    #[serde(default)]
    #[schemars(length(max = 500))]
    pub repositories: Entries,
    /// How many entries `repositories` holds (shown by `kubectl get`).
    #[serde(default)]
    pub repository_count: i32,
    /// [`digest`] of `repositories`, written with them: the Subscription's `status.slices`
    /// names each slice of its complete list with it.
    #[serde(default)]
    pub digest: String,
}

fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn kind() -> String {
    "RepositorySlice".into()
}

impl RepositorySlice {
    /// A slice named `name` holding `repositories` (its count set to match).
    pub fn new(name: &str, repositories: Vec<Repository>) -> Self {
        let repositories = Entries::from(repositories);
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            repository_count: i32::try_from(repositories.len()).unwrap_or(i32::MAX),
            digest: repositories.digest(),
            repositories,
        }
    }

    /// Whether the object with UID `uid` (its Subscription) is this slice's controller.
    pub fn controlled_by(&self, uid: &str) -> bool {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid)
    }

    /// The CRD, with the schema of the entries generated from [`Repository`] as the other
    /// kinds' are.
    pub fn crd() -> CustomResourceDefinition {
        let generate = schemars::generate::SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .with_transform(schemars::transform::AddNullable::default())
            .with_transform(kube::core::schema::StructuralSchemaRewriter)
            .into_generator();
        let mut schema = serde_json::to_value(generate.into_root_schema_for::<Self>())
            .expect("a schema serialises to JSON");
        let properties = schema["properties"]
            .as_object_mut()
            .expect("the schema of a struct has properties");
        properties.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
        properties.insert("kind".into(), serde_json::json!({"type": "string"}));
        properties.insert("metadata".into(), serde_json::json!({"type": "object"}));
        schema.as_object_mut().map(|s| s.remove("required"));
        let schema: JSONSchemaProps =
            serde_json::from_value(schema).expect("valid JSONSchemaProps from schemars");
        let column = |name: &str, type_: &str, json_path: &str| CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            ..CustomResourceColumnDefinition::default()
        };
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(format!("repositoryslices.{GROUP}")),
                ..ObjectMeta::default()
            },
            spec: CustomResourceDefinitionSpec {
                group: GROUP.into(),
                names: CustomResourceDefinitionNames {
                    categories: Some(vec!["shippable".into(), "scm".into()]),
                    kind: kind(),
                    plural: "repositoryslices".into(),
                    short_names: Some(vec!["bbrs".into()]),
                    singular: Some("repositoryslice".into()),
                    ..CustomResourceDefinitionNames::default()
                },
                scope: "Namespaced".into(),
                versions: vec![CustomResourceDefinitionVersion {
                    additional_printer_columns: Some(vec![
                        column(
                            "Subscription",
                            "string",
                            ".metadata.labels.scm\\.shippable\\.io/subscription",
                        ),
                        column("Repositories", "integer", ".repositoryCount"),
                        column("Age", "date", ".metadata.creationTimestamp"),
                    ]),
                    name: VERSION.into(),
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(schema),
                    }),
                    served: true,
                    storage: true,
                    ..CustomResourceDefinitionVersion::default()
                }],
                ..CustomResourceDefinitionSpec::default()
            },
            status: None,
        }
    }
}

impl kube::Resource for RepositorySlice {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "RepositorySlice".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "repositoryslices".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_named(names: &[&str]) -> Vec<Repository> {
        names
            .iter()
            .map(|n| {
                serde_json::from_value(serde_json::json!({
                    "fullName": format!("acme/{n}"), "name": n, "private": true, "cloneUrls": {}
                }))
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn only_the_named_slices_with_their_recorded_entries_make_a_list() {
        let a = RepositorySlice::new("a", entries_named(&["web", "api"]));
        let b = RepositorySlice::new("b", entries_named(&["db"]));
        let named = [&a, &b].map(|s| SliceRef {
            name: s.metadata.name.clone().unwrap(),
            digest: s.digest.clone(),
        });
        let reading = |held: &[&RepositorySlice]| {
            let found = |name: &str| {
                held.iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name))
                    .copied()
            };
            complete(Some(&named), found).map(|slices| {
                entries(&slices)
                    .iter()
                    .map(|r| r.name.clone())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            reading(&[&b, &a]),
            Ok(vec!["api".into(), "db".into(), "web".into()]),
            "sorted by full name"
        );
        let rewritten = RepositorySlice::new("a", entries_named(&["web"]));
        assert_eq!(
            reading(&[&rewritten, &b]),
            Err(Incomplete::Changed("a".into())),
            "a slice rewritten since the status was written"
        );
        assert_eq!(reading(&[&a]), Err(Incomplete::Missing("b".into())));
        let none = |_: &str| None::<RepositorySlice>;
        assert_eq!(
            complete(None, none),
            Err(Incomplete::NotListed),
            "never listed is not an empty list"
        );
        assert_eq!(complete(Some(&[]), none), Ok(Vec::new()));
    }

    #[test]
    fn entries_are_kept_compact_and_read_and_write_as_the_array_of_repositories() {
        let repositories = entries_named(&["web", "api", "db\u{202e}"]);
        let entries = Entries::from(repositories.clone());
        assert_eq!((entries.len(), entries.to_vec()), (3, repositories.clone()));
        let written = serde_json::to_value(&entries).unwrap();
        assert_eq!(written, serde_json::to_value(&repositories).unwrap());
        let read: Entries = serde_json::from_value(written).unwrap();
        assert_eq!(read, entries);
        // The digest is of the JSON the API server stores (and gives back, keys in order).
        use sha2::Digest;
        let stored = serde_json::to_vec(&repositories).unwrap();
        let hash = sha2::Sha256::digest(&stored);
        let expected: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(entries.digest(), expected);
        assert_eq!(digest(&repositories), expected);
    }

    #[test]
    fn slices_that_hold_the_same_list_share_one_copy_of_it() {
        // As the watch gives them: two Subscriptions' slices read from the API server.
        let json = serde_json::to_value(entries_named(&["shared-web", "shared-api"])).unwrap();
        let one: Entries = serde_json::from_value(json.clone()).unwrap();
        let other: Entries = serde_json::from_value(json).unwrap();
        assert!(Arc::ptr_eq(&one.deflated, &other.deflated));
        let different = Entries::from(entries_named(&["shared-web"]));
        assert!(!Arc::ptr_eq(&one.deflated, &different.deflated));
        assert_eq!(other.to_vec(), one.to_vec(), "each reads the whole list");
        drop(one);
        assert_eq!(other.len(), 2);
    }

    #[test]
    fn the_first_entries_are_the_first_of_the_sorted_list() {
        let names: Vec<String> = (0..300)
            .map(|i| format!("r{:03}", (i * 7919) % 300))
            .collect();
        let slices: Vec<RepositorySlice> = names
            .chunks(70)
            .enumerate()
            .map(|(i, chunk)| {
                let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
                RepositorySlice::new(&format!("s{i}"), entries_named(&chunk))
            })
            .collect();
        let all = entries(&slices);
        for n in [0, 1, 69, 250, 300, 1000] {
            assert_eq!(first_entries(&slices, n), all[..n.min(300)].to_vec(), "{n}");
        }
    }

    #[test]
    fn every_subscription_name_gives_a_label_value() {
        assert_eq!(subscription_label("acme-ci"), "acme-ci");
        let long = format!("{}.{}", "a".repeat(45), "b".repeat(200));
        let label = subscription_label(&long);
        assert!(label.len() <= 63, "{label}");
        assert!(label.starts_with(&"a".repeat(45)), "{label}");
        assert!(!label.contains(".-"), "{label}");
        assert_ne!(label, subscription_label(&format!("{long}c")));
    }

    #[test]
    fn a_slice_reads_and_writes_as_the_api_server_stores_it() {
        let slice: RepositorySlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "scm.shippable.io/v1alpha1",
            "kind": "RepositorySlice",
            "metadata": {"name": "acme-ci-7f3k2", "labels": {SUBSCRIPTION_LABEL: "acme-ci"}},
            "repositories": [{"fullName": "acme/api", "name": "api", "private": true, "cloneUrls": {}}],
            "repositoryCount": 1
        }))
        .unwrap();
        assert_eq!(slice.repositories.to_vec()[0].full_name, "acme/api");
        let written = serde_json::to_value(&slice).unwrap();
        assert_eq!(written["kind"], "RepositorySlice");
        assert_eq!(written["apiVersion"], "scm.shippable.io/v1alpha1");
        assert_eq!(written["repositoryCount"], 1);
    }

    #[test]
    fn the_crd_caps_the_entries_and_leaves_metadata_to_the_api_server() {
        let crd = RepositorySlice::crd();
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .unwrap()
            .open_api_v3_schema
            .unwrap();
        let properties = schema.properties.unwrap();
        assert_eq!(
            properties["repositories"].max_items,
            Some(MAX_REPOSITORIES_PER_SLICE as i64)
        );
        assert_eq!(properties["metadata"].type_.as_deref(), Some("object"));
        assert!(properties["metadata"].properties.is_none());
    }
}
