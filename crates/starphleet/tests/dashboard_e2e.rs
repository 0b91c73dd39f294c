//! The admin dashboard, end to end: a ship serving two services, the page at `GET /` on the
//! admin endpoint, driven by Debian's real headless Chromium inside the ship's network
//! namespace (so `127.0.0.1:9797` is the ship's and nothing else is reachable).
//!
//! Checks the rendered DOM (each service, its state, live CPU / memory / request numbers after
//! the page's second poll) and a screenshot (a real PNG of the window size that shows the
//! services, not a blank page), and the phleet view: the ships of HQ's `ships` side by side,
//! an unreachable one marked.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

const DEPLOY: Duration = Duration::from_secs(60);
const ADMIN: u16 = 9797;
const CHROMIUM: &str = "/usr/bin/chromium";
const SERVICES: [(&str, &str); 2] = [("alpha", "/a"), ("bravo", "/b")];
const REQUESTS: usize = 25;

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn dashboard_shows_live_services_in_headless_chromium() {
    let chromium = chromium();

    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    for (name, prefix) in SERVICES {
        ship.hq.write(
            &format!("{name}.orders"),
            &format!(
                "autodeploy {}\npublish --private 8000 --url {prefix}\nexport GREETING={name}-\n",
                app.url()
            ),
        );
    }
    ship.hq.commit("two services");
    ship.start();
    for (name, prefix) in SERVICES {
        ship.wait_for_body(80, &format!("{prefix}/x"), &format!("{name}-x"), DEPLOY);
    }
    for i in 0..REQUESTS {
        for (name, prefix) in SERVICES {
            let (code, body) = ship.get(80, &format!("{prefix}/r{i}")).unwrap();
            assert_eq!(
                (code, body.as_str()),
                (200, format!("{name}-r{i}").as_str())
            );
        }
    }
    wait_for_live_status(&ship);

    // The page itself: HTML from the admin endpoint, self-contained.
    let (content_type, html) = get_with_type(&ship, "/");
    assert!(
        content_type.starts_with("text/html"),
        "GET / on the admin endpoint must serve the dashboard as text/html, got {content_type:?}: {}",
        head(&html, 300)
    );
    assert!(
        html.contains("<html") && html.contains("<script"),
        "{}",
        head(&html, 300)
    );
    for external in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
        assert!(
            !html.contains(external),
            "the dashboard must work offline, but references {external:?}"
        );
    }

    let browser = Browser::new(&ship, chromium);

    // (1) The DOM after a few polls (virtual time: polls at 0, 2 and 4 s).
    let dom = browser.run(
        "dom",
        &["--dump-dom", "--virtual-time-budget=5000"],
        &format!("http://127.0.0.1:{ADMIN}/"),
    );
    let dom = String::from_utf8_lossy(&dom).into_owned();
    let ctx = || {
        format!(
            "--- DOM ---\n{}\n--- ship log ---\n{}",
            head(&dom, 20000),
            ship.log()
        )
    };
    let polls: u32 = attr(&dom, "data-polls")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        polls >= 2,
        "the page polled /status {polls} times; rates need two samples\n{}",
        ctx()
    );
    assert!(
        dom.contains("data-field=\"ship\">testship<"),
        "ship name missing\n{}",
        ctx()
    );
    let banner = tag(&dom, "data-field=\"fetch-error\"").unwrap_or_default();
    assert!(
        banner.contains("hidden"),
        "the page shows a fetch error: {banner}\n{}",
        ctx()
    );
    for (name, prefix) in SERVICES {
        let card =
            service_card(&dom, name).unwrap_or_else(|| panic!("no card for {name}\n{}", ctx()));
        assert!(
            card.contains("data-state=\"serving\""),
            "{name} not serving\n{card}"
        );
        assert!(
            card.contains("data-field=\"state\">serving</span>"),
            "{name}'s state badge does not say serving\n{card}"
        );
        assert!(
            card.contains(&format!(":80{prefix} → 8000")),
            "{name}'s publish line\n{card}"
        );

        let cpu = numbers(card, "cpu");
        assert!(
            !cpu.is_empty(),
            "{name}: no numeric CPU value for its container\n{card}"
        );
        assert!(
            cpu.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{name}: CPU {cpu:?}\n{card}"
        );
        let mem = numbers(card, "memory");
        assert!(
            !mem.is_empty() && mem.iter().all(|v| *v > 0.0),
            "{name}: no memory value for its container ({mem:?})\n{card}"
        );
        assert!(
            card.contains(" MiB<"),
            "{name}: memory is shown in MiB\n{card}"
        );

        let requests = numbers(card, "requests");
        assert!(
            requests.iter().any(|v| *v >= REQUESTS as f64),
            "{name}: route request count {requests:?}, expected at least {REQUESTS}\n{card}"
        );
        let rps = numbers(card, "rps");
        assert!(
            !rps.is_empty() && rps.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{name}: no request rate (needs two samples): {rps:?}\n{card}"
        );

        assert!(
            card.contains("data-outcome=\"ok\"") && card.contains("data-step=\"health\""),
            "{name}: deploy timeline with its steps is missing\n{card}"
        );
    }

    // (2) A screenshot of the same page.
    let png_path = browser.dir.join("dash.png");
    browser.run(
        "screenshot",
        &[
            &format!("--screenshot={}", png_path.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ],
        &format!("http://127.0.0.1:{ADMIN}/"),
    );
    assert!(
        png_path.exists(),
        "chromium wrote no screenshot at {}",
        png_path.display()
    );
    if let Some(keep) = std::env::var_os("STARPHLEET_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&png_path, &keep).expect("copy the screenshot");
    }
    let shot = Screenshot::load(&png_path);
    assert_eq!((shot.width, shot.height), (1280, 900), "screenshot size");
    let (background, share) = shot.dominant();
    assert!(
        share < 0.9,
        "the screenshot is {:.0}% one colour {background:?}: the page is blank",
        share * 100.0
    );
    let colours = shot.distinct_colours();
    assert!(
        colours >= 64,
        "the screenshot has only {colours} colours: nothing rendered"
    );
    // The "serving" green (light or dark palette) of the state badge and card border.
    let green = shot.count(|p| near(p, [0x14, 0x80, 0x4a]) || near(p, [0x3f, 0xb9, 0x70]));
    assert!(
        green >= 300,
        "the screenshot shows no serving service ({green} pixels of the serving colour)"
    );
}

/// Waits until `GET /status` has both services serving with sampled container numbers.
fn wait_for_live_status(ship: &TestShip) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < DEPLOY {
        if let Ok((200, body)) = ship.get(ADMIN, "/status") {
            let st: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let ready = SERVICES.iter().all(|(name, _)| {
                st["services"].as_array().into_iter().flatten().any(|s| {
                    s["name"] == *name
                        && s["state"] == "serving"
                        && s["containers"].as_array().is_some_and(|cs| {
                            !cs.is_empty()
                                && cs.iter().all(|c| {
                                    c["cpu_seconds"].is_number() && c["memory_bytes"].is_number()
                                })
                        })
                })
            });
            if ready {
                return;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "GET /status never showed both services serving with live container numbers; last:\n{last}\n--- ship log ---\n{}",
        ship.log()
    );
}

/// `GET path` on the admin endpoint from inside the namespace: (content-type, body).
fn get_with_type(ship: &TestShip, path: &str) -> (String, String) {
    let url = format!("http://127.0.0.1:{ADMIN}{path}");
    ship.net.run(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        match agent.get(&url).call() {
            Ok(r) => (
                r.content_type().to_string(),
                r.into_string().unwrap_or_default(),
            ),
            Err(ureq::Error::Status(code, r)) => panic!(
                "GET {url} answered {code}: {}",
                r.into_string().unwrap_or_default()
            ),
            Err(e) => panic!("GET {url}: {e}"),
        }
    })
}

/// Debian's chromium; installs it once if missing (as `scripts/deps chromium` does).
fn chromium() -> &'static Path {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if Path::new(CHROMIUM).exists() {
            return Ok(());
        }
        eprintln!("{CHROMIUM} is missing; installing Debian's chromium");
        let out = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && apt-get install -y -qq chromium",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() && Path::new(CHROMIUM).exists() => Ok(()),
            Ok(o) => Err(format!(
                "apt-get install chromium failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Err(format!("cannot run apt-get: {e}")),
        }
    });
    if let Err(e) = found {
        panic!(
            "the dashboard test needs Debian's chromium at {CHROMIUM}; install it with `scripts/deps chromium`.\n{e}"
        );
    }
    Path::new(CHROMIUM)
}

/// Headless chromium runs inside the ship's namespace, with a throw-away profile and home.
struct Browser<'a> {
    ship: &'a TestShip,
    program: &'a Path,
    dir: PathBuf,
}

impl<'a> Browser<'a> {
    fn new(ship: &'a TestShip, program: &'a Path) -> Self {
        let dir = ship.path(&unique("chromium"));
        std::fs::create_dir_all(&dir).unwrap();
        Browser { ship, program, dir }
    }

    /// Runs chromium once on `url` with `args`; returns its stdout, panics with its stderr on failure.
    fn run(&self, what: &str, args: &[&str], url: &str) -> Vec<u8> {
        let profile = self.dir.join(unique("profile"));
        let home = self.dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let stdout_path = self.dir.join(format!("{what}.stdout"));
        let stderr_path = self.dir.join(format!("{what}.stderr"));
        let mut cmd = self.ship.net.command(self.program);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--force-color-profile=srgb",
            "--lang=en-US",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .process_group(0);
        let child = cmd.spawn().expect("start chromium");
        let mut group = Group {
            child,
            dir: self.dir.clone(),
        };
        let status = group.wait(Duration::from_secs(120));
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        match status {
            Some(s) if s.success() => std::fs::read(&stdout_path).unwrap_or_default(),
            Some(s) => panic!(
                "chromium ({what}) failed: {s}\n--- stderr ---\n{}",
                tail(&stderr, 4000)
            ),
            None => panic!(
                "chromium ({what}) did not finish within 120 s\n--- stderr ---\n{}",
                tail(&stderr, 4000)
            ),
        }
    }
}

/// A chromium process group: waited for with a deadline, killed whole when dropped, with the
/// crash handlers it starts in sessions of their own (found by the unique dir they name: their
/// database is under our `$HOME`).
struct Group {
    child: std::process::Child,
    dir: PathBuf,
}

impl Group {
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().expect("wait for chromium") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Renderer, GPU and utility processes share the group of the chromium we started.
        let pgid = self.child.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let needle = self.dir.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn dashboard_shows_the_phleet_side_by_side_with_unreachable_ships_marked() {
    let chromium = chromium();
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    // This ship and one that never answers (nothing listens on port 9 in the namespace).
    ship.hq
        .write(
            "ships",
            &format!(
                "testship http://127.0.0.1:{ADMIN}
ghost http://127.0.0.1:9
"
            ),
        )
        .write(
            "alpha.orders",
            &format!(
                "autodeploy {}
publish --private 8000 --url /a
",
                app.url()
            ),
        );
    let hq_commit = ship.hq.commit("a phleet of two");
    ship.start();
    ship.wait_for_body(80, "/a/x", "x", DEPLOY);

    let browser = Browser::new(&ship, chromium);
    let dom = browser.run(
        "dom",
        &["--dump-dom", "--virtual-time-budget=3000"],
        &format!("http://127.0.0.1:{ADMIN}/"),
    );
    let dom = String::from_utf8_lossy(&dom).into_owned();
    let card = |name: &str| -> String {
        let marker = format!("data-ship=\"{name}\"");
        let Some(start) = dom.find(&marker) else {
            panic!(
                "no card for ship {name} in the phleet view\n--- DOM ---\n{}\n--- ship log ---\n{}",
                head(&dom, 20000),
                ship.log()
            );
        };
        // From the card's opening tag to the next card's.
        let open = dom[..start].rfind('<').unwrap_or(start);
        let end = dom[start..]
            .find("<div class=\"pship")
            .map_or(dom.len(), |i| start + i);
        dom[open..end].to_string()
    };
    let me = card("testship");
    assert!(me.contains("(this ship)"), "{me}");
    assert!(me.contains(&hq_commit[..8]), "its HQ commit is shown: {me}");
    assert!(me.contains("alpha"), "its services are listed: {me}");
    assert!(!me.contains("pship down"), "{me}");
    let ghost = card("ghost");
    assert!(
        ghost.contains("pship down"),
        "an unreachable ship is marked: {ghost}"
    );
    assert!(ghost.contains("unreachable"), "{ghost}");
}

/// The markup of the card `data-service="name"`: up to the next card.
fn service_card<'d>(dom: &'d str, name: &str) -> Option<&'d str> {
    let marker = format!("data-service=\"{name}\"");
    let start = dom.find(&marker)?;
    let rest = &dom[start + marker.len()..];
    let end = rest.find("data-service=\"").unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The numbers in `data-field="field" data-value="…"` in `html`.
fn numbers(html: &str, field: &str) -> Vec<f64> {
    let marker = format!("data-field=\"{field}\" data-value=\"");
    html.match_indices(&marker)
        .filter_map(|(i, _)| {
            let rest = &html[i + marker.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

/// The start tag holding `marker`.
fn tag<'d>(html: &'d str, marker: &str) -> Option<&'d str> {
    let at = html.find(marker)?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    Some(&html[start..=end])
}

/// The value of the first `name="…"` attribute in `html`.
fn attr<'d>(html: &'d str, name: &str) -> Option<&'d str> {
    let marker = format!("{name}=\"");
    let rest = &html[html.find(&marker)? + marker.len()..];
    Some(&rest[..rest.find('"')?])
}

fn head(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A decoded screenshot as RGB pixels.
struct Screenshot {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Screenshot {
    fn load(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a valid PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("PNG fits in memory")];
        let info = reader.next_frame(&mut buf).expect("a valid PNG image");
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            other => panic!("unexpected PNG colour type {other:?}"),
        };
        let mut rgb = Vec::with_capacity((info.width * info.height) as usize);
        for y in 0..info.height as usize {
            let line = &buf[y * info.line_size..][..info.width as usize * channels];
            for px in line.chunks_exact(channels) {
                rgb.push(if channels >= 3 {
                    [px[0], px[1], px[2]]
                } else {
                    [px[0], px[0], px[0]]
                });
            }
        }
        Screenshot {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    /// The most common colour and its share of the pixels.
    fn dominant(&self) -> ([u8; 3], f64) {
        let mut counts = std::collections::HashMap::new();
        for p in &self.rgb {
            *counts.entry(*p).or_insert(0usize) += 1;
        }
        let (colour, n) = counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .unwrap_or(([0; 3], 0));
        (colour, n as f64 / self.rgb.len().max(1) as f64)
    }

    fn distinct_colours(&self) -> usize {
        self.rgb
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    fn count(&self, f: impl Fn(&[u8; 3]) -> bool) -> usize {
        self.rgb.iter().filter(|p| f(p)).count()
    }
}

fn near(p: &[u8; 3], c: [u8; 3]) -> bool {
    p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 12)
}
