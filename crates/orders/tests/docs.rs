//! The examples in the user docs parse: every ```orders, ```starphleet, ```env and ```ships block.

use std::path::{Path, PathBuf};

fn blocks(lang: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut out = Vec::new();
    for file in files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == format!("```{lang}") {
                let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
                out.push((file.clone(), body.join("\n") + "\n"));
            }
        }
    }
    out
}

fn render(d: Vec<starphleet_orders::Diagnostic>) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn orders_examples_parse() {
    let found = blocks("orders");
    assert!(found.len() >= 2, "no orders examples found");
    for (file, text) in found {
        if let Err(d) =
            starphleet_orders::parse_order("example", Path::new("example.orders"), &text)
        {
            panic!("{}: example does not parse:\n{}", file.display(), render(d));
        }
    }
}

#[test]
fn starphleet_examples_parse() {
    let found = blocks("starphleet");
    assert!(found.len() >= 2, "no Starphleet examples found");
    for (file, text) in found {
        if let Err(d) = starphleet_orders::parse_app(Path::new("Starphleet"), &text) {
            panic!("{}: example does not parse:\n{}", file.display(), render(d));
        }
    }
}

#[test]
fn env_examples_parse() {
    for (file, text) in blocks("env") {
        if let Err(d) = starphleet_orders::parse_env_file(Path::new(".starphleet"), &text) {
            panic!("{}: example does not parse:\n{}", file.display(), render(d));
        }
    }
}

#[test]
fn ships_examples_parse() {
    let found = blocks("ships");
    assert!(!found.is_empty(), "no ships examples found");
    for (file, text) in found {
        let (ships, diagnostics) = starphleet_orders::parse_ships(Path::new("ships"), &text);
        if !diagnostics.is_empty() {
            panic!(
                "{}: example does not parse:\n{}",
                file.display(),
                render(diagnostics)
            );
        }
        assert!(
            !ships.is_empty(),
            "{}: example lists no ship",
            file.display()
        );
    }
}
