//! The repository filters of a Subscription: include/exclude globs on the slug and visibility.
//! Pure; no I/O.

use crate::api::{Repository, RepositoryFilter, Visibility, glob::glob};

/// Whether `repository` passes `filter`: included (by any include glob, or all when there are
/// none), not excluded by any exclude glob, and of the wanted visibility.
pub fn keeps(filter: &RepositoryFilter, repository: &Repository) -> bool {
    let visible = match filter.visibility {
        Visibility::All => true,
        Visibility::Private => repository.private,
        Visibility::Public => !repository.private,
    };
    let slug = repository.name.to_ascii_lowercase();
    visible
        && (filter.include.is_empty() || filter.include.iter().any(|g| glob(g, &slug)))
        && !filter.exclude.iter().any(|g| glob(g, &slug))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A repository of workspace `acme` with nothing but a slug and a visibility.
    pub(in crate::controller::subscription) fn repository(slug: &str, private: bool) -> Repository {
        serde_json::from_value(serde_json::json!({
            "fullName": format!("acme/{slug}"), "name": slug, "private": private, "cloneUrls": {}
        }))
        .expect("a repository entry")
    }

    #[test]
    fn excludes_win_over_includes_and_visibility_filters() {
        let filter = RepositoryFilter {
            include: vec!["api-*".into()],
            exclude: vec!["*-archive".into()],
            visibility: Visibility::Private,
        };
        assert!(keeps(&filter, &repository("api-gateway", true)));
        assert!(!keeps(&filter, &repository("api-archive", true)));
        assert!(!keeps(&filter, &repository("api-docs", false)));
        assert!(!keeps(&filter, &repository("web", true)));
        assert!(keeps(
            &RepositoryFilter::default(),
            &repository("anything", false)
        ));
    }
}
