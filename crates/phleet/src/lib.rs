//! The phleet: ships share nothing but HQ, so every phleet-wide view is a fan-out to the
//! ships HQ's `ships` lists, each answer bounded in time so one slow or dead ship never
//! holds back the rest.
//!
//! - [`token`]: the phleet token guarding admin endpoints beyond loopback
//!   ([`load_token`], [`Token::matches`], [`is_loopback`]) and the webhook secret.
//! - [`PeerClient`]: asks ships over HTTP with keep-alive, one timeout per request
//!   ([`PEER_TIMEOUT`]) and the token; [`PeerClient::status_all`] for `GET /status`.
//! - [`phleet_view`] and [`render_text`]: the ships side by side, drift and unreachable
//!   ships marked (`status --phleet`, `GET /phleet/status`).
//! - [`PeerClient::logs`]: every ship's records merged by time, followed with reconnects
//!   (`logs --phleet`, `GET /phleet/logs`).
//! - [`targets`]: Prometheus HTTP service discovery for every ship's `/metrics`.
//! - [`may_start`]: the rollout gate for waves of ships, from what earlier waves answer at
//!   `GET /phleet/versions` ([`ShipVersions`]).
//! - [`hooks`]: `POST /hooks/git` push events: [`verify`], [`repositories`],
//!   [`names_source`], [`PeerClient::forward_hook`].
//!
//! Nothing here depends on the ship: the status a ship serves is read into this crate's
//! own [`ShipStatus`], which takes what it knows and ignores the rest.

pub mod hooks;
mod logs;
mod peer;
mod rollout;
mod status;
mod targets;
pub mod token;
mod view;

pub use hooks::{
    is_forwarded, names_source, repositories, verify, Forge, HookError, FORWARDED_HEADER,
};
pub use logs::{
    merge_by_time, LogQuery, LogQueryError, LogStream, MergedLine, Notice, NoticeEvent,
    RESUME_SLACK_NS,
};
pub use peer::{Peer, PeerClient, PeerError, PEER_TIMEOUT};
pub use rollout::{
    earlier_waves, may_start, wave_of, FailedVersion, Gate, Observations, PeerVersionState,
    Reachability, RolloutSettingError, RolloutSettings, ServiceVersions, Serving, ShipVersions,
    VersionId, ROLLOUT_SETTING, SOAK_SETTING, WAIT_SETTING,
};
pub use status::{
    version_label, ContainerReport, DeployReport, PeerStatus, ServiceReport, ShipStatus,
};
pub use targets::targets;
pub use token::{
    is_loopback, load_hook_secret, load_token, new_token, HookSecret, SecretKind, SecretSyntax,
    Token, TokenError,
};
pub use view::{
    phleet_view, render_text, LastDeploy, PhleetView, RolloutNote, ServiceAcross, ShipService,
    ShipView, VersionSeen,
};
