//! The build plan: what an app's tree says about building and starting it.
//!
//! [`plan`] looks at the exported tree and what the app's `Starphleet` file declares, and
//! says which commands the build container runs, how the service starts, and which caches,
//! env and announcements go with them. It only reads the tree: tests call it on temp dirs.
//!
//! Precedence, highest first:
//! - build steps: the `Starphleet` file's `build` lines, else the detected ones;
//! - start: the `Starphleet` file's `start`, else the `Procfile`'s `web:`, else (with
//!   buildpacks) the buildpack's `bin/release`, else the detected default;
//! - buildpacks: `buildpack` lines in `Starphleet`, else `BUILDPACK_URL` in the app's
//!   `.env`, else the `.buildpacks` file; any of them replaces language detection.
//!
//! Languages are detected in [`DETECTION_ORDER`]; the first kind that matches wins and every
//! other match is a warning.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use starphleet_orders::GitSource;

/// Where the ship binds its own binary in every service container (`starphleet init`, the
/// static file server).
pub const STARPHLEET_IN_CONTAINER: &str = "/.starphleet/starphleet";

/// Where the per-app caches are mounted in build containers: `/cache/<name>`.
pub const CACHE_MOUNT_ROOT: &str = "/cache";

/// Where buildpack `i` is mounted (read-only) in build containers: `/buildpacks/<i>`.
pub const BUILDPACKS_MOUNT_ROOT: &str = "/buildpacks";

/// Where the Heroku-style ENV_DIR (one file per variable) is mounted for buildpacks.
pub const BUILDPACK_ENV_DIR: &str = "/buildpack-env";

/// Where buildpack steps leave what the builder reads back (`release-<i>.yml`).
pub const BUILDPACK_OUT_DIR: &str = "/buildpack-out";

/// The default search path inside containers, with the app's own tools put in front of it.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The CA bundle Debian-like systems keep; toolchains are pointed at it so builds trust
/// what the ship trusts (Node.js otherwise uses only its own bundled roots).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the app's `Starphleet` file declares about building (all empty without one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// `build` lines, in order.
    pub build: Vec<String>,
    /// The `start` line.
    pub start: Option<String>,
    /// `buildpack URL[#ref]` lines, in order.
    pub buildpacks: Vec<GitSource>,
}

/// The toolchains found on the ship (or in an app's base), by command name.
///
/// A plain struct, so tests can fake "not installed"; [`Tools::probe`] fills it in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tools {
    /// `node`.
    pub node: bool,
    /// `npm`.
    pub npm: bool,
    /// `yarn`.
    pub yarn: bool,
    /// `pnpm`.
    pub pnpm: bool,
    /// `python3`.
    pub python3: bool,
    /// Python's `venv` with `ensurepip` (Debian's `python3-venv`).
    pub venv: bool,
    /// The `pip` module of the system's python3 (Debian's `python3-pip`).
    pub pip: bool,
    /// `uv`.
    pub uv: bool,
    /// `poetry`.
    pub poetry: bool,
    /// `pipenv`.
    pub pipenv: bool,
    /// `ruby`.
    pub ruby: bool,
    /// `bundle` (bundler).
    pub bundle: bool,
    /// `go`.
    pub go: bool,
    /// `cargo`.
    pub cargo: bool,
    /// The CA bundle at [`CA_BUNDLE`].
    pub ca_bundle: bool,
}

/// Where commands are looked for, relative to a root: containers see the host's /usr.
const BIN_DIRS: &[&str] = &["usr/local/bin", "usr/bin", "bin"];

impl Tools {
    /// Probes the host, whose `/usr` build containers see.
    pub fn probe() -> Tools {
        Tools::probe_root(Path::new("/"))
    }

    /// Probes a root filesystem: `/` for the host, or an unpacked base.
    pub fn probe_root(root: &Path) -> Tools {
        let host = root == Path::new("/");
        let has = |name: &str| {
            BIN_DIRS.iter().any(|dir| {
                let path = root.join(dir).join(name);
                if host {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::metadata(&path)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                } else {
                    // A base's absolute symlinks point into the base, not the host: presence is enough.
                    std::fs::symlink_metadata(&path).is_ok()
                }
            })
        };
        let venv = ["usr/lib", "usr/local/lib"].iter().any(|lib| {
            std::fs::read_dir(root.join(lib)).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("python3")
                        && e.path().join("ensurepip/__init__.py").is_file()
                })
            })
        });
        let pip = ["usr/lib", "usr/local/lib"].iter().any(|lib| {
            std::fs::read_dir(root.join(lib)).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("python3")
                        && ["dist-packages", "site-packages"]
                            .iter()
                            .any(|d| e.path().join(d).join("pip/__init__.py").is_file())
                })
            })
        });
        Tools {
            pip,
            node: has("node"),
            npm: has("npm"),
            yarn: has("yarn"),
            pnpm: has("pnpm"),
            python3: has("python3"),
            venv,
            uv: has("uv"),
            poetry: has("poetry"),
            pipenv: has("pipenv"),
            ruby: has("ruby"),
            bundle: has("bundle"),
            go: has("go"),
            cargo: has("cargo"),
            ca_bundle: root.join(CA_BUNDLE.trim_start_matches('/')).is_file(),
        }
    }

    /// A short stable text naming what was found, for the layer cache key.
    pub fn fingerprint(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A kind of app the ship knows how to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppKind {
    /// `Gemfile`.
    Ruby,
    /// `requirements.txt`, `pyproject.toml` or `Pipfile`.
    Python,
    /// `go.mod`.
    Go,
    /// `Cargo.toml`.
    Rust,
    /// `package.json`.
    Node,
    /// `index.html` at the root, in `public/` or in `dist/`.
    Static,
    /// Heroku classic buildpacks named by the app.
    Buildpacks,
}

/// The order languages are detected in: server languages before Node.js, because their
/// repositories often carry a `package.json` for front-end assets; a static site last,
/// because any app may ship an `index.html`.
pub const DETECTION_ORDER: [AppKind; 6] = [
    AppKind::Ruby,
    AppKind::Python,
    AppKind::Go,
    AppKind::Rust,
    AppKind::Node,
    AppKind::Static,
];

impl fmt::Display for AppKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppKind::Ruby => "Ruby",
            AppKind::Python => "Python",
            AppKind::Go => "Go",
            AppKind::Rust => "Rust",
            AppKind::Node => "Node.js",
            AppKind::Static => "Static site",
            AppKind::Buildpacks => "Buildpack",
        })
    }
}

/// What a build step is for: most are plain commands, buildpack phases are read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepRole {
    /// A build command; a non-zero exit fails the build.
    Build,
    /// Installs the app's dependencies into [`BuildPlan::deps`]' dir: skipped when a
    /// previous build of the app installed the same inputs (the saved copy is used).
    Install,
    /// Buildpack `i`'s `bin/detect`: its output names the buildpack; non-zero means the
    /// buildpack does not fit the app.
    Detect {
        /// Index into [`BuildPlan::buildpacks`].
        buildpack: usize,
    },
    /// Buildpack `i`'s `bin/compile`.
    Compile {
        /// Index into [`BuildPlan::buildpacks`].
        buildpack: usize,
    },
    /// Buildpack `i`'s `bin/release`: YAML whose `default_process_types.web` is a start default.
    Release {
        /// Index into [`BuildPlan::buildpacks`].
        buildpack: usize,
    },
}

/// One command of a build, run with `/bin/sh -c` in `/app` in a build container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The shell command.
    pub command: String,
    /// What it is for.
    pub role: StepRole,
}

impl Step {
    fn build(command: impl Into<String>) -> Self {
        Step {
            command: command.into(),
            role: StepRole::Build,
        }
    }

    fn install(command: impl Into<String>) -> Self {
        Step {
            command: command.into(),
            role: StepRole::Install,
        }
    }
}

/// Installed dependencies a later build of the same app may reuse: the dir the install
/// steps fill, and what decides whether they would fill it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deps {
    /// The dir under `/app`, e.g. `node_modules`.
    pub dir: String,
    /// Files under `/app` whose contents decide what gets installed, e.g. `package.json`.
    pub inputs: Vec<String>,
    /// Commands whose binaries decide it too (a new node needs new native modules).
    pub tools: Vec<String>,
}

/// A per-app cache dir, kept across builds and mounted read-write at `/cache/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    /// The dir's name under the app's cache dir, e.g. `npm`.
    pub name: String,
}

impl CacheMount {
    fn new(name: &str) -> Self {
        CacheMount {
            name: name.to_string(),
        }
    }

    /// Where it is mounted in build containers.
    pub fn destination(&self) -> String {
        format!("{CACHE_MOUNT_ROOT}/{}", self.name)
    }
}

/// How to build and start one app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    /// What was detected; `None` when the app declares everything (or only a start).
    pub kind: Option<AppKind>,
    /// The build commands, in order.
    pub steps: Vec<Step>,
    /// The start command; `None` only when buildpacks are to name it in `bin/release`.
    pub start: Option<String>,
    /// Lines for the top of the build log, e.g. `-----> Node.js app detected (package-lock.json): npm ci`.
    pub announce: Vec<String>,
    /// Things the user may want to fix, e.g. several kinds matched; also in the build log.
    pub warnings: Vec<String>,
    /// Per-app caches the build uses.
    pub caches: Vec<CacheMount>,
    /// Env for the build container (cache locations, CA bundle); the service's env goes over it.
    pub build_env: Vec<(String, String)>,
    /// Env for the service (e.g. the virtualenv on `PATH`): the lowest layer, under the app's `.env`.
    pub run_env: Vec<(String, String)>,
    /// Buildpacks to fetch and mount at `/buildpacks/<i>`.
    pub buildpacks: Vec<GitSource>,
    /// What the [`StepRole::Install`] steps install, when it can be reused.
    pub deps: Option<Deps>,
}

/// Why an app cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Nothing says how to build or start the app.
    #[error("nothing says how to build or start this app: looked for {looked_for}. Add a `Starphleet` file with a `start <command>` line (and `build` lines), or a Procfile with `web: <command>`")]
    NothingDetected {
        /// Every file that was looked for.
        looked_for: String,
    },
    /// The app's kind was detected but its toolchain is not on the ship.
    #[error("{found} found: this app needs {needs} on the ship: {install}")]
    MissingTool {
        /// The file that gave the kind away, e.g. `package.json`.
        found: String,
        /// What is missing, e.g. `node and npm`.
        needs: String,
        /// How to install it, e.g. `apt-get install nodejs npm`.
        install: String,
    },
    /// The kind was detected but nothing says how to start it.
    #[error("{kind} app detected ({found}) but no start command: looked for {looked_for}. Add a Procfile with `web: <command>` or a `start <command>` line in `Starphleet`")]
    NoStart {
        /// The kind.
        kind: AppKind,
        /// The file that gave the kind away.
        found: String,
        /// What was looked for.
        looked_for: String,
    },
    /// A manifest (package.json, Cargo.toml, .buildpacks) cannot be used.
    #[error("{file}: {problem}")]
    Manifest {
        /// The file, relative to the app's root.
        file: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A file of the tree could not be read.
    #[error("reading {}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
}

/// Everything [`plan`] looks for, in the order the error lists it.
const LOOKED_FOR: &str = "Starphleet, Procfile, .buildpacks, BUILDPACK_URL in .env, Gemfile, \
requirements.txt, pyproject.toml, Pipfile, go.mod, Cargo.toml, package.json, index.html (also in public/ and dist/)";

/// The tree, read on demand.
struct Tree<'a> {
    root: &'a Path,
}

impl Tree<'_> {
    fn is_file(&self, rel: &str) -> bool {
        self.root.join(rel).is_file()
    }

    fn read(&self, rel: &str) -> Result<Option<String>, PlanError> {
        let path = self.root.join(rel);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
                ) =>
            {
                Ok(None)
            }
            Err(cause) => Err(PlanError::Io { path, cause }),
        }
    }
}

/// What one detector found: the kind's evidence and its build.
struct Detected {
    kind: AppKind,
    /// The files that gave it away, e.g. `package.json, package-lock.json`.
    evidence: String,
    steps: Vec<Step>,
    /// The default start, or `Err(looked for)` when the tree names none.
    start: Result<String, String>,
    caches: Vec<CacheMount>,
    build_env: Vec<(String, String)>,
    run_env: Vec<(String, String)>,
    warnings: Vec<String>,
    /// The toolchain check: `Some((needs, install))` when something is missing.
    missing: Option<(String, String)>,
    deps: Option<Deps>,
}

impl Detected {
    fn new(kind: AppKind, evidence: impl Into<String>) -> Self {
        Detected {
            kind,
            evidence: evidence.into(),
            steps: Vec::new(),
            start: Err(String::new()),
            caches: Vec::new(),
            build_env: Vec::new(),
            run_env: Vec::new(),
            warnings: Vec::new(),
            missing: None,
            deps: None,
        }
    }

    /// Marks `dir` as what the install steps fill, decided by `inputs` that exist and `tools`.
    fn deps(&mut self, tree: &Tree<'_>, dir: &str, inputs: &[&str], tools: &[&str]) {
        self.deps = Some(Deps {
            dir: dir.to_string(),
            inputs: inputs
                .iter()
                .filter(|f| tree.is_file(f))
                .map(|f| f.to_string())
                .collect(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
        });
    }

    fn env(&mut self, key: &str, value: &str) {
        self.build_env.push((key.to_string(), value.to_string()));
    }

    fn cache(&mut self, name: &str, env_key: &str) {
        let cache = CacheMount::new(name);
        self.build_env
            .push((env_key.to_string(), cache.destination()));
        self.caches.push(cache);
    }
}

/// Plans the build of the app whose tree is at `app_dir`; see the module docs for the order.
pub fn plan(app_dir: &Path, declared: &Declared, tools: &Tools) -> Result<BuildPlan, PlanError> {
    let tree = Tree { root: app_dir };
    let mut warnings = Vec::new();
    let procfile = tree
        .read("Procfile")?
        .and_then(|text| starphleet_orders::parse_procfile(&text));
    if declared.start.is_some() && procfile.is_some() {
        warnings.push(
            "the Procfile's `web:` line is not used: the `start` line in `Starphleet` wins".into(),
        );
    }
    let (start, start_from) = match (&declared.start, &procfile) {
        (Some(s), _) => (Some(s.clone()), "Starphleet"),
        (None, Some(web)) => (Some(web.clone()), "Procfile"),
        (None, None) => (None, ""),
    };

    let buildpacks = buildpacks(&tree, declared, &mut warnings)?;
    if !buildpacks.is_empty() {
        return Ok(buildpack_plan(
            declared, tools, buildpacks, start, start_from, warnings,
        ));
    }

    let mut found = Vec::new();
    for kind in DETECTION_ORDER {
        if let Some(d) = detect(kind, &tree, tools)? {
            found.push(d);
        }
    }
    let mut found = found.into_iter();
    let Some(mut d) = found.next() else {
        if start.is_none() {
            return Err(PlanError::NothingDetected {
                looked_for: LOOKED_FOR.into(),
            });
        }
        let mut announce = Vec::new();
        if !declared.build.is_empty() {
            announce.push(format!(
                "-----> build steps from Starphleet: {}",
                declared.build.join(" && ")
            ));
        }
        announce.push(format!(
            "-----> start ({start_from}): {}",
            start.as_deref().unwrap_or_default()
        ));
        return Ok(BuildPlan {
            kind: None,
            steps: declared.build.iter().map(Step::build).collect(),
            start,
            announce,
            warnings,
            caches: Vec::new(),
            build_env: Vec::new(),
            run_env: Vec::new(),
            buildpacks: Vec::new(),
            deps: None,
        });
    };
    for other in found {
        warnings.push(format!(
            "{} also found ({}): this app is built as {}, the first match in the detection order ({}); write `build` and `start` lines in `Starphleet` to build it another way",
            other.kind,
            other.evidence,
            d.kind,
            DETECTION_ORDER
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    warnings.append(&mut d.warnings);

    let mut announce = Vec::new();
    let steps = if declared.build.is_empty() {
        if let Some((needs, install)) = d.missing.take() {
            return Err(PlanError::MissingTool {
                found: first_evidence(&d.evidence),
                needs,
                install,
            });
        }
        let commands: Vec<&str> = d.steps.iter().map(|s| s.command.as_str()).collect();
        announce.push(if commands.is_empty() {
            format!("-----> {} app detected ({})", d.kind, d.evidence)
        } else {
            format!(
                "-----> {} app detected ({}): {}",
                d.kind,
                d.evidence,
                commands.join(" && ")
            )
        });
        std::mem::take(&mut d.steps)
    } else {
        announce.push(format!(
            "-----> {} app detected ({}); building with the build lines of Starphleet: {}",
            d.kind,
            d.evidence,
            declared.build.join(" && ")
        ));
        // The declared lines may install anything: nothing is reused.
        d.deps = None;
        declared.build.iter().map(Step::build).collect()
    };
    let start = match start {
        Some(s) => {
            announce.push(format!("-----> start ({start_from}): {s}"));
            s
        }
        None => match d.start {
            Ok(s) => {
                announce.push(format!("-----> start ({} default): {s}", d.kind));
                s
            }
            Err(looked_for) => {
                return Err(PlanError::NoStart {
                    kind: d.kind,
                    found: first_evidence(&d.evidence),
                    looked_for,
                })
            }
        },
    };
    if tools.ca_bundle {
        ca_env(&mut d.build_env);
    }
    Ok(BuildPlan {
        kind: Some(d.kind),
        steps,
        start: Some(start),
        announce,
        warnings,
        caches: d.caches,
        build_env: d.build_env,
        run_env: d.run_env,
        buildpacks: Vec::new(),
        deps: d.deps,
    })
}

fn first_evidence(evidence: &str) -> String {
    evidence.split(", ").next().unwrap_or(evidence).to_string()
}

/// Points the toolchains at the system CA bundle, so builds trust what the ship trusts.
fn ca_env(env: &mut Vec<(String, String)>) {
    for key in ["NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "PIP_CERT"] {
        env.push((key.to_string(), CA_BUNDLE.to_string()));
    }
}

/// `URL[#ref]`, split at the last `#`.
fn git_source(text: &str) -> GitSource {
    match text.rsplit_once('#') {
        Some((url, reference)) if !reference.is_empty() => GitSource {
            url: url.to_string(),
            reference: Some(reference.to_string()),
        },
        _ => GitSource {
            url: text.trim_end_matches('#').to_string(),
            reference: None,
        },
    }
}

/// The buildpacks the app names: Starphleet, else `.env`'s BUILDPACK_URL, else `.buildpacks`.
fn buildpacks(
    tree: &Tree<'_>,
    declared: &Declared,
    warnings: &mut Vec<String>,
) -> Result<Vec<GitSource>, PlanError> {
    let from_env = match tree.read(".env")? {
        // A broken .env is reported by the ship, which reads it for the service's env.
        Some(text) => starphleet_orders::parse_env_file(Path::new(".env"), &text)
            .ok()
            .and_then(|pairs| {
                pairs
                    .into_iter()
                    .rev()
                    .find(|(k, v)| k == "BUILDPACK_URL" && !v.is_empty())
            })
            .map(|(_, v)| vec![git_source(&v)]),
        None => None,
    };
    let from_file = match tree.read(".buildpacks")? {
        Some(text) => {
            let list: Vec<GitSource> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(git_source)
                .collect();
            if list.is_empty() {
                return Err(PlanError::Manifest {
                    file: ".buildpacks".into(),
                    problem: "names no buildpack; put one buildpack URL[#ref] on each line, or remove the file".into(),
                });
            }
            Some(list)
        }
        None => None,
    };
    let sources = [
        (
            "`buildpack` lines in Starphleet",
            (!declared.buildpacks.is_empty()).then(|| declared.buildpacks.clone()),
        ),
        ("BUILDPACK_URL in .env", from_env),
        (".buildpacks", from_file),
    ];
    let mut chosen: Option<(&str, Vec<GitSource>)> = None;
    for (name, list) in sources {
        let Some(list) = list else { continue };
        match &chosen {
            None => chosen = Some((name, list)),
            Some((winner, _)) => warnings.push(format!("{name} is not used: {winner} wins")),
        }
    }
    Ok(chosen.map(|(_, list)| list).unwrap_or_default())
}

/// The cache of buildpack `url`: stable across builds whatever else the list holds.
fn buildpack_cache(url: &str) -> CacheMount {
    let hash = hex::encode(Sha256::digest(url.as_bytes()));
    CacheMount::new(&format!("buildpack-{}", &hash[..12]))
}

fn buildpack_plan(
    declared: &Declared,
    tools: &Tools,
    buildpacks: Vec<GitSource>,
    start: Option<String>,
    start_from: &str,
    warnings: Vec<String>,
) -> BuildPlan {
    let mut announce = Vec::new();
    let mut steps = Vec::new();
    let mut caches = Vec::new();
    for (i, bp) in buildpacks.iter().enumerate() {
        let dir = format!("{BUILDPACKS_MOUNT_ROOT}/{i}");
        let cache = buildpack_cache(&bp.url);
        announce.push(format!("-----> buildpack {}: {bp}", i + 1));
        steps.push(Step {
            command: format!("{dir}/bin/detect /app"),
            role: StepRole::Detect { buildpack: i },
        });
        steps.push(Step {
            command: format!(
                "{dir}/bin/compile /app {} {BUILDPACK_ENV_DIR}",
                cache.destination()
            ),
            role: StepRole::Compile { buildpack: i },
        });
        steps.push(Step {
            // bin/release is optional in the buildpack API.
            command: format!(
                "if [ -x {dir}/bin/release ]; then {dir}/bin/release /app > {BUILDPACK_OUT_DIR}/release-{i}.yml; fi"
            ),
            role: StepRole::Release { buildpack: i },
        });
        caches.push(cache);
    }
    steps.extend(declared.build.iter().map(Step::build));
    if !declared.build.is_empty() {
        announce.push(format!(
            "-----> then the build lines of Starphleet: {}",
            declared.build.join(" && ")
        ));
    }
    match &start {
        Some(s) => announce.push(format!("-----> start ({start_from}): {s}")),
        None => {
            announce.push("-----> start: the buildpack's default web process (bin/release)".into())
        }
    }
    let mut build_env = Vec::new();
    if tools.ca_bundle {
        ca_env(&mut build_env);
    }
    BuildPlan {
        kind: Some(AppKind::Buildpacks),
        steps,
        start,
        announce,
        warnings,
        caches,
        build_env,
        run_env: Vec::new(),
        buildpacks,
        deps: None,
    }
}

fn detect(kind: AppKind, tree: &Tree<'_>, tools: &Tools) -> Result<Option<Detected>, PlanError> {
    match kind {
        AppKind::Ruby => Ok(ruby(tree, tools)),
        AppKind::Python => Ok(python(tree, tools)),
        AppKind::Go => Ok(go(tree, tools)),
        AppKind::Rust => rust(tree, tools),
        AppKind::Node => node(tree, tools),
        AppKind::Static => Ok(static_site(tree)),
        AppKind::Buildpacks => Ok(None),
    }
}

fn missing(names: &[(&str, bool)], install: &str) -> Option<(String, String)> {
    let absent: Vec<&str> = names
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if absent.is_empty() {
        return None;
    }
    let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    Some((all.join(" and "), install.to_string()))
}

fn ruby(tree: &Tree<'_>, tools: &Tools) -> Option<Detected> {
    if !tree.is_file("Gemfile") {
        return None;
    }
    let locked = tree.is_file("Gemfile.lock");
    let mut d = Detected::new(
        AppKind::Ruby,
        if locked {
            "Gemfile, Gemfile.lock"
        } else {
            "Gemfile"
        },
    );
    d.missing = missing(
        &[("ruby", tools.ruby), ("bundler", tools.bundle)],
        "apt-get install ruby ruby-bundler",
    );
    d.steps.push(Step::install("bundle install"));
    d.deps(
        tree,
        "vendor/bundle",
        &["Gemfile", "Gemfile.lock"],
        &["ruby"],
    );
    // Gems go into the app layer, so the service finds them; downloads are cached.
    let mut run = vec![
        ("BUNDLE_PATH", "/app/vendor/bundle"),
        ("BUNDLE_WITHOUT", "development:test"),
    ];
    if locked {
        run.push(("BUNDLE_DEPLOYMENT", "true"));
    }
    for (k, v) in &run {
        d.env(k, v);
        d.run_env.push((k.to_string(), v.to_string()));
    }
    d.cache("bundler", "BUNDLE_USER_HOME");
    d.start = if tree.is_file("config.ru") {
        Ok("bundle exec rackup config.ru -o 0.0.0.0 -p $PORT".into())
    } else {
        Err("a Procfile `web:` line and config.ru".into())
    };
    Some(d)
}

fn python(tree: &Tree<'_>, tools: &Tools) -> Option<Detected> {
    let requirements = tree.is_file("requirements.txt");
    let pyproject = tree.is_file("pyproject.toml");
    let pipfile = tree.is_file("Pipfile");
    if !requirements && !pyproject && !pipfile {
        return None;
    }
    let venv_python = "/app/.venv/bin/python";
    // `python3 -m venv` spends seconds installing pip into every new venv (ensurepip);
    // with the ship's own pip the venv goes without, and that pip installs into it.
    let (make_venv, pip) = if tools.pip {
        (
            "python3 -m venv --without-pip /app/.venv",
            "python3 -m pip --python /app/.venv/bin/python install",
        )
    } else {
        ("python3 -m venv /app/.venv", "/app/.venv/bin/pip install")
    };
    let pip_tools = |d: &mut Detected| {
        if !tools.python3 || !(tools.pip || tools.venv) {
            d.missing = Some((
                "python3 with pip or venv".into(),
                "apt-get install python3 python3-pip".into(),
            ));
        }
    };
    let mut d;
    if pyproject && tree.is_file("uv.lock") && tools.uv {
        d = Detected::new(AppKind::Python, "pyproject.toml, uv.lock");
        d.missing = missing(&[("python3", tools.python3)], "apt-get install python3");
        d.steps.push(Step::install("uv sync --frozen --no-dev"));
        d.deps(
            tree,
            ".venv",
            &["pyproject.toml", "uv.lock"],
            &["python3", "uv"],
        );
        d.env("UV_PROJECT_ENVIRONMENT", "/app/.venv");
        d.env("UV_PYTHON_DOWNLOADS", "never");
        // The cache is another mount: hard links cannot reach the layer.
        d.env("UV_LINK_MODE", "copy");
        d.cache("uv", "UV_CACHE_DIR");
    } else if pyproject && tree.is_file("poetry.lock") && tools.poetry {
        d = Detected::new(AppKind::Python, "pyproject.toml, poetry.lock");
        d.missing = missing(&[("python3", tools.python3)], "apt-get install python3");
        d.steps
            .push(Step::install("poetry install --only main --no-interaction"));
        d.deps(
            tree,
            ".venv",
            &["pyproject.toml", "poetry.lock"],
            &["python3", "poetry"],
        );
        d.env("POETRY_VIRTUALENVS_IN_PROJECT", "true");
        d.cache("poetry", "POETRY_CACHE_DIR");
    } else if requirements {
        d = Detected::new(AppKind::Python, "requirements.txt");
        pip_tools(&mut d);
        d.steps.push(Step::install(make_venv));
        d.steps
            .push(Step::install(format!("{pip} -r requirements.txt")));
        d.deps(tree, ".venv", &["requirements.txt"], &["python3"]);
        d.cache("pip", "PIP_CACHE_DIR");
    } else if pyproject {
        d = Detected::new(AppKind::Python, "pyproject.toml");
        pip_tools(&mut d);
        // The app itself goes into the venv: a saved venv would hold an old copy of it.
        d.steps.push(Step::build(make_venv));
        d.steps.push(Step::build(format!("{pip} .")));
        d.cache("pip", "PIP_CACHE_DIR");
    } else {
        let locked = tree.is_file("Pipfile.lock");
        d = Detected::new(
            AppKind::Python,
            if locked {
                "Pipfile, Pipfile.lock"
            } else {
                "Pipfile"
            },
        );
        d.missing = missing(
            &[("python3", tools.python3), ("pipenv", tools.pipenv)],
            "apt-get install pipenv",
        );
        d.steps.push(Step::install(if locked {
            "pipenv install --deploy"
        } else {
            "pipenv install --skip-lock"
        }));
        d.deps(
            tree,
            ".venv",
            &["Pipfile", "Pipfile.lock"],
            &["python3", "pipenv"],
        );
        d.env("PIPENV_VENV_IN_PROJECT", "1");
        d.cache("pipenv", "PIPENV_CACHE_DIR");
        d.cache("pip", "PIP_CACHE_DIR");
    }
    for (lock, tool, have) in [
        ("uv.lock", "uv", tools.uv),
        ("poetry.lock", "poetry", tools.poetry),
    ] {
        if pyproject && tree.is_file(lock) && !have && !d.evidence.contains(lock) {
            d.warnings.push(format!(
                "{lock} found but {tool} is not on the ship, so the lockfile is not used; install {tool} on the ship to build with it"
            ));
        }
    }
    d.env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    d.env("PIP_NO_INPUT", "1");
    d.run_env = vec![
        ("PATH".into(), format!("/app/.venv/bin:{DEFAULT_PATH}")),
        ("VIRTUAL_ENV".into(), "/app/.venv".into()),
        // Log lines reach the ship as they are printed, not when a buffer fills.
        ("PYTHONUNBUFFERED".into(), "1".into()),
    ];
    d.start = ["app.py", "main.py"]
        .iter()
        .find(|f| tree.is_file(f))
        .map(|f| format!("{venv_python} {f}"))
        .ok_or_else(|| "a Procfile `web:` line, app.py and main.py".to_string());
    Some(d)
}

fn go(tree: &Tree<'_>, tools: &Tools) -> Option<Detected> {
    if !tree.is_file("go.mod") {
        return None;
    }
    let mut d = Detected::new(AppKind::Go, "go.mod");
    d.missing = missing(&[("go", tools.go)], "apt-get install golang-go");
    d.steps.push(Step::build("go build -o /app/.bin/app ."));
    d.cache("go", "GOPATH");
    d.cache("go-build", "GOCACHE");
    // Never download another toolchain: the ship's is the one to use.
    d.env("GOTOOLCHAIN", "local");
    d.start = Ok("/app/.bin/app".into());
    Some(d)
}

fn rust(tree: &Tree<'_>, tools: &Tools) -> Result<Option<Detected>, PlanError> {
    let Some(text) = tree.read("Cargo.toml")? else {
        return Ok(None);
    };
    let manifest = |problem: String| PlanError::Manifest {
        file: "Cargo.toml".into(),
        problem,
    };
    let value: toml::Table = text
        .parse()
        .map_err(|e| manifest(format!("is not valid TOML: {e}")))?;
    let bin_name = value
        .get("bin")
        .and_then(|b| b.as_array())
        .and_then(|bins| bins.first())
        .and_then(|b| b.get("name"))
        .and_then(|n| n.as_str());
    let package_name = value
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str());
    let locked = tree.is_file("Cargo.lock");
    let mut d = Detected::new(
        AppKind::Rust,
        if locked {
            "Cargo.toml, Cargo.lock"
        } else {
            "Cargo.toml"
        },
    );
    d.missing = missing(&[("cargo", tools.cargo)], "apt-get install cargo");
    let Some(name) = bin_name.or(package_name) else {
        return Err(manifest(
            "has no [package] name (a workspace?): write `build` and `start` lines in Starphleet saying which binary to build and run".into(),
        ));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(manifest(format!(
            "binary name {name:?} is not a plain crate name (letters, digits, '_', '-')"
        )));
    }
    d.cache("cargo", "CARGO_HOME");
    d.cache("cargo-target", "CARGO_TARGET_DIR");
    d.steps.push(Step::build(if locked {
        "cargo build --release --locked"
    } else {
        "cargo build --release"
    }));
    // The target dir is a cache outside the layer: the binary is copied in.
    d.steps.push(Step::build(format!(
        "mkdir -p /app/.bin && cp \"$CARGO_TARGET_DIR/release/{name}\" /app/.bin/{name}"
    )));
    d.start = Ok(format!("/app/.bin/{name}"));
    Ok(Some(d))
}

fn node(tree: &Tree<'_>, tools: &Tools) -> Result<Option<Detected>, PlanError> {
    let Some(text) = tree.read("package.json")? else {
        return Ok(None);
    };
    let manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PlanError::Manifest {
            file: "package.json".into(),
            problem: format!(
                "is not valid JSON ({e}); fix it, or write `build` and `start` lines in Starphleet"
            ),
        })?;
    let script = |name: &str| {
        manifest
            .get("scripts")
            .and_then(|s| s.get(name))
            .and_then(|s| s.as_str())
            .is_some_and(|s| !s.trim().is_empty())
    };
    let has_dev = manifest
        .get("devDependencies")
        .and_then(|d| d.as_object())
        .is_some_and(|d| !d.is_empty());

    let npm_lock = ["package-lock.json", "npm-shrinkwrap.json"]
        .into_iter()
        .find(|f| tree.is_file(f));
    let yarn_lock = tree.is_file("yarn.lock");
    let pnpm_lock = tree.is_file("pnpm-lock.yaml");
    let mut warnings = Vec::new();
    let (evidence, install, manager) = if let Some(lock) = npm_lock {
        (format!("package.json, {lock}"), "npm ci", "npm")
    } else if yarn_lock && tools.yarn {
        (
            "package.json, yarn.lock".to_string(),
            "yarn install --frozen-lockfile --production=false",
            "yarn",
        )
    } else if pnpm_lock && tools.pnpm {
        (
            "package.json, pnpm-lock.yaml".to_string(),
            "pnpm install --frozen-lockfile",
            "pnpm",
        )
    } else {
        for (lock, tool, found) in [
            ("yarn.lock", "yarn", yarn_lock),
            ("pnpm-lock.yaml", "pnpm", pnpm_lock),
        ] {
            if found {
                warnings.push(format!(
                    "{lock} found but {tool} is not on the ship: installing with `npm install`, which does not use that lockfile; install {tool} on the ship, or commit a package-lock.json"
                ));
            }
        }
        ("package.json".to_string(), "npm install", "npm")
    };
    let mut d = Detected::new(AppKind::Node, evidence);
    d.warnings = warnings;
    let mut needs = vec![("node", tools.node), ("npm", tools.npm)];
    let mut install_hint = "apt-get install nodejs npm".to_string();
    match manager {
        "yarn" => {
            needs = vec![("node", tools.node), ("yarn", tools.yarn)];
            install_hint = "apt-get install nodejs yarnpkg".into();
        }
        "pnpm" => needs = vec![("node", tools.node), ("pnpm", tools.pnpm)],
        _ => {}
    }
    d.missing = missing(&needs, &install_hint);
    // devDependencies are needed by `build` scripts even when NODE_ENV=production is set.
    let install = if has_dev && manager == "npm" {
        format!("{install} --include=dev")
    } else {
        install.to_string()
    };
    d.steps.push(Step::install(install));
    d.deps(
        tree,
        "node_modules",
        &[
            "package.json",
            "package-lock.json",
            "npm-shrinkwrap.json",
            "yarn.lock",
            "pnpm-lock.yaml",
            ".npmrc",
        ],
        &["node", manager],
    );
    if script("build") {
        d.steps.push(Step::build(format!("{manager} run build")));
    }
    if has_dev && manager == "npm" {
        d.steps.push(Step::build("npm prune --omit=dev"));
    }
    d.cache("npm", "npm_config_cache");
    match manager {
        "yarn" => d.cache("yarn", "YARN_CACHE_FOLDER"),
        "pnpm" => d.cache("pnpm", "npm_config_store_dir"),
        _ => {}
    }
    for (k, v) in [
        ("npm_config_update_notifier", "false"),
        ("npm_config_fund", "false"),
        ("npm_config_audit", "false"),
    ] {
        d.env(k, v);
    }
    if tools.ca_bundle {
        // Services calling out over TLS trust the ship's CAs too.
        d.run_env
            .push(("NODE_EXTRA_CA_CERTS".into(), CA_BUNDLE.into()));
    }
    let main = manifest
        .get("main")
        .and_then(|m| m.as_str())
        .unwrap_or("index.js");
    d.start = if script("start") {
        Ok(format!("{manager} start"))
    } else if tree.is_file(main) {
        Ok(format!("node {}", shell_word(main)))
    } else if tree.is_file("server.js") {
        Ok("node server.js".into())
    } else {
        Err(format!(
            "a Procfile `web:` line, scripts.start in package.json, {main} (package.json's main) and server.js"
        ))
    };
    Ok(Some(d))
}

/// A path as one shell word: bare when it is plain, single-quoted otherwise.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn static_site(tree: &Tree<'_>) -> Option<Detected> {
    let (evidence, dir) = [
        ("index.html", "/app"),
        ("public/index.html", "/app/public"),
        ("dist/index.html", "/app/dist"),
    ]
    .into_iter()
    .find(|(f, _)| tree.is_file(f))?;
    let mut d = Detected::new(AppKind::Static, evidence);
    d.start = Ok(format!("{STARPHLEET_IN_CONTAINER} serve-static {dir}"));
    Some(d)
}

#[cfg(test)]
mod tests;
