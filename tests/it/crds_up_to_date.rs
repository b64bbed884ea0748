//! The committed CRD files in `crds/` must be exactly what the Rust types generate: users and
//! GitOps tools install those files, so a stale one would silently ship an old schema.

use std::path::Path;

#[test]
fn the_committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut stale = Vec::new();
    for (file, generated) in bitbucket_operator::api::crd_files() {
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        if committed != generated {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/{} differ from the types in src/api: run `make crds` and commit the result",
        stale.join(", crds/")
    );
}

#[test]
fn the_charts_crds_and_policies_match_the_rust_types() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/bitbucket-operator");
    let stale: Vec<String> = bitbucket_operator::api::chart_files()
        .into_iter()
        .filter(|(file, generated)| {
            std::fs::read_to_string(chart.join(file)).unwrap_or_default() != *generated
        })
        .map(|(file, _)| file)
        .collect();
    assert!(
        stale.is_empty(),
        "charts/bitbucket-operator/{{{}}} differ from the types in src/api: run `make crds` and \
         commit the result",
        stale.join(",")
    );
}

#[test]
fn crds_holds_no_file_the_types_do_not_generate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated: Vec<String> = bitbucket_operator::api::crd_files()
        .into_iter()
        .map(|(file, _)| file)
        .collect();
    let extra: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|file| !generated.contains(file))
        .collect();
    assert!(
        extra.is_empty(),
        "crds/ holds files no type generates (a renamed or removed kind?): {extra:?}; delete them and run `make crds`"
    );
}

#[test]
fn deploy_installs_the_crds_and_admission_policies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deploy = std::fs::read_to_string(root.join("deploy/kustomization.yaml")).unwrap();
    assert!(
        deploy.lines().any(|line| line.trim() == "- ../crds"),
        "deploy/kustomization.yaml must include ../crds:\n{deploy}"
    );
    let listed = std::fs::read_to_string(root.join("crds/Kustomization")).unwrap();
    for policy in bitbucket_operator::api::admission::policies() {
        let name = policy.0.metadata.name.unwrap();
        assert!(listed.contains(&format!("policy.{name}.yaml")), "{listed}");
    }
}

/// `deploy/deployment.yaml` spells out the reach defaults so an administrator sees them; they
/// must be the operator's own.
#[test]
fn the_deployments_reach_settings_are_the_operators_defaults() {
    use bitbucket_operator::bitbucket::{AllowList, RefusedNetworks};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deployment = std::fs::read_to_string(root.join("deploy/deployment.yaml")).unwrap();
    let value_of = |name: &str| {
        let at = deployment
            .find(&format!("- name: {name}\n"))
            .unwrap_or_else(|| panic!("deploy/deployment.yaml sets {name}"));
        let rest = &deployment[at..];
        let line = rest.lines().nth(1).unwrap().trim();
        line.strip_prefix("value: ").unwrap().to_owned()
    };
    assert_eq!(value_of("ALLOWED_SERVERS"), AllowList::cloud().to_string());
    assert_eq!(
        value_of("REFUSED_NETWORKS"),
        RefusedNetworks::default().to_string()
    );
}
