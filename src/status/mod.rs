//! Status helpers shared by both controllers: pure condition arithmetic ([`conditions`]) and the
//! one place status is written ([`apply`]), and what a controller remembers of its writes
//! ([`remembered`]).

pub mod apply;
pub mod conditions;
pub mod remembered;
