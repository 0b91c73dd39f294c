//! Errors of the runc driver, container specs and mounts.
//!
//! Each message is complete on its own (it names the command, file or field, and the fix
//! where there is one), so the underlying error is part of the text, not a `source()`.

use std::path::PathBuf;
use std::time::Duration;

/// A failure to prepare, start, run, inspect or stop a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The OCI runtime binary does not exist.
    #[error("OCI runtime `{binary}` not found: install it with apt-get install runc")]
    NotInstalled {
        /// The binary that was asked for, e.g. `runc`.
        binary: String,
    },
    /// The OCI runtime binary exists but could not be started.
    #[error("running `{binary}`: {cause}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why it could not be started.
        cause: std::io::Error,
    },
    /// The OCI runtime ran and reported a failure.
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        /// The command, e.g. `runc run --detach sp-1-web`.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said (its log or stderr), trimmed.
        output: String,
    },
    /// The OCI runtime itself was killed by a signal.
    #[error("`{command}` was killed ({status})")]
    Killed {
        /// The command.
        command: String,
        /// Its exit status, naming the signal.
        status: String,
    },
    /// A runtime command (state, list, kill, delete, ...) hung and was killed.
    #[error("`{command}` did not finish within {}; it was killed", humantime::format_duration(*after))]
    CommandTimedOut {
        /// The command.
        command: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A container run to completion ran past its timeout; it was killed and removed.
    #[error("container {id} did not finish within {}; it was killed and removed", humantime::format_duration(*after))]
    TimedOut {
        /// The container id.
        id: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The container spec is not usable as given; the message names the field and the rule.
    #[error("{0}")]
    InvalidSpec(String),
    /// Another container already has this id under the runtime root.
    #[error("a container with id {id} already exists")]
    Exists {
        /// The id.
        id: String,
    },
    /// The bundle dir already holds a root filesystem of another container.
    #[error("bundle dir {} is already in use; stop the container that owns it first", dir.display())]
    BundleInUse {
        /// The bundle dir.
        dir: PathBuf,
    },
    /// A file, directory or mount operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was attempted, naming the path, e.g. "creating bundle dir /run/x".
        what: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The OCI config could not be assembled (a value oci-spec refuses).
    #[error("building the OCI config of container {id}: {cause}")]
    Config {
        /// The container id.
        id: String,
        /// What oci-spec refused.
        cause: oci_spec::OciSpecError,
    },
    /// The runtime printed something that is not the JSON it documents.
    #[error("parsing `{command}` output: {cause}")]
    Parse {
        /// The command.
        command: String,
        /// The JSON error.
        cause: serde_json::Error,
    },
}

impl RuntimeError {
    /// An [`RuntimeError::Io`] for `what` (which names the path).
    pub(crate) fn io(what: impl Into<String>, cause: impl Into<std::io::Error>) -> Self {
        RuntimeError::Io {
            what: what.into(),
            cause: cause.into(),
        }
    }
}
