//! Pure helpers over `metav1.Condition` lists, with `meta.SetStatusCondition`'s semantics:
//! `lastTransitionTime` moves only when a condition's status flips, so re-computing the same
//! conditions yields an identical list and the controller writes nothing. No I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::text::{self, MAX_MESSAGE_BYTES};

/// The status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// The current time as Kubernetes stores it (whole seconds), so a condition written now compares
/// equal to the same condition read back.
pub fn now() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).expect("the current time is representable"))
}

/// A condition to set: its type, status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Sets `desired` in `conditions`, stamping `generation`. An existing condition of the same type
/// keeps its `lastTransitionTime` unless its status changes; `now` is used otherwise.
///
/// Every condition message goes through here, so here it is made safe for the API server and
/// its readers: control and bidi characters escaped, at most [`MAX_MESSAGE_BYTES`] (a longer
/// message from Bitbucket would make the status write fail).
pub fn set(conditions: &mut Vec<Condition>, desired: Desired, generation: Option<i64>, now: &Time) {
    let status = desired.status.as_str();
    let desired = Desired {
        message: text::for_the_api(&desired.message, MAX_MESSAGE_BYTES).into_owned(),
        ..desired
    };
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.status = status.to_owned();
                existing.last_transition_time = now.clone();
            }
            existing.reason = desired.reason.to_owned();
            existing.message = desired.message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: desired.type_.to_owned(),
            status: status.to_owned(),
            reason: desired.reason.to_owned(),
            message: desired.message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
    sort(conditions);
}

/// Removes the condition of `type_`, if present (kstatus: `Reconciling` and `Stalled` are absent
/// rather than False).
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of `type_`, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// A stable order, so that the same set of conditions always serialises the same way:
/// `Ready` first (what people look for), then the rest alphabetically.
fn sort(conditions: &mut [Condition]) {
    conditions.sort_by(|a, b| {
        (a.type_ != crate::api::conditions::READY, &a.type_)
            .cmp(&(b.type_ != crate::api::conditions::READY, &b.type_))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{READY, STALLED};

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn setting_the_same_condition_again_changes_nothing() {
        let mut conditions = Vec::new();
        let ready = Desired::new(READY, Status::True, "Validated", "valid");
        set(&mut conditions, ready.clone(), Some(1), &at(100));
        let before = conditions.clone();
        set(&mut conditions, ready, Some(1), &at(200));
        assert_eq!(conditions, before);
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            Desired::new(READY, Status::False, "RateLimited", "a"),
            Some(1),
            &at(100),
        );
        set(
            &mut conditions,
            Desired::new(READY, Status::False, "BitbucketUnavailable", "b"),
            Some(2),
            &at(200),
        );
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].reason, "BitbucketUnavailable");
        assert_eq!(conditions[0].observed_generation, Some(2));
        set(
            &mut conditions,
            Desired::new(READY, Status::True, "Validated", "c"),
            Some(2),
            &at(300),
        );
        assert_eq!(conditions[0].last_transition_time, at(300));
    }

    #[test]
    fn ready_comes_first_then_the_others_alphabetically() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            Desired::new(STALLED, Status::True, "SecretNotFound", "x"),
            None,
            &at(1),
        );
        set(
            &mut conditions,
            Desired::new("DeletionBlocked", Status::True, "DeletionBlocked", "y"),
            None,
            &at(1),
        );
        set(
            &mut conditions,
            Desired::new(READY, Status::False, "SecretNotFound", "x"),
            None,
            &at(1),
        );
        let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, "DeletionBlocked", STALLED]);
        remove(&mut conditions, STALLED);
        assert!(!is_true(&conditions, STALLED));
        assert!(is_true(&conditions, "DeletionBlocked"));
    }
}
