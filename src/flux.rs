//! The Flux Operator's `ExternalService` input provider, served from the same catalog as the
//! ApplicationSet generator (see [`crate::catalog`]): one input per repository of a
//! Subscription, from every replica, with no Bitbucket call per request.
//!
//! Protocol (Flux Operator v0.43.0 and later, `ResourceSetInputProvider` with
//! `type: ExternalService`): `GET spec.url`, with `Authorization: Bearer <token>` from the
//! Secret `spec.secretRef` (key `token`); the answer is `{"inputs": [{"id": …, …}, …]}`. Flux
//! reads at most 900 KiB of it, needs each `id` to be a unique string, keeps the first
//! `spec.filter.limit` inputs (default 100) in the order served, and on any other status than
//! 2xx keeps its last inputs and says `returned HTTP <code>`.
//!
//! Here: `GET /api/v1/inputs/<namespace>/<subscription>?project=KEY&match=GLOB&limit=N`
//! (`project` and `match` repeatable; each narrows the list). Inputs are sorted by full name;
//! `id` is Bitbucket's own id of the repository (Cloud UUID, Data Center id), which a rename keeps,
//! or the full name when an entry has none. An answer that would pass 900 KiB is refused whole
//! (413, with the filter to add), never cut. The token, the offer label and the 404/503 answers
//! are the generator's. Does network I/O.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{
    api::{self, Repository, glob::glob},
    catalog::List,
    generator::{Generator, ParameterSet, offered_list},
};

/// What Flux reads of an answer (`maxExternalServicePayloadSize`).
pub const MAX_ANSWER_BYTES: usize = 900 * 1024;

/// The most inputs a request may ask for (Flux's own maximum of `spec.filter.limit`).
const MAX_LIMIT: usize = 10_000;

/// The longest glob or project key a request may carry.
const MAX_FILTER_BYTES: usize = 256;

/// The endpoint's name in the `lists_served` metric.
const ENDPOINT: &str = "flux";

/// What a request narrows the list to.
#[derive(Debug, Default, PartialEq)]
struct Filters {
    projects: Vec<String>,
    globs: Vec<String>,
    limit: Option<usize>,
}

impl Filters {
    fn keeps(&self, repository: &Repository) -> bool {
        (self.projects.is_empty()
            || repository.project.as_deref().is_some_and(|p| {
                self.projects
                    .iter()
                    .any(|want| want.eq_ignore_ascii_case(p))
            }))
            && (self.globs.is_empty() || self.globs.iter().any(|g| glob(g, &repository.name)))
    }
}

/// The filters of a query string, or why it is refused (quoted short and escaped).
fn read_query(query: Option<&str>) -> Result<Filters, String> {
    let quoted = |text: &str| api::text::for_the_api(text, 64).into_owned();
    let mut filters = Filters::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if value.len() > MAX_FILTER_BYTES {
            return Err(format!(
                "query parameter {} is longer than {MAX_FILTER_BYTES} bytes",
                quoted(&key)
            ));
        }
        match &*key {
            "project" => filters.projects.push(value.into_owned()),
            "match" => filters.globs.push(value.into_owned()),
            "limit" => match value.parse::<usize>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => filters.limit = Some(limit),
                _ => {
                    return Err(format!(
                        "limit must be a number from 1 to {MAX_LIMIT}, not {:?}",
                        quoted(&value)
                    ));
                }
            },
            other => {
                return Err(format!(
                    "unknown query parameter {:?}: the filters are project (a project key), \
                     match (a glob on the repository slug) and limit",
                    quoted(other)
                ));
            }
        }
    }
    Ok(filters)
}

/// `GET /api/v1/inputs/{namespace}/{subscription}`.
pub async fn inputs(
    State(generator): State<Generator>,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let refusal = |status: StatusCode, message: String| {
        (status, Json(json!({ "message": message }))).into_response()
    };
    let filters = match read_query(query.as_deref()) {
        Ok(filters) => filters,
        Err(message) => return refusal(StatusCode::BAD_REQUEST, message),
    };
    let (subscription, list) = match offered_list(&generator.shared, &namespace, &name, ENDPOINT) {
        Ok(found) => found,
        Err((status, message)) => return refusal(status, message),
    };
    let integration = subscription.spec.integration_ref.name.as_str();
    let input = |r: &Repository, out: &mut Vec<u8>| {
        let mut input = ParameterSet::new(r, &namespace, &name, integration);
        input.id = Some(r.id.as_deref().unwrap_or(&r.full_name));
        serde_json::to_writer(out, &input).expect("JSON to memory");
    };
    match answer(&list, &filters, input) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(kept) => refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the {kept} inputs of Subscription {namespace}/{name} that pass the filters take \
                 more than the {} KiB Flux reads: narrow them in spec.url with ?project=KEY, \
                 ?match=GLOB (on the slug) or ?limit=N",
                MAX_ANSWER_BYTES / 1024
            ),
        ),
    }
}

/// The JSON answer `{"inputs": [...]}` of the repositories `filters` keeps, or, when it would pass
/// [`MAX_ANSWER_BYTES`], how many inputs it held.
fn answer(
    list: &Arc<List>,
    filters: &Filters,
    input: impl Fn(&Repository, &mut Vec<u8>),
) -> Result<Vec<u8>, usize> {
    let mut body = b"{\"inputs\":[".to_vec();
    let entries = list.entries();
    let kept = entries
        .iter()
        .filter(|r| filters.keeps(r))
        .take(filters.limit.unwrap_or(usize::MAX));
    for (count, repository) in kept.enumerate() {
        if count > 0 {
            body.push(b',');
        }
        input(repository, &mut body);
        if body.len() + 2 > MAX_ANSWER_BYTES {
            let rest = entries.iter().filter(|r| filters.keeps(r)).count();
            return Err(filters.limit.map_or(rest, |limit| rest.min(limit)));
        }
    }
    body.extend_from_slice(b"]}");
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_its_filters_or_is_refused_with_the_ones_there_are() {
        assert_eq!(
            read_query(Some("project=API&project=web&match=api-*&limit=20")),
            Ok(Filters {
                projects: vec!["API".into(), "web".into()],
                globs: vec!["api-*".into()],
                limit: Some(20),
            })
        );
        assert_eq!(read_query(None), Ok(Filters::default()));
        for (query, says) in [
            ("limit=0", "limit must be a number from 1 to 10000"),
            ("limit=10001", "limit must be a number from 1 to 10000"),
            ("limit=-1", "limit must be a number"),
            ("name=x", "unknown query parameter \"name\""),
        ] {
            let refused = read_query(Some(query)).unwrap_err();
            assert!(refused.starts_with(says), "{query}: {refused}");
        }
        let long = format!("match={}", "*".repeat(300));
        assert!(
            read_query(Some(&long))
                .unwrap_err()
                .contains("longer than 256 bytes")
        );
    }

    proptest::proptest! {
        /// Whatever query string comes: filters, or a short printable refusal; never a panic.
        #[test]
        fn any_query_is_read_or_refused_safely(query in ".{0,400}") {
            if let Err(message) = read_query(Some(&query)) {
                proptest::prop_assert!(message.len() <= 512, "{}", message);
                proptest::prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
            }
        }
    }
}
