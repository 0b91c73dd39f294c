//! Programs a running proxy with one route, as the control plane would: for benchmarks and
//! manual testing. The table takes the generation in force, so it replaces whatever is there.
//! With `--tls`, the same route is also served over TLS on another port, with one certificate.
//!
//! ```text
//! set_routes SOCKET PORT PREFIX UPSTREAM_ADDR [SERVICE] [--tls PORT --cert PEM --key PEM --host NAME] [--max-body BYTES]
//! set_routes /tmp/sp/proxy.sock 8080 /echo 127.0.0.1:9000 echo
//! set_routes /tmp/sp/proxy.sock 8080 /echo 127.0.0.1:9000 echo --tls 8443 --cert c.pem --key k.pem --host bench.test
//! ```

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use starphleet_proxy::{CertFiles, ProxyClient, Route, RouteTable, Upstream};

const USAGE: &str = "usage: set_routes SOCKET PORT PREFIX UPSTREAM_ADDR [SERVICE] \
                     [--tls PORT --cert PEM --key PEM --host NAME] [--max-body BYTES]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match program(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("set_routes: {e:#}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn program(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let mut positional = Vec::new();
    let mut options = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.strip_prefix("--") {
            Some(name) => {
                let value = it.next().ok_or(format!("--{name} needs a value"))?;
                options.insert(name.to_string(), value.clone());
            }
            None => positional.push(arg.clone()),
        }
    }
    if !(4..=5).contains(&positional.len()) {
        return Err("wrong number of arguments".into());
    }
    let port: u16 = positional[1].parse()?;
    let service = positional.get(4).cloned().unwrap_or_else(|| "echo".into());
    let route = Route {
        prefix: positional[2].clone(),
        service: service.clone(),
        upstreams: vec![Upstream {
            addr: positional[3].parse()?,
            version: "v1".into(),
            container: format!("{service}-1"),
        }],
        max_body: options.get("max-body").map(|n| n.parse()).transpose()?,
        ..Route::default()
    };
    let mut table = RouteTable {
        ship: "bench".into(),
        ports: [(port, vec![route.clone()])].into(),
        ..RouteTable::default()
    };
    if let Some(tls) = options.get("tls") {
        let tls: u16 = tls.parse()?;
        let need = |name: &str| options.get(name).ok_or(format!("--tls needs --{name}"));
        table.ports.insert(tls, vec![route]);
        table.tls_ports = BTreeSet::from([tls]);
        table.certs = vec![CertFiles {
            hosts: vec![need("host")?.clone()],
            cert_path: need("cert")?.into(),
            key_path: need("key")?.into(),
        }];
    }
    let client = ProxyClient::new(&positional[0]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            table.generation = client.ping(Duration::from_secs(5)).await?.generation;
            client.set_routes(&table).await?;
            let status = client.status().await?;
            if let Some((host, error)) = status.cert_errors.into_iter().next() {
                return Err(format!("certificate for {host}: {error}").into());
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
    Ok(())
}
