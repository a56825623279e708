//! The reconcile loop: a whole desired cluster in, a node plan, host wiring and a map diff out.
pub mod agent;
pub mod attach;
pub mod desired;
pub mod maglev;
pub mod names;
pub mod resolver;
