//! Programs a running proxy with one route, as the control plane would: for benchmarks and
//! manual testing. The table takes the generation in force, so it replaces whatever is there.
//!
//! ```text
//! set_routes SOCKET PORT PREFIX UPSTREAM_ADDR [SERVICE]
//! set_routes /tmp/sp/proxy.sock 8080 /echo 127.0.0.1:9000 echo
//! ```

use std::process::ExitCode;
use std::time::Duration;

use starphleet_proxy::{ProxyClient, Route, RouteTable, Upstream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(4..=5).contains(&args.len()) {
        eprintln!("usage: set_routes SOCKET PORT PREFIX UPSTREAM_ADDR [SERVICE]");
        return ExitCode::from(2);
    }
    match program(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("set_routes: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn program(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = args[1].parse()?;
    let service = args.get(4).cloned().unwrap_or_else(|| "echo".into());
    let mut table = RouteTable {
        ship: "bench".into(),
        ports: [(
            port,
            vec![Route {
                prefix: args[2].clone(),
                service: service.clone(),
                upstreams: vec![Upstream {
                    addr: args[3].parse()?,
                    version: "v1".into(),
                    container: format!("{service}-1"),
                }],
                ..Route::default()
            }],
        )]
        .into(),
        ..RouteTable::default()
    };
    let client = ProxyClient::new(&args[0]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            table.generation = client.ping(Duration::from_secs(5)).await?.generation;
            client.set_routes(&table).await
        })?;
    Ok(())
}
