//! Container runtime: OCI bundles, the runc driver, network namespaces, overlay roots and cgroups.
//!
//! One container is one [`ContainerSpec`]: [`Runtime::start`] lays out its bundle (an overlay
//! root over the host's `/usr`, a generated `/etc`, a `config.json` written with `oci-spec`)
//! and hands it to the OCI runtime CLI (`runc`). Networking ([`net`]) is plain netlink:
//! one bridge per ship, one named network namespace + veth per container.

pub mod cgroups;
mod error;
mod exec;
mod mounts;
pub mod net;
mod runtime;
mod spec;

pub use cgroups::CgroupError;
pub use error::RuntimeError;
pub use mounts::unmount_under;
pub use net::NetError;
pub use runtime::{ContainerState, Runtime, RUNTIME_COMMAND_TIMEOUT};
pub use spec::{Bind, ContainerSpec, Limits, DEFAULT_TMP_BYTES};
