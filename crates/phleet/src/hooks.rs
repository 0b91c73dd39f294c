//! `POST /hooks/git`: push events from GitHub, GitLab and Gitea. Verifying the signature,
//! finding the repositories a push names, matching them to orders' `autodeploy` URLs, and
//! passing the event on to the other ships (which verify it again: every ship holds the
//! same `<state-dir>/webhook.secret`).

use std::fmt;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::peer::{peer_uri, Peer, PeerClient, PeerError};
use crate::token::HookSecret;

/// Set on an event a ship passes on, naming that ship, so it is never passed on again.
pub const FORWARDED_HEADER: &str = "x-starphleet-forwarded";

/// The headers of an event that travel with it to the other ships (signatures included).
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "x-github-event",
    "x-github-delivery",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-gitlab-event",
    "x-gitlab-token",
    "x-gitlab-event-uuid",
    "x-gitea-event",
    "x-gitea-delivery",
    "x-gitea-signature",
];

/// Which forge sent an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`.
    GitHub,
    /// GitLab: `X-Gitlab-Token: <secret>`.
    GitLab,
    /// Gitea (and Forgejo): `X-Gitea-Signature: <hex HMAC-SHA256>`.
    Gitea,
}

impl fmt::Display for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forge::GitHub => "GitHub",
            Forge::GitLab => "GitLab",
            Forge::Gitea => "Gitea",
        })
    }
}

/// Why a webhook event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No signature header of any supported forge.
    #[error(
        "the event is not signed: it has none of X-Hub-Signature-256 (GitHub), \
         X-Gitea-Signature (Gitea) or X-Gitlab-Token (GitLab); set the webhook's secret \
         to the content of <state-dir>/webhook.secret"
    )]
    Unsigned,
    /// The signature does not match the secret.
    #[error(
        "the {forge} signature does not match: the webhook's secret differs from \
         <state-dir>/webhook.secret (it must be the same on the forge and every ship)"
    )]
    BadSignature {
        /// Who claims to have sent it.
        forge: Forge,
    },
    /// The signature header cannot be read.
    #[error("{header}: {why}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The body is not a JSON payload.
    #[error(
        "the event's payload is not JSON ({0}); in GitHub set the webhook's content type \
         to application/json"
    )]
    BadPayload(String),
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, HookError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| HookError::Malformed {
                header: name,
                why: "not ASCII".into(),
            })
        })
        .transpose()
}

/// Checks a hex HMAC-SHA256 of `body` in constant time.
fn check_hmac(
    forge: Forge,
    name: &'static str,
    hex_sig: &str,
    body: &[u8],
    secret: &HookSecret,
) -> Result<Forge, HookError> {
    let sig = hex::decode(hex_sig.trim()).map_err(|e| HookError::Malformed {
        header: name,
        why: format!("not a hex HMAC-SHA256: {e}"),
    })?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&sig)
        .map(|()| forge)
        .map_err(|_| HookError::BadSignature { forge })
}

/// Verifies an event's signature with the webhook secret; returns the forge that sent it.
/// Gitea's own header is preferred (Gitea also sends GitHub's); GitLab sends the secret
/// itself, compared in constant time.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &HookSecret) -> Result<Forge, HookError> {
    if let Some(sig) = header(headers, "x-gitea-signature")? {
        return check_hmac(Forge::Gitea, "X-Gitea-Signature", sig, body, secret);
    }
    if let Some(sig) = header(headers, "x-hub-signature-256")? {
        let hex_sig = sig
            .trim()
            .strip_prefix("sha256=")
            .ok_or(HookError::Malformed {
                header: "X-Hub-Signature-256",
                why: "does not start with sha256=".into(),
            })?;
        return check_hmac(Forge::GitHub, "X-Hub-Signature-256", hex_sig, body, secret);
    }
    if let Some(token) = header(headers, "x-gitlab-token")? {
        let want = Sha256::digest(secret.as_bytes());
        let got = Sha256::digest(token.as_bytes());
        return if bool::from(want.ct_eq(&got)) {
            Ok(Forge::GitLab)
        } else {
            Err(HookError::BadSignature {
                forge: Forge::GitLab,
            })
        };
    }
    Err(HookError::Unsigned)
}

/// The JSON payload: the body, or GitHub's form-encoded `payload=` field.
fn payload(body: &[u8]) -> Result<Value, HookError> {
    let text = std::str::from_utf8(body).map_err(|e| HookError::BadPayload(e.to_string()))?;
    let json = if text.trim_start().starts_with('{') {
        text.to_string()
    } else {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| HookError::BadPayload("neither JSON nor a payload= form".into()))?
    };
    serde_json::from_str(&json).map_err(|e| HookError::BadPayload(e.to_string()))
}

/// Every clone URL a push event names (deduplicated, in payload order): GitHub's and
/// Gitea's `repository.clone_url`, `ssh_url`, `git_url`, `html_url` (+ `.git`); GitLab's
/// `project.git_http_url`, `git_ssh_url`, `web_url` (+ `.git`) and the older
/// `repository.*` fields.
pub fn repositories(forge: Forge, body: &[u8]) -> Result<Vec<String>, HookError> {
    let v = payload(body)?;
    // (object, field, also with .git appended)
    let fields: &[(&str, &str, bool)] = match forge {
        Forge::GitHub | Forge::Gitea => &[
            ("repository", "clone_url", false),
            ("repository", "ssh_url", false),
            ("repository", "git_url", false),
            ("repository", "html_url", true),
        ],
        Forge::GitLab => &[
            ("project", "git_http_url", false),
            ("project", "git_ssh_url", false),
            ("project", "http_url", false),
            ("project", "ssh_url", false),
            ("project", "web_url", true),
            ("repository", "git_http_url", false),
            ("repository", "git_ssh_url", false),
            ("repository", "url", false),
            ("repository", "homepage", true),
        ],
    };
    let mut out: Vec<String> = Vec::new();
    let mut add = |u: String| {
        if !u.is_empty() && !out.contains(&u) {
            out.push(u);
        }
    };
    for (object, field, with_git) in fields {
        if let Some(u) = v
            .get(object)
            .and_then(|o| o.get(field))
            .and_then(Value::as_str)
        {
            add(u.to_string());
            if *with_git && !u.ends_with(".git") {
                add(format!("{}.git", u.trim_end_matches('/')));
            }
        }
    }
    Ok(out)
}

/// A git URL reduced to (host, path) so that its https, ssh, scp-like (`git@host:path`) and
/// git:// forms compare equal: no user, port, `#ref`, trailing `/` or `.git`; host and path
/// in lower case (a false match only costs one extra check of a repository).
fn normalize(url: &str) -> (String, String) {
    let url = url.trim();
    let url = url.split('#').next().unwrap_or(url);
    let (host, path) = if let Some((_, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit('@').next().unwrap_or(authority);
        let host = if let Some(end) = host.find(']') {
            &host[..=end]
        } else {
            host.split(':').next().unwrap_or(host)
        };
        (host, path)
    } else {
        match url.split_once(':') {
            Some((before, path)) if !before.contains('/') => {
                (before.rsplit('@').next().unwrap_or(before), path)
            }
            _ => ("", url),
        }
    };
    let mut path = path.trim_matches('/').to_ascii_lowercase();
    if let Some(p) = path.strip_suffix(".git") {
        path = p.trim_end_matches('/').to_string();
    }
    (host.to_ascii_lowercase(), path)
}

/// Whether a push naming `urls` is about the repository an order follows (`autodeploy
/// URL[#ref]`), whatever URL form each side uses.
pub fn names_source(urls: &[String], source_url: &str) -> bool {
    let want = normalize(source_url);
    !want.1.is_empty() && urls.iter().any(|u| normalize(u) == want)
}

/// Whether another ship passed this event on already.
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

impl PeerClient {
    /// Passes a verified event on to every ship in `peers` but `me`, at once, each within
    /// the timeout, with its signature headers and [`FORWARDED_HEADER`]; an event that was
    /// passed on already goes nowhere. Best effort: returns how each ship took it.
    pub async fn forward_hook(
        &self,
        me: &str,
        peers: &[Peer],
        headers: &HeaderMap,
        body: Bytes,
    ) -> Vec<(Peer, Result<(), PeerError>)> {
        if is_forwarded(headers) {
            return Vec::new();
        }
        let mut kept = HeaderMap::new();
        for name in KEPT_HEADERS {
            if let Some(v) = headers.get(*name) {
                kept.insert(HeaderName::from_static(name), v.clone());
            }
        }
        match HeaderValue::from_str(me) {
            Ok(v) => kept.insert(HeaderName::from_static(FORWARDED_HEADER), v),
            Err(_) => kept.insert(
                HeaderName::from_static(FORWARDED_HEADER),
                HeaderValue::from_static("1"),
            ),
        };
        let sends = peers.iter().filter(|p| p.name != me).map(|p| {
            let kept = &kept;
            let body = body.clone();
            async move {
                let sent = match peer_uri(p, "/hooks/git") {
                    Ok(uri) => self
                        .fetch(Method::POST, uri, Some(kept), body)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                (p.clone(), sent)
            }
        });
        futures::future::join_all(sends).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "It's a Secret to Everybody";

    fn secret() -> HookSecret {
        HookSecret::new(SECRET).unwrap()
    }

    fn hmac_hex(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// A GitHub push, trimmed to the fields GitHub documents for `repository`.
    const GITHUB_PUSH: &str = r#"{
      "ref": "refs/heads/main", "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
      "after": "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5",
      "repository": {
        "id": 1296269, "name": "echo", "full_name": "wballard/echo", "private": false,
        "html_url": "https://github.com/wballard/echo",
        "url": "https://github.com/wballard/echo",
        "git_url": "git://github.com/wballard/echo.git",
        "ssh_url": "git@github.com:wballard/echo.git",
        "clone_url": "https://github.com/wballard/echo.git",
        "svn_url": "https://github.com/wballard/echo",
        "default_branch": "main"
      },
      "pusher": {"name": "wballard", "email": "w@example.com"},
      "commits": []
    }"#;

    /// A GitLab "Push Hook", with its documented `project` and `repository` fields.
    const GITLAB_PUSH: &str = r#"{
      "object_kind": "push", "event_name": "push", "ref": "refs/heads/master",
      "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
      "project": {
        "id": 15, "name": "Diaspora", "path_with_namespace": "mike/diaspora",
        "web_url": "http://gitlab.example.com/mike/diaspora",
        "git_ssh_url": "git@gitlab.example.com:mike/diaspora.git",
        "git_http_url": "http://gitlab.example.com/mike/diaspora.git",
        "ssh_url": "git@gitlab.example.com:mike/diaspora.git",
        "http_url": "http://gitlab.example.com/mike/diaspora.git",
        "default_branch": "master"
      },
      "repository": {
        "name": "Diaspora",
        "url": "git@gitlab.example.com:mike/diaspora.git",
        "homepage": "http://gitlab.example.com/mike/diaspora",
        "git_http_url": "http://gitlab.example.com/mike/diaspora.git",
        "git_ssh_url": "git@gitlab.example.com:mike/diaspora.git"
      },
      "commits": [], "total_commits_count": 0
    }"#;

    /// A Gitea push, with the `repository` fields Gitea's API documents.
    const GITEA_PUSH: &str = r#"{
      "ref": "refs/heads/develop", "before": "28e1879d029cb852e4844d9c718537df08844e03",
      "after": "bffeb74224043ba2feb48d137756c8a9331c449a",
      "repository": {
        "id": 140, "name": "webhooks", "full_name": "gitea/webhooks",
        "html_url": "http://localhost:3000/gitea/webhooks",
        "ssh_url": "ssh://gitea@localhost:2222/gitea/webhooks.git",
        "clone_url": "http://localhost:3000/gitea/webhooks.git",
        "default_branch": "master"
      },
      "pusher": {"login": "gitea"}
    }"#;

    #[test]
    fn verifies_github_signatures() {
        let body = GITHUB_PUSH.as_bytes();
        let sig = format!("sha256={}", hmac_hex(body));
        let h = headers(&[("x-github-event", "push"), ("x-hub-signature-256", &sig)]);
        assert_eq!(verify(&h, body, &secret()), Ok(Forge::GitHub));
        let tampered = GITHUB_PUSH.replace("main", "evil");
        let e = verify(&h, tampered.as_bytes(), &secret()).unwrap_err();
        assert_eq!(
            e,
            HookError::BadSignature {
                forge: Forge::GitHub
            }
        );
        assert!(e.to_string().contains("webhook.secret"), "{e}");
        let other = HookSecret::new("another secret").unwrap();
        assert!(verify(&h, body, &other).is_err());
        let bare = headers(&[("x-hub-signature-256", &hmac_hex(body))]);
        assert!(matches!(
            verify(&bare, body, &secret()),
            Err(HookError::Malformed { .. })
        ));
        let junk = headers(&[("x-hub-signature-256", "sha256=zz")]);
        assert!(matches!(
            verify(&junk, body, &secret()),
            Err(HookError::Malformed { .. })
        ));
    }

    #[test]
    fn the_documented_github_example_verifies() {
        // GitHub's documentation: secret "It's a Secret to Everybody", payload
        // "Hello, World!" gives this signature.
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(verify(&h, b"Hello, World!", &secret()), Ok(Forge::GitHub));
    }

    #[test]
    fn verifies_gitea_signatures_before_githubs() {
        let body = GITEA_PUSH.as_bytes();
        let h = headers(&[
            ("x-gitea-event", "push"),
            ("x-gitea-signature", &hmac_hex(body)),
            ("x-hub-signature-256", "sha256=00"),
        ]);
        assert_eq!(verify(&h, body, &secret()), Ok(Forge::Gitea));
        let bad = headers(&[("x-gitea-signature", &hmac_hex(b"other"))]);
        assert_eq!(
            verify(&bad, body, &secret()),
            Err(HookError::BadSignature {
                forge: Forge::Gitea
            })
        );
    }

    #[test]
    fn verifies_gitlab_tokens() {
        let body = GITLAB_PUSH.as_bytes();
        let h = headers(&[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", SECRET)]);
        assert_eq!(verify(&h, body, &secret()), Ok(Forge::GitLab));
        let h = headers(&[("x-gitlab-token", "It's a Secret to Everybody!")]);
        assert_eq!(
            verify(&h, body, &secret()),
            Err(HookError::BadSignature {
                forge: Forge::GitLab
            })
        );
    }

    #[test]
    fn refuses_unsigned_events() {
        let h = headers(&[("x-github-event", "push")]);
        let e = verify(&h, b"{}", &secret()).unwrap_err();
        assert_eq!(e, HookError::Unsigned);
        assert!(e.to_string().contains("X-Gitlab-Token"), "{e}");
    }

    #[test]
    fn finds_every_url_a_push_names() {
        assert_eq!(
            repositories(Forge::GitHub, GITHUB_PUSH.as_bytes()).unwrap(),
            [
                "https://github.com/wballard/echo.git",
                "git@github.com:wballard/echo.git",
                "git://github.com/wballard/echo.git",
                "https://github.com/wballard/echo",
            ]
        );
        assert_eq!(
            repositories(Forge::GitLab, GITLAB_PUSH.as_bytes()).unwrap(),
            [
                "http://gitlab.example.com/mike/diaspora.git",
                "git@gitlab.example.com:mike/diaspora.git",
                "http://gitlab.example.com/mike/diaspora",
            ]
        );
        assert_eq!(
            repositories(Forge::Gitea, GITEA_PUSH.as_bytes()).unwrap(),
            [
                "http://localhost:3000/gitea/webhooks.git",
                "ssh://gitea@localhost:2222/gitea/webhooks.git",
                "http://localhost:3000/gitea/webhooks",
            ]
        );
        // GitHub's form-encoded delivery.
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", GITHUB_PUSH)
            .finish();
        assert_eq!(
            repositories(Forge::GitHub, form.as_bytes()).unwrap().len(),
            4
        );
        assert!(matches!(
            repositories(Forge::GitHub, b"not json"),
            Err(HookError::BadPayload(_))
        ));
        assert!(repositories(Forge::GitHub, b"{}").unwrap().is_empty());
    }

    #[test]
    fn matches_sources_across_url_forms() {
        let gh = repositories(Forge::GitHub, GITHUB_PUSH.as_bytes()).unwrap();
        let yes = [
            "https://github.com/wballard/echo.git",
            "https://github.com/wballard/echo",
            "https://GitHub.com/wballard/echo/",
            "git@github.com:wballard/echo.git#release-2",
            "ssh://git@github.com/wballard/echo.git",
            "ssh://git@github.com:22/wballard/echo",
            "https://user:pw@github.com/wballard/echo.git",
            "github.com:wballard/echo",
        ];
        for src in yes {
            assert!(names_source(&gh, src), "{src}");
        }
        let no = [
            "https://github.com/wballard/echo-two.git",
            "https://gitlab.com/wballard/echo.git",
            "https://github.com/other/echo.git",
            "/srv/git/echo.git",
            "",
        ];
        for src in no {
            assert!(!names_source(&gh, src), "{src}");
        }
        let gitea = repositories(Forge::Gitea, GITEA_PUSH.as_bytes()).unwrap();
        assert!(names_source(
            &gitea,
            "ssh://gitea@localhost:2222/gitea/webhooks.git"
        ));
        assert!(names_source(&gitea, "gitea@localhost:gitea/webhooks"));
        let gl = repositories(Forge::GitLab, GITLAB_PUSH.as_bytes()).unwrap();
        assert!(names_source(
            &gl,
            "https://gitlab.example.com/mike/diaspora.git"
        ));
        assert_eq!(
            normalize("http://[fd00::1]:3000/a/b.git"),
            ("[fd00::1]".into(), "a/b".into())
        );
    }
}
