use super::*;

/// Every toolchain installed.
fn all_tools() -> Tools {
    Tools {
        node: true,
        npm: true,
        yarn: true,
        pnpm: true,
        python3: true,
        venv: true,
        pip: false,
        uv: true,
        poetry: true,
        pipenv: true,
        ruby: true,
        bundle: true,
        go: true,
        cargo: true,
        ca_bundle: false,
    }
}

struct App(tempfile::TempDir);

impl App {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        App(dir)
    }

    fn plan(&self, declared: &Declared, tools: &Tools) -> Result<BuildPlan, PlanError> {
        plan(self.0.path(), declared, tools)
    }

    fn plan_ok(&self) -> BuildPlan {
        self.plan(&Declared::default(), &all_tools()).unwrap()
    }
}

fn commands(p: &BuildPlan) -> Vec<&str> {
    p.steps.iter().map(|s| s.command.as_str()).collect()
}

fn env<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

const ECHO_PACKAGE: &str =
    r#"{"name":"echo","main":"index.js","dependencies":{"express":"^4","ws":"^8"}}"#;

#[test]
fn the_node_echo_example_installs_and_starts_its_main() {
    let app = App::new(&[
        ("package.json", ECHO_PACKAGE),
        ("index.js", "// the app"),
        (".env", "export GREETING=hi\n"),
        ("healthcheck", "/hi\n"),
    ]);
    let p = app.plan_ok();
    assert_eq!(p.kind, Some(AppKind::Node));
    assert_eq!(commands(&p), ["npm install"]);
    assert_eq!(p.start.as_deref(), Some("node index.js"));
    assert_eq!(
        p.announce[0],
        "-----> Node.js app detected (package.json): npm install"
    );
    assert_eq!(
        p.announce[1],
        "-----> start (Node.js default): node index.js"
    );
    assert_eq!(env(&p.build_env, "npm_config_cache"), Some("/cache/npm"));
    assert_eq!(p.caches, vec![CacheMount::new("npm")]);
    assert_eq!(p.caches[0].destination(), "/cache/npm");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.steps[0].role, StepRole::Install);
    let deps = p.deps.unwrap();
    assert_eq!(deps.dir, "node_modules");
    assert_eq!(deps.inputs, ["package.json"], "only the files that exist");
    assert_eq!(deps.tools, ["node", "npm"]);
}

#[test]
fn only_installs_that_do_not_hold_the_app_itself_are_reused() {
    let p = App::new(&[("requirements.txt", ""), ("app.py", "")]).plan_ok();
    assert_eq!(p.deps.unwrap().inputs, ["requirements.txt"]);
    let p = App::new(&[("pyproject.toml", ""), ("app.py", "")])
        .plan(
            &Declared::default(),
            &Tools {
                uv: false,
                poetry: false,
                ..all_tools()
            },
        )
        .unwrap();
    assert_eq!(p.deps, None, "pip install . puts the app into the venv");
    assert!(p.steps.iter().all(|s| s.role == StepRole::Build));
    let declared = Declared {
        build: vec!["npm ci".into()],
        ..Declared::default()
    };
    let p = App::new(&[("package.json", ECHO_PACKAGE), ("index.js", "")])
        .plan(&declared, &all_tools())
        .unwrap();
    assert_eq!(p.deps, None, "declared lines may install anything");
    let p = App::new(&[("Gemfile", ""), ("Gemfile.lock", ""), ("config.ru", "")]).plan_ok();
    assert_eq!(p.deps.unwrap().dir, "vendor/bundle");
}

#[test]
fn node_uses_its_lockfile_build_script_and_start_script() {
    let app = App::new(&[
        (
            "package.json",
            r#"{"scripts":{"build":"tsc","start":"node dist/main.js"},"devDependencies":{"typescript":"5"}}"#,
        ),
        ("package-lock.json", "{}"),
    ]);
    let p = app.plan_ok();
    assert_eq!(
        commands(&p),
        [
            "npm ci --include=dev",
            "npm run build",
            "npm prune --omit=dev"
        ]
    );
    assert_eq!(p.start.as_deref(), Some("npm start"));
    assert_eq!(
        p.announce[0],
        "-----> Node.js app detected (package.json, package-lock.json): npm ci --include=dev && npm run build && npm prune --omit=dev"
    );
}

#[test]
fn node_uses_yarn_or_pnpm_only_when_they_are_on_the_ship() {
    let app = App::new(&[
        ("package.json", r#"{"scripts":{"start":"node a.js"}}"#),
        ("yarn.lock", ""),
    ]);
    let p = app.plan_ok();
    assert_eq!(
        commands(&p),
        ["yarn install --frozen-lockfile --production=false"]
    );
    assert_eq!(p.start.as_deref(), Some("yarn start"));
    assert!(p.caches.contains(&CacheMount::new("yarn")));

    let no_yarn = Tools {
        yarn: false,
        ..all_tools()
    };
    let p = app.plan(&Declared::default(), &no_yarn).unwrap();
    assert_eq!(commands(&p), ["npm install"]);
    assert!(
        p.warnings[0].contains("yarn.lock found but yarn is not on the ship"),
        "{:?}",
        p.warnings
    );

    let app = App::new(&[
        ("package.json", "{}"),
        ("pnpm-lock.yaml", ""),
        ("server.js", ""),
    ]);
    let p = app.plan_ok();
    assert_eq!(commands(&p), ["pnpm install --frozen-lockfile"]);
    assert_eq!(p.start.as_deref(), Some("node server.js"));
}

#[test]
fn node_without_a_start_names_what_it_looked_for() {
    let app = App::new(&[("package.json", r#"{"main":"lib/app.js"}"#)]);
    let err = app.plan(&Declared::default(), &all_tools()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(
        err,
        PlanError::NoStart {
            kind: AppKind::Node,
            ..
        }
    ));
    assert!(
        text.starts_with("Node.js app detected (package.json) but no start command"),
        "{text}"
    );
    assert!(text.contains("lib/app.js (package.json's main)"), "{text}");
    assert!(text.contains("Procfile"), "{text}");
}

#[test]
fn a_broken_package_json_names_the_file() {
    let app = App::new(&[("package.json", "{ not json")]);
    let err = app.plan_ok_err();
    assert!(err.starts_with("package.json: is not valid JSON"), "{err}");
}

impl App {
    fn plan_ok_err(&self) -> String {
        self.plan(&Declared::default(), &all_tools())
            .unwrap_err()
            .to_string()
    }
}

#[test]
fn missing_toolchains_say_what_was_found_and_what_to_install() {
    let none = Tools::default();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("package.json", ECHO_PACKAGE), ("index.js", "")],
            "package.json found: this app needs node and npm on the ship: apt-get install nodejs npm",
        ),
        (
            &[("requirements.txt", "flask\n"), ("app.py", "")],
            "requirements.txt found: this app needs python3 with pip or venv on the ship: apt-get install python3 python3-pip",
        ),
        (
            &[("Gemfile", ""), ("config.ru", "")],
            "Gemfile found: this app needs ruby and bundler on the ship: apt-get install ruby ruby-bundler",
        ),
        (
            &[("go.mod", "module x\n")],
            "go.mod found: this app needs go on the ship: apt-get install golang-go",
        ),
        (
            &[("Cargo.toml", "[package]\nname = \"web\"\n")],
            "Cargo.toml found: this app needs cargo on the ship: apt-get install cargo",
        ),
        (
            &[("Pipfile", ""), ("main.py", "")],
            "Pipfile found: this app needs python3 and pipenv on the ship: apt-get install pipenv",
        ),
    ];
    for (files, want) in cases {
        let err = App::new(files)
            .plan(&Declared::default(), &none)
            .unwrap_err();
        assert!(matches!(err, PlanError::MissingTool { .. }), "{err}");
        assert_eq!(err.to_string(), *want);
    }
    // One half of a pair missing still names both, so the install line is complete.
    let err = App::new(&[("package.json", ECHO_PACKAGE), ("index.js", "")])
        .plan(
            &Declared::default(),
            &Tools {
                node: true,
                ..Tools::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("needs node and npm"), "{err}");
    // A static site needs nothing but the ship itself.
    assert!(App::new(&[("index.html", "")])
        .plan(&Declared::default(), &none)
        .is_ok());
}

#[test]
fn declared_build_lines_need_no_detected_toolchain() {
    let app = App::new(&[("package.json", ECHO_PACKAGE), ("index.js", "")]);
    let declared = Declared {
        build: vec!["./build.sh".into()],
        ..Declared::default()
    };
    let p = app.plan(&declared, &Tools::default()).unwrap();
    assert_eq!(commands(&p), ["./build.sh"]);
    assert_eq!(p.start.as_deref(), Some("node index.js"));
    assert!(p.announce[0].contains("building with the build lines of Starphleet: ./build.sh"));
    // The detected kind's caches and env still help the declared lines.
    assert_eq!(env(&p.build_env, "npm_config_cache"), Some("/cache/npm"));
}

#[test]
fn python_requirements_build_a_venv_in_the_layer() {
    let app = App::new(&[
        ("requirements.txt", "flask\n"),
        (
            "Procfile",
            "web: flask --app hello run --host 0.0.0.0 --port $PORT\n",
        ),
    ]);
    let p = app.plan_ok();
    assert_eq!(p.kind, Some(AppKind::Python));
    assert_eq!(
        commands(&p),
        [
            "python3 -m venv /app/.venv",
            "/app/.venv/bin/pip install -r requirements.txt"
        ]
    );
    assert_eq!(
        p.start.as_deref(),
        Some("flask --app hello run --host 0.0.0.0 --port $PORT")
    );
    assert_eq!(
        p.announce[1],
        "-----> start (Procfile): flask --app hello run --host 0.0.0.0 --port $PORT"
    );
    assert_eq!(env(&p.build_env, "PIP_CACHE_DIR"), Some("/cache/pip"));
    assert!(env(&p.run_env, "PATH")
        .unwrap()
        .starts_with("/app/.venv/bin:"));
    assert_eq!(env(&p.run_env, "VIRTUAL_ENV"), Some("/app/.venv"));
}

#[test]
fn python_picks_its_installer_by_lockfile_and_tool() {
    let app = App::new(&[("pyproject.toml", ""), ("uv.lock", ""), ("main.py", "")]);
    let p = app.plan_ok();
    assert_eq!(commands(&p), ["uv sync --frozen --no-dev"]);
    assert_eq!(p.start.as_deref(), Some("/app/.venv/bin/python main.py"));
    assert_eq!(
        env(&p.build_env, "UV_PROJECT_ENVIRONMENT"),
        Some("/app/.venv")
    );

    let no_uv = Tools {
        uv: false,
        ..all_tools()
    };
    let p = app.plan(&Declared::default(), &no_uv).unwrap();
    assert_eq!(
        commands(&p),
        ["python3 -m venv /app/.venv", "/app/.venv/bin/pip install ."]
    );
    assert!(p.warnings[0].starts_with("uv.lock found but uv is not on the ship"));

    let app = App::new(&[("pyproject.toml", ""), ("poetry.lock", ""), ("app.py", "")]);
    let p = app.plan_ok();
    assert_eq!(
        commands(&p),
        ["poetry install --only main --no-interaction"]
    );
    assert_eq!(p.start.as_deref(), Some("/app/.venv/bin/python app.py"));

    let app = App::new(&[("Pipfile", ""), ("Pipfile.lock", ""), ("app.py", "")]);
    assert_eq!(commands(&app.plan_ok()), ["pipenv install --deploy"]);

    // requirements.txt wins over a pyproject.toml without a usable lockfile.
    let app = App::new(&[
        ("pyproject.toml", ""),
        ("requirements.txt", ""),
        ("app.py", ""),
    ]);
    assert_eq!(
        app.plan_ok().announce[0].split(':').next().unwrap(),
        "-----> Python app detected (requirements.txt)"
    );
}

#[test]
fn python_without_a_start_says_what_it_looked_for() {
    let err = App::new(&[("requirements.txt", "flask\n")]).plan_ok_err();
    assert_eq!(err, "Python app detected (requirements.txt) but no start command: looked for a Procfile `web:` line, app.py and main.py. Add a Procfile with `web: <command>` or a `start <command>` line in `Starphleet`");
}

#[test]
fn ruby_installs_gems_into_the_layer_and_rackups_config_ru() {
    let p = App::new(&[("Gemfile", ""), ("Gemfile.lock", ""), ("config.ru", "")]).plan_ok();
    assert_eq!(commands(&p), ["bundle install"]);
    assert_eq!(
        p.start.as_deref(),
        Some("bundle exec rackup config.ru -o 0.0.0.0 -p $PORT")
    );
    assert_eq!(env(&p.run_env, "BUNDLE_PATH"), Some("/app/vendor/bundle"));
    assert_eq!(env(&p.build_env, "BUNDLE_DEPLOYMENT"), Some("true"));
    assert_eq!(
        env(&p.build_env, "BUNDLE_USER_HOME"),
        Some("/cache/bundler")
    );
    let err = App::new(&[("Gemfile", "")]).plan_ok_err();
    assert!(
        err.contains("looked for a Procfile `web:` line and config.ru"),
        "{err}"
    );
}

#[test]
fn go_builds_one_binary_with_cached_modules() {
    let p = App::new(&[("go.mod", "module example.com/web\n")]).plan_ok();
    assert_eq!(commands(&p), ["go build -o /app/.bin/app ."]);
    assert_eq!(p.start.as_deref(), Some("/app/.bin/app"));
    assert_eq!(env(&p.build_env, "GOCACHE"), Some("/cache/go-build"));
    assert_eq!(env(&p.build_env, "GOPATH"), Some("/cache/go"));
}

#[test]
fn rust_builds_the_package_binary() {
    let p = App::new(&[
        (
            "Cargo.toml",
            "[package]\nname = \"web-app\"\nversion = \"0.1.0\"\n",
        ),
        ("Cargo.lock", ""),
    ])
    .plan_ok();
    assert_eq!(
        commands(&p),
        [
            "cargo build --release --locked",
            "mkdir -p /app/.bin && cp \"$CARGO_TARGET_DIR/release/web-app\" /app/.bin/web-app"
        ]
    );
    assert_eq!(p.start.as_deref(), Some("/app/.bin/web-app"));
    assert_eq!(
        env(&p.build_env, "CARGO_TARGET_DIR"),
        Some("/cache/cargo-target")
    );

    let p = App::new(&[(
        "Cargo.toml",
        "[package]\nname = \"lib\"\n[[bin]]\nname = \"server\"\npath = \"src/main.rs\"\n",
    )])
    .plan_ok();
    assert_eq!(p.start.as_deref(), Some("/app/.bin/server"));

    let err = App::new(&[("Cargo.toml", "[workspace]\nmembers = [\"a\"]\n")]).plan_ok_err();
    assert!(
        err.starts_with("Cargo.toml: has no [package] name"),
        "{err}"
    );
    let err = App::new(&[("Cargo.toml", "[package\n")]).plan_ok_err();
    assert!(err.starts_with("Cargo.toml: is not valid TOML"), "{err}");
}

#[test]
fn static_sites_are_served_by_the_ship_binary() {
    for (file, dir) in [
        ("index.html", "/app"),
        ("public/index.html", "/app/public"),
        ("dist/index.html", "/app/dist"),
    ] {
        let p = App::new(&[(file, "<h1>hi</h1>")]).plan_ok();
        assert_eq!(p.kind, Some(AppKind::Static));
        assert!(p.steps.is_empty());
        assert_eq!(
            p.start.unwrap(),
            format!("/.starphleet/starphleet serve-static {dir}")
        );
    }
}

#[test]
fn the_first_kind_in_the_detection_order_wins_and_the_others_are_warned_about() {
    let app = App::new(&[
        ("Gemfile", ""),
        ("config.ru", ""),
        ("package.json", "{}"),
        ("public/index.html", ""),
    ]);
    let p = app.plan_ok();
    assert_eq!(p.kind, Some(AppKind::Ruby));
    assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    assert!(p.warnings[0].starts_with("Node.js also found (package.json): this app is built as Ruby, the first match in the detection order (Ruby, Python, Go, Rust, Node.js, Static site)"), "{}", p.warnings[0]);
    assert!(p.warnings[1].starts_with("Static site also found (public/index.html)"));

    // A kind that matched later is not checked for its toolchain.
    let only_ruby = Tools {
        ruby: true,
        bundle: true,
        ..Tools::default()
    };
    assert!(app.plan(&Declared::default(), &only_ruby).is_ok());
}

#[test]
fn starphleet_start_beats_procfile_beats_the_detected_default() {
    let app = App::new(&[
        ("package.json", ECHO_PACKAGE),
        ("index.js", ""),
        ("Procfile", "worker: node w.js\nweb: node web.js\n"),
    ]);
    let p = app.plan_ok();
    assert_eq!(p.start.as_deref(), Some("node web.js"));
    assert_eq!(
        commands(&p),
        ["npm install"],
        "the Procfile does not replace the build"
    );

    let declared = Declared {
        start: Some("node other.js".into()),
        ..Declared::default()
    };
    let p = app.plan(&declared, &all_tools()).unwrap();
    assert_eq!(p.start.as_deref(), Some("node other.js"));
    assert!(
        p.warnings[0].contains("Procfile's `web:` line is not used"),
        "{:?}",
        p.warnings
    );
}

#[test]
fn an_app_with_only_a_start_or_a_procfile_needs_no_detection() {
    let p = App::new(&[("Procfile", "web: ./serve\n")]).plan_ok();
    assert_eq!(p.kind, None);
    assert!(p.steps.is_empty());
    assert_eq!(p.start.as_deref(), Some("./serve"));

    let declared = Declared {
        build: vec!["make".into()],
        start: Some("/usr/bin/python3 server.py".into()),
        ..Declared::default()
    };
    let p = App::new(&[("server.py", "")])
        .plan(&declared, &Tools::default())
        .unwrap();
    assert_eq!(commands(&p), ["make"]);
    assert_eq!(
        p.announce,
        [
            "-----> build steps from Starphleet: make",
            "-----> start (Starphleet): /usr/bin/python3 server.py"
        ]
    );
}

#[test]
fn nothing_detected_names_everything_looked_for() {
    let err = App::new(&[("README.md", "hi")]).plan_ok_err();
    for name in [
        "Starphleet",
        "Procfile",
        "package.json",
        "requirements.txt",
        "pyproject.toml",
        "Pipfile",
        "Gemfile",
        "go.mod",
        "Cargo.toml",
        "index.html",
        ".buildpacks",
        "BUILDPACK_URL",
    ] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
    assert!(
        err.starts_with("nothing says how to build or start this app"),
        "{err}"
    );
}

#[test]
fn buildpacks_come_from_starphleet_then_env_then_the_buildpacks_file() {
    let app = App::new(&[
        ("package.json", ECHO_PACKAGE),
        (
            ".env",
            "export BUILDPACK_URL=https://example.com/env-pack.git#v2\n",
        ),
        (
            ".buildpacks",
            "# two packs\nhttps://example.com/a.git\n\nhttps://example.com/b.git#main\n",
        ),
    ]);
    let p = app.plan_ok();
    assert_eq!(p.kind, Some(AppKind::Buildpacks));
    assert_eq!(
        p.buildpacks,
        vec![GitSource {
            url: "https://example.com/env-pack.git".into(),
            reference: Some("v2".into())
        }]
    );
    assert_eq!(
        p.warnings,
        [".buildpacks is not used: BUILDPACK_URL in .env wins"]
    );
    assert_eq!(p.start, None, "left to bin/release");
    let cache = buildpack_cache("https://example.com/env-pack.git");
    assert_eq!(
        commands(&p),
        [
            "/buildpacks/0/bin/detect /app".to_string(),
            format!(
                "/buildpacks/0/bin/compile /app /cache/{} /buildpack-env",
                cache.name
            ),
            "if [ -x /buildpacks/0/bin/release ]; then /buildpacks/0/bin/release /app > /buildpack-out/release-0.yml; fi"
                .to_string(),
        ]
    );
    assert_eq!(p.caches, vec![cache]);
    assert_eq!(p.steps[0].role, StepRole::Detect { buildpack: 0 });
    assert_eq!(p.steps[2].role, StepRole::Release { buildpack: 0 });

    let app = App::new(&[
        (
            ".buildpacks",
            "https://example.com/a.git\nhttps://example.com/b.git#main\n",
        ),
        ("Procfile", "web: ./run"),
    ]);
    let p = app.plan(&Declared::default(), &Tools::default()).unwrap();
    assert_eq!(p.buildpacks.len(), 2);
    assert_eq!(p.buildpacks[1].reference.as_deref(), Some("main"));
    assert_eq!(p.steps.len(), 6);
    assert_eq!(p.start.as_deref(), Some("./run"));

    let declared = Declared {
        buildpacks: vec![GitSource {
            url: "file:///srv/pack".into(),
            reference: None,
        }],
        build: vec!["echo after".into()],
        ..Declared::default()
    };
    let p = app.plan(&declared, &Tools::default()).unwrap();
    assert_eq!(p.buildpacks, declared.buildpacks);
    assert_eq!(p.steps.last().unwrap().command, "echo after");
    assert!(
        p.warnings[0].starts_with(".buildpacks is not used: `buildpack` lines in Starphleet win"),
        "{:?}",
        p.warnings
    );

    let err = App::new(&[(".buildpacks", "# nothing\n")]).plan_ok_err();
    assert!(err.starts_with(".buildpacks: names no buildpack"), "{err}");
}

#[test]
fn the_ca_bundle_is_trusted_by_builds_and_node_services() {
    let tools = Tools {
        ca_bundle: true,
        ..all_tools()
    };
    let p = App::new(&[("package.json", ECHO_PACKAGE), ("index.js", "")])
        .plan(&Declared::default(), &tools)
        .unwrap();
    assert_eq!(env(&p.build_env, "NODE_EXTRA_CA_CERTS"), Some(CA_BUNDLE));
    assert_eq!(env(&p.run_env, "NODE_EXTRA_CA_CERTS"), Some(CA_BUNDLE));
    let p = App::new(&[("package.json", ECHO_PACKAGE), ("index.js", "")]).plan_ok();
    assert_eq!(env(&p.build_env, "NODE_EXTRA_CA_CERTS"), None);
}

#[test]
fn probing_finds_commands_and_venv_in_a_root() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::create_dir_all(r.join("usr/lib/python3.12/ensurepip")).unwrap();
    std::fs::write(r.join("usr/lib/python3.12/ensurepip/__init__.py"), "").unwrap();
    std::fs::write(r.join("usr/bin/node"), "").unwrap();
    std::os::unix::fs::symlink("/usr/lib/python3.12/bin/python3", r.join("usr/bin/python3"))
        .unwrap();
    let t = Tools::probe_root(r);
    assert!(t.node && t.python3 && t.venv, "{t:?}");
    assert!(!t.npm && !t.go && !t.ca_bundle, "{t:?}");
    assert_ne!(t.fingerprint(), Tools::default().fingerprint());
}
