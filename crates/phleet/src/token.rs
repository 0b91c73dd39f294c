//! The phleet token that guards admin endpoints beyond loopback, and the webhook secret.
//!
//! Both live in the ship's state dir, never in git, and are checked the way ssh checks a
//! private key: a regular file owned by the ship's user, readable by nobody else.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a new token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// A token shorter than this is refused: it could be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Larger files are not tokens (and are not read whole).
const MAX_SECRET_BYTES: u64 = 4096;

/// A new phleet token: 256 bits from the OS random source, URL-safe base64 (43 characters).
pub fn new_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `addr` is a loopback address (127.0.0.0/8, ::1, or ::ffff:127.x.x.x), where the
/// admin endpoint needs no token.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The phleet token: every ship holds the same one and sends it as `Authorization: Bearer`.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
}

impl Token {
    /// Whether an `Authorization` header value carries this token (`Bearer <token>`; the
    /// scheme is case-insensitive). Compared in constant time, over digests so that not even
    /// the length leaks.
    pub fn matches(&self, authorization_header: Option<&str>) -> bool {
        let Some(value) = authorization_header else {
            return false;
        };
        let Some((scheme, presented)) = value.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let want = Sha256::digest(self.secret.as_bytes());
        let got = Sha256::digest(presented.trim().as_bytes());
        want.ct_eq(&got).into()
    }

    /// The `Authorization` header value a client sends: `Bearer <token>`.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

/// Never prints the secret.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Parses a token's text (one line; a trailing newline is allowed).
impl FromStr for Token {
    type Err = SecretSyntax;

    fn from_str(text: &str) -> Result<Self, SecretSyntax> {
        let line = one_line(text)?.trim_matches(|c| c == ' ' || c == '\t');
        // It travels in an HTTP header, after `Bearer `.
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretSyntax::BadCharacter);
        }
        if line.len() < MIN_TOKEN_CHARS {
            return Err(SecretSyntax::TooShort(line.len()));
        }
        Ok(Token {
            secret: Arc::from(line),
        })
    }
}

/// What is wrong with the text of a token or secret file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretSyntax {
    /// Nothing but whitespace.
    #[error("it is empty")]
    Empty,
    /// More than one line.
    #[error("it has more than one line")]
    MultiLine,
    /// A control character (or, in a token, a space or non-ASCII: it goes in a header).
    #[error("it contains a control character (a token also no space and no non-ASCII character)")]
    BadCharacter,
    /// Shorter than [`MIN_TOKEN_CHARS`].
    #[error("it is only {0} characters long (at least {MIN_TOKEN_CHARS} are needed)")]
    TooShort(usize),
}

/// The one line of a secret file, without its newline; not empty, no control characters.
fn one_line(text: &str) -> Result<&str, SecretSyntax> {
    let line = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text);
    if line.contains('\n') {
        return Err(SecretSyntax::MultiLine);
    }
    if line.trim().is_empty() {
        return Err(SecretSyntax::Empty);
    }
    if line.chars().any(char::is_control) {
        return Err(SecretSyntax::BadCharacter);
    }
    Ok(line)
}

/// Which secret a file holds, for the error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `<state-dir>/phleet.token`.
    PhleetToken,
    /// `<state-dir>/webhook.secret`.
    WebhookSecret,
}

impl SecretKind {
    fn what(self) -> &'static str {
        match self {
            SecretKind::PhleetToken => "phleet token",
            SecretKind::WebhookSecret => "webhook secret",
        }
    }

    fn how_to_make(self, path: &Path) -> String {
        let p = path.display();
        match self {
            SecretKind::PhleetToken => format!(
                "make one with `starphleet token > {p} && chmod 600 {p}` on one ship, \
                 then copy that same file to every other ship in HQ's `ships`"
            ),
            SecretKind::WebhookSecret => format!(
                "write the secret you set in the forge's webhook to {p} (e.g. \
                 `starphleet token > {p} && chmod 600 {p}`, then paste it into the forge), \
                 the same file on every ship"
            ),
        }
    }
}

/// Why a token or secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file does not exist.
    #[error("no {} at {}: {}", kind.what(), path.display(), kind.how_to_make(path))]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// What it should hold.
        kind: SecretKind,
    },
    /// The file exists but could not be read.
    #[error("reading the {} {}: {source}", kind.what(), path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        kind: SecretKind,
        /// Why.
        source: std::io::Error,
    },
    /// A directory, device or larger file than any secret.
    #[error("the {} {} is not a small regular file; {}", kind.what(), path.display(), kind.how_to_make(path))]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        kind: SecretKind,
    },
    /// Group or others may read or write it (like ssh, any such bit is refused).
    #[error(
        "the {} {} is accessible by other users (mode {mode:04o}); run `chmod 600 {}`",
        kind.what(), path.display(), path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        kind: SecretKind,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by another user than the one the ship runs as.
    #[error(
        "the {} {} belongs to uid {owner}, not to the ship's user (uid {me}); run `chown {me} {}`",
        kind.what(), path.display(), path.display()
    )]
    NotOwner {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        kind: SecretKind,
        /// Its owner.
        owner: u32,
        /// The ship's effective uid.
        me: u32,
    },
    /// The content is not one usable line.
    #[error("the {} {} cannot be used: {problem}; {}", kind.what(), path.display(), kind.how_to_make(path))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        kind: SecretKind,
        /// What is wrong with it.
        problem: SecretSyntax,
    },
    /// The OS random source failed (only `new_token`).
    #[error("the OS random source failed: {0}")]
    Random(String),
}

/// Reads a secret file after checking it like an ssh key: regular, owned by us, mode 0600 or
/// stricter, small. Returns its text.
fn read_secret_file(path: &Path, kind: SecretKind) -> Result<String, TokenError> {
    let mut file = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TokenError::Missing {
                path: path.to_path_buf(),
                kind,
            }
        } else {
            TokenError::Read {
                path: path.to_path_buf(),
                kind,
                source,
            }
        }
    })?;
    // Checked on the open descriptor, so what is checked is what is read.
    let meta = file.metadata().map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        kind,
        source,
    })?;
    if !meta.is_file() || meta.len() > MAX_SECRET_BYTES {
        return Err(TokenError::NotAFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(TokenError::NotOwner {
            path: path.to_path_buf(),
            kind,
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::TooOpen {
            path: path.to_path_buf(),
            kind,
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            kind,
            source,
        })?;
    Ok(text)
}

/// Loads the phleet token from `path` (`<state-dir>/phleet.token` or `--token-file`):
/// mode 0600 or stricter, owned by the ship's user, one line of at least
/// [`MIN_TOKEN_CHARS`] characters. Every error says how to fix it.
pub fn load_token(path: &Path) -> Result<Token, TokenError> {
    let kind = SecretKind::PhleetToken;
    let text = read_secret_file(path, kind)?;
    text.parse().map_err(|problem| TokenError::Invalid {
        path: path.to_path_buf(),
        kind,
        problem,
    })
}

/// The webhook secret shared with the forges; HMAC key for GitHub and Gitea, the token
/// GitLab sends as it is.
#[derive(Clone)]
pub struct HookSecret {
    bytes: Arc<[u8]>,
}

impl HookSecret {
    /// A secret from its text: one line (without its newline), spaces allowed as forges allow.
    pub fn new(text: &str) -> Result<Self, SecretSyntax> {
        let line = one_line(text)?;
        Ok(HookSecret {
            bytes: Arc::from(line.as_bytes()),
        })
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Never prints the secret.
impl fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HookSecret(<redacted>)")
    }
}

/// Loads `<state-dir>/webhook.secret` with the same checks as [`load_token`] (any length:
/// the forge's user chose it).
pub fn load_hook_secret(path: &Path) -> Result<HookSecret, TokenError> {
    let kind = SecretKind::WebhookSecret;
    let text = read_secret_file(path, kind)?;
    HookSecret::new(&text).map_err(|problem| TokenError::Invalid {
        path: path.to_path_buf(),
        kind,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn new_tokens_are_long_url_safe_and_different() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "{a}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let t: Token = a.parse().unwrap();
        assert!(t.matches(Some(&format!("Bearer {a}"))));
    }

    #[test]
    fn matches_only_the_exact_bearer_token() {
        let t: Token = "abcdefghijklmnop1234".parse().unwrap();
        assert!(t.matches(Some("Bearer abcdefghijklmnop1234")));
        assert!(t.matches(Some("bearer abcdefghijklmnop1234")));
        assert!(t.matches(Some(&t.authorization())));
        assert!(!t.matches(None));
        assert!(!t.matches(Some("")));
        assert!(!t.matches(Some("abcdefghijklmnop1234")));
        assert!(!t.matches(Some("Basic abcdefghijklmnop1234")));
        assert!(!t.matches(Some("Bearer abcdefghijklmnop123")));
        assert!(!t.matches(Some("Bearer abcdefghijklmnop12345")));
        assert!(!t.matches(Some("Bearer ")));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn loads_a_private_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "phleet.token", "abcdefghijklmnop1234\n", 0o600);
        let t = load_token(&p).unwrap();
        assert!(t.matches(Some("Bearer abcdefghijklmnop1234")));
        let p = write(dir.path(), "ro.token", "abcdefghijklmnop1234", 0o400);
        assert!(load_token(&p).is_ok());
    }

    #[test]
    fn refuses_bad_token_files_and_says_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("phleet.token");
        let e = load_token(&missing).unwrap_err();
        assert!(matches!(e, TokenError::Missing { .. }));
        let msg = e.to_string();
        assert!(msg.contains("starphleet token >"), "{msg}");
        assert!(msg.contains("every other ship"), "{msg}");

        let open = write(dir.path(), "open.token", "abcdefghijklmnop1234\n", 0o644);
        let e = load_token(&open).unwrap_err();
        assert!(
            matches!(e, TokenError::TooOpen { mode: 0o644, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let group = write(dir.path(), "group.token", "abcdefghijklmnop1234\n", 0o640);
        assert!(matches!(
            load_token(&group).unwrap_err(),
            TokenError::TooOpen { .. }
        ));

        let cases = [
            ("empty", "\n", SecretSyntax::Empty),
            (
                "two",
                "abcdefghijklmnop1234\nmore\n",
                SecretSyntax::MultiLine,
            ),
            (
                "space",
                "abcdefgh ijklmnop1234\n",
                SecretSyntax::BadCharacter,
            ),
            ("short", "tooshort\n", SecretSyntax::TooShort(8)),
        ];
        for (name, text, want) in cases {
            let p = write(dir.path(), name, text, 0o600);
            match load_token(&p).unwrap_err() {
                TokenError::Invalid { problem, .. } => assert_eq!(problem, want, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }

        let e = load_token(dir.path()).unwrap_err();
        assert!(matches!(e, TokenError::NotAFile { .. }), "{e:?}");
    }

    #[test]
    fn refuses_a_token_of_another_user() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give a file away
        }
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "phleet.token", "abcdefghijklmnop1234\n", 0o600);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = load_token(&p).unwrap_err();
        assert!(
            matches!(e, TokenError::NotOwner { owner: 65534, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("chown 0"), "{e}");
    }

    #[test]
    fn loads_a_webhook_secret_of_any_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "webhook.secret", "s3cret\n", 0o600);
        assert_eq!(load_hook_secret(&p).unwrap().as_bytes(), b"s3cret");
        let p = write(
            dir.path(),
            "spaces.secret",
            "It's a Secret to Everybody\n",
            0o600,
        );
        assert_eq!(
            load_hook_secret(&p).unwrap().as_bytes(),
            b"It's a Secret to Everybody"
        );
        assert_eq!(
            HookSecret::new("a\tb").unwrap_err(),
            SecretSyntax::BadCharacter
        );
        let e = load_hook_secret(&dir.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("webhook secret"), "{e}");
    }

    #[test]
    fn loopback_addresses() {
        let yes = [
            "127.0.0.1:9797",
            "127.1.2.3:1",
            "[::1]:9797",
            "[::ffff:127.0.0.1]:80",
        ];
        let no = [
            "10.1.0.11:9797",
            "0.0.0.0:9797",
            "[::]:9797",
            "[::ffff:10.0.0.1]:80",
        ];
        for a in yes {
            assert!(is_loopback(&a.parse().unwrap()), "{a}");
        }
        for a in no {
            assert!(!is_loopback(&a.parse().unwrap()), "{a}");
        }
    }
}
