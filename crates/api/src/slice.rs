//! `RepositorySlice`: up to [`MAX_REPOSITORIES_PER_SLICE`] entries of one Subscription's
//! repository list, the way Kubernetes keeps a Service's endpoints in EndpointSlices. Together a
//! Subscription's slices hold its whole list, each repository once, while `status.repositories`
//! keeps the first 1,000 for kubectl. Each slice carries the label [`SUBSCRIPTION_LABEL`] and a
//! controller ownerReference to its Subscription, so garbage collection removes it. Only the
//! operator writes slices. Types only, no I/O.
//!
//! Like an EndpointSlice, a slice is data, not a desired state: its entries are top-level
//! fields, with no `spec` or `status` (so the type is written by hand, not derived).

use std::borrow::Cow;

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

/// The most entries one slice holds (EndpointSlice's default is 100 endpoints; a repository
/// entry is about 0.5 KiB, so 500 keep a slice near 256 KiB, far below etcd's 1.5 MiB).
pub const MAX_REPOSITORIES_PER_SLICE: usize = 500;

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
    pub repositories: Vec<Repository>,
    /// How many entries `repositories` holds (shown by `kubectl get`).
    #[serde(default)]
    pub repository_count: i32,
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
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            repository_count: i32::try_from(repositories.len()).unwrap_or(i32::MAX),
            repositories,
        }
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
        assert_eq!(slice.repositories[0].full_name, "acme/api");
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
