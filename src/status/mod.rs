//! Status helpers shared by both controllers: pure condition arithmetic ([`conditions`]) and the
//! one place status is written ([`apply`]).

pub mod apply;
pub mod conditions;
