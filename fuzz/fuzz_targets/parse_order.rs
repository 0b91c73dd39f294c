//! Every parser must turn any bytes into a value or diagnostics, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use starphleet_orders::{
    parse_app, parse_duration, parse_env_file, parse_healthcheck_file, parse_order,
    parse_procfile, parse_ships, parse_size, Diagnostic,
};

/// Rendering is part of the contract: a diagnostic must print for any input.
fn render(result: Result<impl Sized, Vec<Diagnostic>>) {
    if let Err(diagnostics) = result {
        for d in diagnostics {
            assert!(d.line >= 1 && d.column >= 1 && d.width >= 1);
            let _ = d.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Callers pass lossily converted text, so that is what we fuzz.
    let text = String::from_utf8_lossy(data);
    render(parse_order("echo", Path::new("echo.orders"), &text));
    render(parse_order("team/api", Path::new("team/api.orders"), &text));
    render(parse_app(Path::new("Starphleet"), &text));
    render(parse_env_file(Path::new(".starphleet"), &text));
    let (ships, diagnostics) = parse_ships(Path::new("ships"), &text);
    assert!(ships.iter().all(|s| s.url.starts_with("http")));
    render(Err::<(), _>(diagnostics));
    let _ = parse_procfile(&text);
    if let Some(path) = parse_healthcheck_file(&text) {
        assert!(path.starts_with('/'));
    }
    let _ = parse_size(&text);
    let _ = parse_duration(&text);
});
