//! Landfall's strict AWS layer: a proxy between the AWS SDK and the moto emulator that makes
//! the emulator behave as AWS documents, where moto is lenient (quotas, asynchronous account
//! creation, eventual consistency, duplicate names, concurrent modification) and where the
//! real service is unreliable (throttling, 5xx, reset connections, injected from a seed).
//!
//! Every rule, with the AWS documentation it comes from, is listed in `docs/aws-fidelity.md`.
//! The rules themselves are pure functions in [`rules`], unit-tested without a network;
//! [`layer`] applies them to traffic; [`wire`] reads and writes the two protocols.

pub mod layer;
pub mod rules;
pub mod wire;
