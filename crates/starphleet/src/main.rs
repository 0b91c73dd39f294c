//! `starphleet`: the command line over the ship, proxy and orders crates.

mod demo;
mod init;
mod static_site;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use starphleet_ship::layout::{Layout, DEFAULT_STATE_DIR};
use starphleet_ship::{Ship, ShipOptions};

/// Turns Linux machines into container hosts that deploy themselves from git.
#[derive(Parser)]
#[command(name = "starphleet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show or set the headquarters (HQ) git repository this ship follows.
    #[command(
        after_help = "Examples:\n  starphleet headquarters https://github.com/me/hq.git\n  starphleet headquarters git@github.com:me/hq.git#production\n  starphleet headquarters            # show it"
    )]
    Headquarters {
        /// Any URL git accepts, optionally `#branch`, `#tag` or `#sha`.
        url: Option<String>,
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Run the ship daemon in the foreground: follow HQ, deploy every order, serve it.
    #[command(
        after_help = "Examples:\n  starphleet ship --headquarters https://github.com/me/hq.git\n  starphleet ship --state-dir /srv/starphleet --admin 127.0.0.1:9797\n  starphleet ship --name north --admin 10.1.0.11:9797    # a ship of a phleet (needs <state-dir>/phleet.token)\n\nServices and the proxy keep running when this process stops; `starphleet down` stops everything."
    )]
    Ship {
        /// HQ URL; saved in the state dir, so later starts may omit it.
        #[arg(long)]
        headquarters: Option<String>,
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
        /// TCP address of the admin endpoint (the CLI uses the socket in the state dir); `off` disables it.
        #[arg(long, default_value = "127.0.0.1:9797")]
        admin: String,
        /// OCI runtime: runc (default), crun or youki.
        #[arg(long, default_value = "runc")]
        runtime: String,
        /// How often HQ and app refs are checked, e.g. 2s, 500ms [default: HQ's STARPHLEET_POLL_INTERVAL, else 2s].
        #[arg(long, value_parser = parse_duration)]
        poll_interval: Option<Duration>,
        /// The ship's name: shown in status and error pages, and how it finds itself in HQ's `ships` (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        /// Containers and builds reach only the ship's bridge: no outbound NAT (builds that
        /// download dependencies then fail).
        #[arg(long)]
        no_outbound: bool,
        /// The phleet token (mode 0600) [default: <state-dir>/phleet.token]; required when --admin listens beyond loopback.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
    },
    /// Validate an HQ checkout; prints compiler-style errors and exits 1 if any.
    #[command(
        after_help = "Examples:\n  starphleet check              # the current directory\n  starphleet check ~/src/hq\n  starphleet check --admin-port 9000 ~/src/hq"
    )]
    Check {
        /// The HQ checkout to check.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The port of the ships' admin endpoint (`starphleet ship --admin`): no order may publish on it.
        #[arg(long, value_name = "PORT", default_value_t = 9797, value_parser = clap::value_parser!(u16).range(1..))]
        admin_port: u16,
    },
    /// Show services, versions, containers, health and recent deploys.
    #[command(
        after_help = "Examples:\n  starphleet status\n  starphleet status --json | jq '.services[].state'\n  starphleet status --phleet          # every ship in HQ's ships, drift and unreachable ships marked"
    )]
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Every ship of the phleet (HQ's `ships`) side by side; a ship that does not answer within 2 s is shown unreachable.
        #[arg(long)]
        phleet: bool,
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Show what services printed, built, served and what the ship did; newest last.
    #[command(
        after_help = "Examples:\n  starphleet logs echo --since 10m\n  starphleet logs echo -f\n  starphleet logs --kind access --grep ' 500 ' --json\n  starphleet logs --kind ship          # deploy events of every service\n  starphleet logs --phleet echo -f     # every ship's lines, merged by time, labelled with the ship"
    )]
    Logs {
        /// Only this service (default: every service and the ship's own events).
        service: Option<String>,
        /// Only records newer than this: a duration (10m, 2h) or a UTC time (2026-11-27T08:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only records older than this (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only lines containing this text.
        #[arg(long)]
        grep: Option<String>,
        /// Only this kind: app, build, access, ship or health.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many of the newest records (default 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Keep following new records, across redeploys.
        #[arg(short, long)]
        follow: bool,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
        /// The records of every ship of the phleet (HQ's `ships`), merged by time, each naming its ship.
        #[arg(long)]
        phleet: bool,
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Print a new phleet token: the shared secret of the ships' admin endpoints.
    #[command(
        after_help = "Example:\n  starphleet token > /var/lib/starphleet/phleet.token && chmod 600 /var/lib/starphleet/phleet.token\n\nMake it on one ship and copy the file to the others (and to Prometheus)."
    )]
    Token,
    /// Take this ship out of its load balancers: /starphleet/health answers 503 on every public port while requests are still served.
    #[command(after_help = "Example:\n  starphleet offline\n  starphleet online     # back in")]
    Offline {
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Put this ship back into its load balancers: /starphleet/health answers 200 again.
    #[command(after_help = "Example:\n  starphleet online")]
    Online {
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Rebuild a service and switch to it with zero downtime.
    #[command(
        after_help = "Examples:\n  starphleet redeploy echo\n  starphleet redeploy team/api"
    )]
    Redeploy {
        /// The service (its order's path in HQ without `.orders`).
        service: String,
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Order a host's ACME certificate again now (after a key leak, or to try renewal); open connections keep theirs.
    #[command(
        after_help = "Example:\n  starphleet renew shop.example.com\n  starphleet status          # the new expiry and next renewal, once served"
    )]
    Renew {
        /// A host published with `--tls --host`.
        host: String,
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// Stop the ship, its proxy and every service; remove their containers, namespaces, links and mounts. Keeps state and logs.
    #[command(after_help = "Example:\n  starphleet down --state-dir /var/lib/starphleet")]
    Down {
        #[arg(long, default_value = DEFAULT_STATE_DIR, env = "STARPHLEET_STATE_DIR")]
        state_dir: PathBuf,
        /// The OCI runtime the ship used.
        #[arg(long, default_value = "runc")]
        runtime: String,
    },
    /// Set up a local HQ with the echo service and run a ship serving it.
    #[command(
        after_help = "Example:\n  starphleet demo            # then: curl http://localhost/echo/Hi"
    )]
    Demo {
        #[arg(long, default_value = "/var/lib/starphleet-demo")]
        state_dir: PathBuf,
        /// Public port for the echo service.
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
    /// PID 1 inside service containers: forwards signals to the app and reaps orphans (not for direct use).
    #[command(hide = true)]
    Init {
        /// The app's command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Serve a directory over HTTP on $PORT: the server static sites run on in their container.
    #[command(
        after_help = "Example:\n  PORT=8080 starphleet serve-static ./public\n\nindex.html for directories, ETag/Last-Modified with 304s, gzip, byte ranges; dotfiles and paths out of DIR are refused."
    )]
    ServeStatic {
        /// The directory to serve.
        dir: PathBuf,
        /// The port to listen on (all addresses).
        #[arg(long, env = "PORT", default_value_t = 8080)]
        port: u16,
    },
    /// The data-plane proxy (started by `ship`; not for direct use).
    #[command(hide = true)]
    Proxy {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// One request to the ship's admin socket: its status code and body.
fn admin_request(state_dir: &Path, method: hyper::Method, path: &str) -> Result<(u16, String)> {
    let socket = Layout::new(state_dir).admin_socket();
    runtime()?
        .block_on(starphleet_ship::admin::request(&socket, method, path))
        .with_context(|| not_running(state_dir))
}

/// POSTs `path` to the ship's admin socket: `done` on 202, else the ship's error.
fn post_accepted(state_dir: &Path, path: &str, done: &str) -> Result<ExitCode> {
    let (code, body) = admin_request(state_dir, hyper::Method::POST, path)?;
    if code == 202 {
        println!("{done}");
        Ok(ExitCode::SUCCESS)
    } else {
        print_error(&body);
        Ok(ExitCode::FAILURE)
    }
}

/// Parses `500ms`, `2s`, `5m`, `1h`, or a bare number of seconds (the orders' duration grammar).
fn parse_duration(text: &str) -> Result<Duration, String> {
    starphleet_orders::parse_duration(text.trim())
        .ok_or_else(|| format!("`{text}` is not a duration; use e.g. 500ms, 2s, 5m or 1h"))
}

/// Logs to stderr at `default` unless `STARPHLEET_LOG` says otherwise.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STARPHLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    // The container init path stays free of clap and tokio: it is PID 1 of every service.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a == "init").unwrap_or(false) {
        init::run(&args[2..]);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("starphleet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { dir, admin_port } => Ok(check(&dir, admin_port)),
        Command::Headquarters { url, state_dir } => {
            let layout = Layout::new(&state_dir);
            match url {
                Some(url) => {
                    std::fs::create_dir_all(&state_dir)?;
                    std::fs::write(layout.headquarters_file(), format!("{url}\n"))?;
                    println!("this ship now follows {url}; start it with: starphleet ship --state-dir {}", state_dir.display());
                }
                None => match read_headquarters(&layout) {
                    Some(url) => println!("{url}"),
                    None => bail!(
                        "no headquarters set in {}; set one with `starphleet headquarters <git url>`",
                        state_dir.display()
                    ),
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ship {
            headquarters,
            state_dir,
            admin,
            runtime: rt,
            poll_interval,
            name,
            no_outbound,
            token_file,
        } => {
            init_tracing("info");
            let layout = Layout::new(&state_dir);
            let headquarters = match headquarters {
                Some(url) => {
                    std::fs::create_dir_all(&state_dir)?;
                    std::fs::write(layout.headquarters_file(), format!("{url}\n"))?;
                    url
                }
                None => read_headquarters(&layout).context(
                    "no headquarters: pass --headquarters <git url> or run `starphleet headquarters <git url>` first",
                )?,
            };
            let admin =
                match admin.as_str() {
                    "off" | "" => None,
                    a => Some(a.parse::<SocketAddr>().with_context(|| {
                        format!("--admin {a}: not an address like 127.0.0.1:9797")
                    })?),
                };
            let opts = ShipOptions {
                state_dir,
                headquarters,
                admin,
                runtime: rt,
                poll_interval,
                name: name.unwrap_or_else(hostname),
                self_exe: std::env::current_exe()?,
                outbound: !no_outbound,
                token_file,
            };
            runtime()?.block_on(async move { Ship::open(opts)?.run().await })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            json,
            phleet: true,
            state_dir,
        } => phleet_status(&state_dir, json),
        Command::Status {
            json, state_dir, ..
        } => status(&state_dir, json),
        Command::Token => {
            println!("{}", starphleet_phleet::new_token()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Offline { state_dir } => set_offline(&state_dir, true),
        Command::Online { state_dir } => set_offline(&state_dir, false),
        Command::Logs {
            service,
            since,
            until,
            grep,
            kind,
            limit,
            follow,
            json,
            phleet,
            state_dir,
        } => {
            let limit = limit.map(|l| l.to_string());
            let params = [
                ("service", service.as_deref()),
                ("since", since.as_deref()),
                ("until", until.as_deref()),
                ("grep", grep.as_deref()),
                ("kind", kind.as_deref()),
                ("limit", limit.as_deref()),
            ];
            // Parsed here too, so a typo is reported even when the ship is down.
            let [service, since, until, grep, kind, limit] = params.map(|(_, v)| v);
            let query =
                starphleet_ship::logs::parse_query(service, since, until, grep, kind, limit)?;
            if phleet {
                return phleet_logs(&state_dir, &params, follow, json);
            }
            logs(&state_dir, &params, &query, follow, json)
        }
        Command::Redeploy { service, state_dir } => post_accepted(
            &state_dir,
            &format!("/redeploy/{service}"),
            &format!("redeploying {service}; follow it with `starphleet status`"),
        ),
        Command::Renew { host, state_dir } => post_accepted(
            &state_dir,
            &format!("/certs/renew/{host}"),
            &format!(
                "ordering a new certificate for {host}; `starphleet status` shows it once served"
            ),
        ),
        Command::Down {
            state_dir,
            runtime: rt,
        } => {
            let report = runtime()?.block_on(starphleet_ship::down::down(&state_dir, &rt))?;
            println!(
                "down: ship {}, proxy {}, {} containers, {} network namespaces, {} mounts removed; state and logs kept in {}",
                if report.stopped_ship { "stopped" } else { "was not running" },
                if report.stopped_proxy { "stopped" } else { "was not running" },
                report.containers,
                report.netns,
                report.mounts,
                state_dir.display()
            );
            for p in &report.problems {
                eprintln!("down: warning: {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { state_dir, port } => {
            init_tracing("info");
            let hq = demo::prepare(&state_dir, port)?;
            println!("demo headquarters: {hq}");
            let url = if port == 80 {
                "http://localhost/echo/Hi".to_string()
            } else {
                format!("http://localhost:{port}/echo/Hi")
            };
            println!("starting the ship; in a moment try:\n\n    curl {url}\n\n(Ctrl-C stops the control plane; `starphleet down --state-dir {}` stops everything)", state_dir.display());
            let opts = ShipOptions {
                state_dir,
                headquarters: hq,
                admin: None,
                runtime: "runc".into(),
                poll_interval: None,
                name: hostname(),
                self_exe: std::env::current_exe()?,
                outbound: true,
                token_file: None,
            };
            runtime()?.block_on(async move { Ship::open(opts)?.run().await })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { .. } => unreachable!("handled before argument parsing"),
        Command::ServeStatic { dir, port } => {
            static_site::run(&dir, port).map(|()| ExitCode::SUCCESS)
        }
        Command::Proxy { state_dir } => {
            // Access lines go to per-container files the ship collects, not to proxy.log.
            init_tracing("info,starphleet::access=off");
            let layout = Layout::new(&state_dir);
            // A proxy the ship starts again serves the listening sockets the ship held.
            let inherited = starphleet_proxy::inherit_listeners(
                std::env::var(starphleet_proxy::LISTEN_FDS_ENV)
                    .ok()
                    .as_deref(),
            )?;
            let opts = starphleet_proxy::ProxyOptions {
                listen_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                access_log_dir: Some(layout.access_logs()),
                inherited,
                ..starphleet_proxy::ProxyOptions::new(layout.proxy_socket())
            };
            runtime()?.block_on(starphleet_proxy::run(opts))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_headquarters(layout: &Layout) -> Option<String> {
    let text = std::fs::read_to_string(layout.headquarters_file()).ok()?;
    let url = text.trim().to_string();
    (!url.is_empty()).then_some(url)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ship".into())
}

fn check(dir: &Path, admin_port: u16) -> ExitCode {
    if !dir.is_dir() {
        eprintln!(
            "{}: error: not a directory; pass the path of an HQ checkout",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let opts = starphleet_orders::HqOptions {
        reserved_ports: vec![(
            admin_port,
            "the ship's admin endpoint (`starphleet ship --admin`)".into(),
        )],
    };
    let hq = starphleet_orders::load_headquarters_with(dir, &opts);
    // Diagnostics on stderr, errors first; warnings never fail the check.
    let diagnostics = [hq.render_errors(), hq.render_warnings()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if !diagnostics.is_empty() {
        eprintln!("{diagnostics}");
    }
    let summary = check_summary(&hq, dir);
    if hq.errors.is_empty() {
        println!("{summary}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{summary}");
        ExitCode::FAILURE
    }
}

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// The last line of `check`: `hq: 3 orders OK, 1 warning` or `2 errors, 1 warning in hq`.
fn check_summary(hq: &starphleet_orders::Headquarters, dir: &Path) -> String {
    let warnings = match hq.warnings.len() {
        0 => String::new(),
        n => format!(", {}", count(n, "warning")),
    };
    if hq.errors.is_empty() {
        format!(
            "{}: {} OK{warnings}",
            dir.display(),
            count(hq.orders.len(), "order")
        )
    } else {
        format!(
            "{}{warnings} in {}",
            count(hq.errors.len(), "error"),
            dir.display()
        )
    }
}

/// Prints one record (a JSON line from the ship) for a human, or as is.
fn print_record(line: &str, json: bool) {
    if json {
        println!("{line}");
        return;
    }
    match serde_json::from_str::<starphleet_telemetry::Record>(line) {
        Ok(r) => println!("{r}"),
        Err(_) => match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.get("missed").is_some() => {
                eprintln!(
                    "starphleet: {} records were skipped because this reader fell behind",
                    v["missed"]
                )
            }
            Ok(v) if v.get("error").is_some() => {
                eprintln!("starphleet: error: {}", v["error"].as_str().unwrap_or(""))
            }
            _ => println!("{line}"),
        },
    }
}

/// Prints the records `params` ask for: from the running ship, else straight from its store.
fn logs(
    state_dir: &Path,
    params: &[(&str, Option<&str>)],
    query_parsed: &starphleet_telemetry::Query,
    follow: bool,
    json: bool,
) -> Result<ExitCode> {
    let layout = Layout::new(state_dir);
    let path = format!("/logs?{}", query_string(params, follow));
    let rt = runtime()?;
    match rt.block_on(starphleet_ship::admin::stream_lines(
        &layout.admin_socket(),
        &path,
        |l| print_record(l, json),
    )) {
        Ok(200) => return Ok(ExitCode::SUCCESS),
        Ok(_) => return Ok(ExitCode::FAILURE),
        Err(_) if follow => bail!("{}; `logs -f` needs a running ship", not_running(state_dir)),
        Err(_) => {}
    }
    // The ship is down: read its store directly.
    let store = starphleet_telemetry::LogStore::open(&layout.log_store(), Default::default())
        .with_context(|| format!("reading logs in {}", layout.log_store().display()))?;
    for r in store.query(query_parsed)? {
        print_record(&serde_json::to_string(&r)?, json);
    }
    Ok(ExitCode::SUCCESS)
}

/// The query string of `params`, with `follow=1` when following.
fn query_string(params: &[(&str, Option<&str>)], follow: bool) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if let Some(v) = v {
            query.append_pair(k, v);
        }
    }
    if follow {
        query.append_pair("follow", "1");
    }
    query.finish()
}

/// Prints the error a ship answered with.
fn print_error(body: &str) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    eprintln!("starphleet: error: {}", v["error"].as_str().unwrap_or(body));
}

/// `status --phleet`: the ship asks every ship of HQ's `ships` and answers the view.
fn phleet_status(state_dir: &Path, json: bool) -> Result<ExitCode> {
    let (code, body) = admin_request(state_dir, hyper::Method::GET, "/phleet/status")?;
    if code != 200 {
        print_error(&body);
        return Ok(ExitCode::FAILURE);
    }
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let view: starphleet_phleet::PhleetView =
        serde_json::from_str(&body).context("the ship answered an unexpected phleet status")?;
    print!("{}", starphleet_phleet::render_text(&view));
    Ok(ExitCode::SUCCESS)
}

/// `logs --phleet`: every ship's records merged by time, through this ship.
fn phleet_logs(
    state_dir: &Path,
    params: &[(&str, Option<&str>)],
    follow: bool,
    json: bool,
) -> Result<ExitCode> {
    let socket = Layout::new(state_dir).admin_socket();
    let path = format!("/phleet/logs?{}", query_string(params, follow));
    let code = runtime()?
        .block_on(starphleet_ship::admin::stream_lines(&socket, &path, |l| {
            if json {
                println!("{l}");
                return;
            }
            match serde_json::from_str::<starphleet_phleet::MergedLine>(l) {
                Ok(line) => println!("{line}"),
                Err(_) => print_record(l, false),
            }
        }))
        .with_context(|| not_running(state_dir))?;
    Ok(if code == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `offline` / `online`.
fn set_offline(state_dir: &Path, offline: bool) -> Result<ExitCode> {
    let path = if offline { "/offline" } else { "/online" };
    let (code, body) = admin_request(state_dir, hyper::Method::POST, path)?;
    if code != 200 {
        print_error(&body);
        return Ok(ExitCode::FAILURE);
    }
    if offline {
        println!("this ship is offline: /starphleet/health answers 503 on every public port while requests are still served; `starphleet online` returns it");
    } else {
        println!("this ship is online: /starphleet/health answers 200 again");
    }
    Ok(ExitCode::SUCCESS)
}

/// Deploys per service in the human `status` (all of them are in `--json`).
const DEPLOYS_SHOWN: usize = 3;

fn not_running(state_dir: &Path) -> String {
    format!(
        "the ship in {} is not running (start it with `starphleet ship --state-dir {}`)",
        state_dir.display(),
        state_dir.display()
    )
}

fn status(state_dir: &Path, json: bool) -> Result<ExitCode> {
    let layout = Layout::new(state_dir);
    let body = runtime()?
        .block_on(starphleet_ship::admin::get(
            &layout.admin_socket(),
            "/status",
        ))
        .with_context(|| not_running(state_dir))?;
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let st: starphleet_ship::admin::Status =
        serde_json::from_str(&body).context("the ship answered an unexpected status")?;
    println!(
        "ship {} ({}) following {} at {}",
        st.ship,
        st.ship_id,
        st.headquarters,
        st.headquarters_commit
            .as_deref()
            .map(|c| &c[..12.min(c.len())])
            .unwrap_or("-")
    );
    if let Some(p) = &st.phleet {
        println!("phleet: {p}");
    }
    if st.offline {
        println!("OFFLINE: /starphleet/health answers 503 (`starphleet online` returns it)");
    }
    if let Some(e) = &st.headquarters_error {
        println!("headquarters problem: {e}");
    }
    if let Some(b) = &st.build_cache {
        println!(
            "build cache: {} layers, {} MiB (cap {} MiB)",
            b.layers,
            b.bytes >> 20,
            b.cap_bytes >> 20
        );
    }
    if let Some(l) = &st.logs {
        if l.dropped_records > 0 {
            println!(
                "logs: {} records dropped because the disk was full{}",
                l.dropped_records,
                if l.disk_full { " (still full)" } else { "" }
            );
        }
    }
    for c in &st.certs {
        print_cert(c);
    }
    println!();
    println!(
        "{:<20} {:<13} {:<13} {:<13} {:<10} PUBLISH",
        "SERVICE", "STATE", "VERSION", "COMMIT", "CONTAINERS"
    );
    for s in &st.services {
        let running = s.containers.iter().filter(|c| c.running).count();
        let publish: Vec<String> = s
            .publish
            .iter()
            .map(|p| format!(":{}{} → {}", p.public, p.url, p.private))
            .collect();
        println!(
            "{:<20} {:<13} {:<13} {:<13} {:<10} {}",
            s.name,
            s.state,
            s.version.as_deref().unwrap_or("-"),
            s.app_commit
                .as_deref()
                .map(|c| &c[..12.min(c.len())])
                .unwrap_or("-"),
            format!("{running}/{}", s.containers.len()),
            publish.join(", ")
        );
        if s.restarts > 0 {
            println!("{:<20} restarts: {}", "", s.restarts);
        }
        for c in &s.containers {
            println!(
                "{:<20} container {} {} cpu {:.2}s mem {} MiB net rx {} KiB tx {} KiB",
                "",
                c.id,
                c.ip,
                c.cpu_seconds.unwrap_or(0.0),
                c.memory_bytes.unwrap_or(0) >> 20,
                c.net_rx_bytes.unwrap_or(0) >> 10,
                c.net_tx_bytes.unwrap_or(0) >> 10,
            );
        }
        for r in &s.routes {
            let ms = |v: Option<f64>| v.map(|v| format!("{v}ms")).unwrap_or_else(|| "-".into());
            let [c1, c2, c3, c4, c5] = r.requests_by_class;
            println!(
                "{:<20} route :{}{} {} requests (1xx {c1} 2xx {c2} 3xx {c3} 4xx {c4} 5xx {c5}), {} in flight, p50 {} p99 {}",
                "",
                r.port,
                r.prefix,
                r.requests,
                r.in_flight,
                ms(r.latency_ms_p50),
                ms(r.latency_ms_p99)
            );
        }
        for d in s.deploys.iter().rev().take(DEPLOYS_SHOWN) {
            let steps: Vec<String> = d
                .steps
                .iter()
                .map(|(n, ms)| format!("{n} {ms}ms"))
                .collect();
            println!(
                "{:<20} deploy {} of {}: {} ({})",
                "",
                d.key,
                &d.app_commit[..12.min(d.app_commit.len())],
                d.outcome.lines().next().unwrap_or(""),
                steps.join(", ")
            );
        }
    }
    let service_errors: Vec<_> = st
        .services
        .iter()
        .filter_map(|s| s.error.as_ref().map(|e| (&s.name, e)))
        .collect();
    if !service_errors.is_empty() || !st.errors.is_empty() {
        println!("\nproblems:");
        for e in &st.errors {
            println!("{e}\n");
        }
        for (name, e) in service_errors {
            if !st.errors.iter().any(|x| e.contains(x.as_str())) {
                println!("{name}: {e}\n");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per TLS host in `status`: where its certificate comes from, until when, the next
/// renewal; then what is wrong, indented.
fn print_cert(c: &starphleet_certs::CertStatus) {
    let date = |t: Option<u64>| {
        t.map(|t| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        })
        .unwrap_or_else(|| "-".into())
    };
    match c.source {
        Some(source) => println!(
            "certificate {}: {}, expires {}, renews {}",
            c.host,
            source.as_str(),
            date(c.not_after),
            date(c.next_renewal)
        ),
        None => println!("certificate {}: none", c.host),
    }
    for line in c.error.iter().chain(&c.problems) {
        println!("  {}", line.replace('\n', "\n  "));
    }
}

#[cfg(test)]
mod tests {
    use super::{check_summary, parse_duration};
    use std::time::Duration;

    #[test]
    fn check_summary_counts_errors_and_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        let echo = "autodeploy https://github.com/wballard/echo.git\n";
        write("a.orders", echo);
        write("b.orders", echo);
        write("c.orders", echo);
        let hq = starphleet_orders::load_headquarters(dir.path());
        let shown = dir.path().display();
        assert_eq!(
            check_summary(&hq, dir.path()),
            format!("{shown}: 3 orders OK")
        );
        write("certs/app.test.crt", "chain");
        write("certs/app.test.key", "key");
        let hq = starphleet_orders::load_headquarters(dir.path());
        assert_eq!(
            check_summary(&hq, dir.path()),
            format!("{shown}: 3 orders OK, 1 warning")
        );
        write("b.orders", "publsh\n");
        write("certs/other.test.key", "key");
        let hq = starphleet_orders::load_headquarters(dir.path());
        assert_eq!(
            check_summary(&hq, dir.path()),
            format!("3 errors, 2 warnings in {shown}")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("2 parsecs")
            .unwrap_err()
            .contains("use e.g. 500ms"));
        assert!(parse_duration("soon").is_err());
    }
}
